"""${message}

Its SQL is frozen beside it: NNNN_name.up.sql and NNNN_name.down.sql (`make revision`
writes what the definition in pubctl/sources.py changed; add what else this revision
changes: README.md, "Writing a migration").

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
"""

from pubctl.migrate import run_frozen

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_frozen(__file__, "up")


def downgrade() -> None:
    run_frozen(__file__, "down")
