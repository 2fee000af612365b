"""The NOLOGIN role pubctl_feed_reader: a viewer's role that is a member reads the feed,
and keeps reading across a reinstall (the published state dropped and created again),
because every migrate grants the role its rights again."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from support.cli import run_subprocess
from support.db import Database
from support.roles import roles


def pubctl(db: Database, *args: str) -> Any:
    return run_subprocess("--database-url", db.url, *args)


def test_a_member_of_pubctl_feed_reader_reads_across_a_reinstall(pub_db: Database) -> None:
    with roles(pub_db) as made:
        viewer = made.create("r_viewer")
        made.admin.execute(f"GRANT pubctl_feed_reader TO {viewer}")
        made.admin.execute("INSERT INTO study_topic (id, name) VALUES (1, 'one')")
        assert pubctl(pub_db, "apply").code == 0
        with made.connect(viewer) as conn:
            assert conn.execute("SELECT count(*) FROM pub.feed(0)").fetchone()[0] == 1
            old_id = conn.execute("SELECT pub.feed_id()").fetchone()[0]
        down = pubctl(pub_db, "migrate", "--revision", "base", "--drop-published-state")
        assert down.code == 0, down.err
        up = pubctl(pub_db, "migrate")
        assert up.code == 0, up.err
        assert "pubctl_feed_reader holds their rights" in up.out
        assert pubctl(pub_db, "backfill", "all").code == 0
        assert pubctl(pub_db, "apply").code == 0
        with made.connect(viewer) as conn:
            assert conn.execute("SELECT count(*) FROM pub.feed(0)").fetchone()[0] == 1
            assert conn.execute("SELECT pub.feed_id()").fetchone()[0] != old_id
            conn.execute("SELECT * FROM pub.health()").fetchone()
            # Nothing but the reader's rights.
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM pub.content")


def test_the_reader_role_holds_exactly_the_readers_rights(pub_db: Database) -> None:
    with pub_db.connect() as conn:
        rows = conn.execute(
            "SELECT object, privilege FROM pub.documented_privileges() d"
            " WHERE d.grantee = '*' ORDER BY 1"
        ).fetchall()
        held = [
            (obj, priv)
            for obj, priv in rows
            if conn.execute(
                "SELECT CASE WHEN %s = 'schema pub'"
                " THEN has_schema_privilege('pubctl_feed_reader', 'pub', %s)"
                " ELSE has_function_privilege('pubctl_feed_reader', %s, %s) END",
                (obj, priv, obj, priv),
            ).fetchone()[0]
        ]
        assert held == rows
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.role_table_grants"
            " WHERE grantee = 'pubctl_feed_reader'"
        ).fetchone()[0]
        assert tables == 0
