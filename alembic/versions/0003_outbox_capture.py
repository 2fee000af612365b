"""The outbox and the capture triggers on the application's tables.

Revision ID: 0003
Revises: 0002
"""

from pubctl.migrations.frozen import run_frozen

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_frozen(__file__, "up")


def downgrade() -> None:
    run_frozen(__file__, "down")
