"""Backfill pages and their checkpoints.

Revision ID: 0005
Revises: 0004
"""

from pubctl.migrations.frozen import run_frozen

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_frozen(__file__, "up")


def downgrade() -> None:
    run_frozen(__file__, "down")
