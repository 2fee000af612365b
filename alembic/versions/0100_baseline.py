"""Baseline of pubctl 0.1.0: the whole schema in one revision.

Later revisions are deltas on top of it (CREATE OR REPLACE of what changed, frozen
like this one); tests/migration/test_schema_matches.py holds every head equal to
sql/schema/*.sql.

Revision ID: 0100
Revises:
"""

from alembic import context, op

from pubctl.migrate import run_frozen

revision = "0100"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Which schema holds the application's tables is chosen once, at install.
    app_schema = context.config.attributes.get("app_schema") or "public"
    op.get_bind().connection.driver_connection.execute(
        "SELECT pg_catalog.set_config('pubctl.app_schema', %s, true)", (app_schema,)
    )
    run_frozen(__file__, "up")


def downgrade() -> None:
    run_frozen(__file__, "down")
