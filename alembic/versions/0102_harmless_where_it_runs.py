"""pubctl harmless where it runs: locks only pubctl's roles can take, pubctl.notify for
two-phase commit, documented privileges enforced and reported, and the DDL guard on
projected columns (with pub.reattach_capture_triggers for the rename procedure).

Its SQL is frozen beside it: NNNN_name.up.sql and NNNN_name.down.sql (write both; see
README.md, "Writing a migration").

Revision ID: 0102
Revises: 0101
"""

from pubctl.migrate import run_frozen

revision = "0102"
down_revision = "0101"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_frozen(__file__, "up")


def downgrade() -> None:
    run_frozen(__file__, "down")
