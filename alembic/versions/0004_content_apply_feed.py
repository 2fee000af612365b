"""The published state (pub.content), the applier and the feed.

Revision ID: 0004
Revises: 0003
"""

from pubctl.migrations.frozen import run_frozen

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_frozen(__file__, "up")


def downgrade() -> None:
    run_frozen(__file__, "down")
