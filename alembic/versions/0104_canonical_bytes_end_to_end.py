"""Canonical bytes from the trigger to the viewer: the payload columns become json holding
the RFC 8785 text the trigger built, pub.feed returns it as it is, and every change a
reader can see (a schema_version change too) moves the item's rev.

Its SQL is frozen beside it: NNNN_name.up.sql and NNNN_name.down.sql (write both; see
README.md, "Writing a migration").

Revision ID: 0104
Revises: 0103
"""

from pubctl.migrate import run_frozen

revision = "0104"
down_revision = "0103"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_frozen(__file__, "up")


def downgrade() -> None:
    run_frozen(__file__, "down")
