"""Verify, set-based by id range.

Revision ID: 0006
Revises: 0005
"""

from pubctl.migrations.frozen import run_frozen

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_frozen(__file__, "up")


def downgrade() -> None:
    run_frozen(__file__, "down")
