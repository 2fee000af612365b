"""Schema pub and the publishing switch.

Revision ID: 0001
Revises:
"""

from alembic import context, op
from pubctl.migrations.frozen import run_frozen

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_frozen(__file__, "up")
    # Which schema holds the application's tables is chosen once, at install.
    app_schema = context.config.attributes.get("app_schema") or "public"
    op.get_bind().connection.driver_connection.execute(
        "UPDATE pub.settings SET app_schema = %s", (app_schema,)
    )


def downgrade() -> None:
    run_frozen(__file__, "down")
