"""The projection functions and the payload hash.

Revision ID: 0002
Revises: 0001
"""

from pubctl.migrations.frozen import run_frozen

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_frozen(__file__, "up")


def downgrade() -> None:
    run_frozen(__file__, "down")
