"""Capture skips a write while publishing is off only if the switch is still off once
its transaction has marked itself (pub.unpublished_write_allowed).

Its SQL is frozen beside it: NNNN_name.up.sql and NNNN_name.down.sql (write both; see
README.md, "Writing a migration").

Revision ID: 0101
Revises: 0100
"""

from pubctl.migrate import run_frozen

revision = "0101"
down_revision = "0100"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_frozen(__file__, "up")


def downgrade() -> None:
    run_frozen(__file__, "down")
