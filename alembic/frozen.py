"""Run a migration's own frozen SQL.

Each revision ``NNNN_name.py`` has ``NNNN_name.up.sql`` and ``NNNN_name.down.sql``
beside it: a copy of the SQL as it was when the revision was released. Later edits of
``sql/`` never change what an old revision does.
"""

from __future__ import annotations

from pathlib import Path

from alembic import op


def frozen_sql(migration_file: str, direction: str) -> str:
    """The text of the frozen SQL file for ``direction`` ("up" or "down")."""
    path = Path(migration_file)
    return path.with_name(f"{path.stem}.{direction}.sql").read_text(encoding="utf-8")


def run_frozen(migration_file: str, direction: str) -> None:
    """Execute the frozen SQL of a revision on the migration connection.

    ``%(app_schema)s``-style names are not used: the SQL reads the application schema
    from ``pub.settings`` itself, so the same text works for any configured schema.
    """
    driver = op.get_bind().connection.driver_connection
    driver.execute(frozen_sql(migration_file, direction))
