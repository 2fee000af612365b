"""Baseline of pubctl 0.1.0: the whole schema in one revision.

Later revisions are deltas on top of it (CREATE OR REPLACE of what changed, frozen
like this one); tests/migration/test_schema_matches.py holds every head equal to
sql/schema/*.sql.

Revision ID: 0100
Revises:
"""

from pubctl.migrate import run_frozen

revision = "0100"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The application's schema comes from the setting pubctl.app_schema, set by
    # pubctl.migrate for the run.
    run_frozen(__file__, "up")


def downgrade() -> None:
    run_frozen(__file__, "down")
