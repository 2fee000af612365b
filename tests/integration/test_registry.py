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


def test_the_shape_checks_take_every_projected_column(pub_db: Database) -> None:
    """Capture checks a column's type through pub.require_<kind>_shape before reading it:
    a projected column missing there would be read unchecked."""
    with pub_db.connect() as conn:
        for source in SOURCES:
            (names,) = conn.execute(
                "SELECT proargnames::text[] FROM pg_proc WHERE oid = %s::regprocedure::oid",
                (
                    f"pub.require_{source.main_kind}_shape("
                    + ", ".join("regtype" for _ in source.columns)
                    + ")",
                ),
            ).fetchone()
            assert names == [c.name for c in source.columns], source.table
