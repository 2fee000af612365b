"""verify reads every row and judges only what is published: both ends of bigint read by
verify and backfill, unpublished values never shipped to the Python reference, and the
items that break the payload rules named (pub.verify_rule_breaks).

Its SQL is frozen beside it: NNNN_name.up.sql and NNNN_name.down.sql (write both; see
README.md, "Writing a migration").

Revision ID: 0103
Revises: 0102
"""

from pubctl.migrate import run_frozen

revision = "0103"
down_revision = "0102"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_frozen(__file__, "up")


def downgrade() -> None:
    run_frozen(__file__, "down")
