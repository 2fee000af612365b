"""The schema the migrations build equals the schema ``sql/schema/*.sql`` describes."""

from __future__ import annotations

from pubctl import migrate
from pubctl.queries import query, read_sql_file, schema_files

from support.catalog import snapshot
from support.db import Database


def test_migrated_schema_equals_schema_sql(app_db: Database, pub_db: Database) -> None:
    with app_db.connect() as conn:
        for part in schema_files():
            with conn.transaction():
                conn.execute(read_sql_file(part).encode())
        # What every `pubctl migrate` does at its end (pubctl.migrate.finish).
        conn.execute(query("revoke_undocumented_grants"))
        conn.execute(query("grant_feed_reader"))
        from_schema_file = snapshot(conn)
    with pub_db.connect() as conn:
        from_migrations = snapshot(conn)
    for catalog, rows in from_migrations.items():
        assert rows == from_schema_file[catalog], f"{catalog} differs"
    assert migrate.head_revision() == migrate.revisions()[-1]
