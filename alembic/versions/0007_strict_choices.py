"""choices: reject nested arrays (a JSON path in lax mode unwrapped them).

Revision ID: 0007
Revises: 0006
"""

from pubctl.migrations.frozen import run_frozen

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_frozen(__file__, "up")


def downgrade() -> None:
    run_frozen(__file__, "down")
