"""Feed identity (pub.feed_id), pub.health, a notification per applied batch, and a
kind-filtered feed that reads index ranges.

Revision ID: 0008
Revises: 0007
"""

from pubctl.migrations.frozen import run_frozen

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_frozen(__file__, "up")


def downgrade() -> None:
    run_frozen(__file__, "down")
