"""Hardened capture: no code of the table owner's making runs with capture's rights,
bypasses are reported, the publishing switch waits for writers in flight, backfill
pages are bounded before they lock, verify reads only the projected columns.

Revision ID: 0009
Revises: 0008
"""

from pubctl.migrations.frozen import run_frozen

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_frozen(__file__, "up")


def downgrade() -> None:
    run_frozen(__file__, "down")
