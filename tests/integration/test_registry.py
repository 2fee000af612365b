"""The Python source registry and the SQL that captures, backfills and verifies hold
the same tables, kinds and projected columns."""

from __future__ import annotations

from pubctl.sources import SOURCES

from support.db import Database


def test_sql_knows_the_registry(pub_db: Database) -> None:
    with pub_db.connect() as conn:
        for source in SOURCES:
            columns = conn.execute(
                "SELECT column_name, allowed_types::text[] FROM pub.source_columns(%s)",
                (source.table,),
            ).fetchall()
            assert columns == [(c.name, list(c.types)) for c in source.columns], source.table
            kinds = conn.execute("SELECT pub.source_kinds(%s)", (source.table,)).fetchone()
            assert kinds == (list(source.kinds),), source.table
        (tables,) = conn.execute(
            "SELECT array_agg(DISTINCT table_name ORDER BY table_name) FROM pub.capture_triggers"
        ).fetchone()
        assert tables == sorted(s.table for s in SOURCES)
