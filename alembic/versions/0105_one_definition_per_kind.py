"""One definition per kind: the SQL that depends on the kinds is rendered from
pubctl/sources.py, and lists of kinds and sources elsewhere ask the rendered functions.

Its SQL is frozen beside it: NNNN_name.up.sql and NNNN_name.down.sql (write both; see
README.md, "Writing a migration").

Revision ID: 0105
Revises: 0104
"""

from pubctl.migrate import run_frozen

revision = "0105"
down_revision = "0104"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_frozen(__file__, "up")


def downgrade() -> None:
    run_frozen(__file__, "down")
