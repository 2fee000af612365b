"""Every way to write a source table without firing capture is refused at migrate or
reported by `pubctl status` and `pubctl verify`, with real objects: an inheritance
parent, a partitioned table the source is attached to, a logical replication
subscription, a role granted SET on session_replication_role, a function that sets it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from pubctl.queries import read_sql_file

from support.cli import run_subprocess
from support.db import Database
from support.roles import roles


def pubctl(db: Database, *args: str) -> Any:
    return run_subprocess("--database-url", db.url, *args)


def problems(db: Database) -> list[str]:
    result = pubctl(db, "status", "--json")
    report = json.loads(result.out)
    assert (result.code == 1) is (not report["capture_ok"])
    return [f"{p['subject']}: {p['problem']}" for p in report["capture_problems"]]


def assert_reported(db: Database, *fragments: str) -> None:
    found = problems(db)
    for fragment in fragments:
        assert any(fragment in p for p in found), (fragment, found)
    verify = pubctl(db, "verify", "--json")
    assert verify.code == 1, verify.out


PARENT = """
CREATE TABLE topic_parent (id bigint, name text, exam_round_size integer,
                           deleted_at timestamptz);
ALTER TABLE study_topic INHERIT topic_parent;
"""

PARTITIONED = """
CREATE TABLE topic_root (LIKE study_topic) PARTITION BY RANGE (id);
ALTER TABLE topic_root ATTACH PARTITION study_topic FOR VALUES FROM (MINVALUE) TO (MAXVALUE);
"""


@pytest.mark.parametrize(
    ("ddl", "reported"),
    [
        (PARENT, "public.study_topic is an inheritance child of public.topic_parent"),
        (PARTITIONED, "public.study_topic is a partition of public.topic_root"),
    ],
)
def test_a_table_above_a_source_is_reported_and_refused_at_migrate(
    pub_db: Database, app_db: Database, ddl: str, reported: str
) -> None:
    with pub_db.connect() as conn:
        conn.execute(ddl)
    assert_reported(pub_db, reported)

    with app_db.connect() as conn:
        conn.execute(ddl)
    result = pubctl(app_db, "migrate")
    assert result.code != 0
    assert reported in result.err
    assert "writes through it would bypass capture" in result.err


def test_a_write_through_the_parent_is_what_it_is_about(pub_db: Database) -> None:
    """The reproduction: a DELETE through the parent removes the row and no capture
    trigger of the child fires."""
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (3, 'three')")
        conn.execute("DELETE FROM pub.outbox")
        conn.execute(PARENT)
        conn.execute("DELETE FROM topic_parent WHERE id = 3")
        assert conn.execute("SELECT count(*) FROM pub.outbox").fetchone()[0] == 0
    assert_reported(pub_db, "inheritance child of public.topic_parent")


def test_a_role_that_may_set_session_replication_role_is_reported(pub_db: Database) -> None:
    with roles(pub_db) as made:
        owner = made.create("b_app_owner")
        made.admin.execute(f"GRANT SET ON PARAMETER session_replication_role TO {owner}")
        try:
            assert_reported(pub_db, f"role {owner}: may SET session_replication_role")
        finally:
            made.admin.execute(f"REVOKE SET ON PARAMETER session_replication_role FROM {owner}")
    assert problems(pub_db) == []


def test_a_function_that_sets_session_replication_role_is_reported(pub_db: Database) -> None:
    with pub_db.connect() as conn:
        conn.execute(
            "CREATE FUNCTION public.import_quietly() RETURNS void LANGUAGE sql"
            " SET session_replication_role = replica"
            " AS $$ INSERT INTO study_topic (id, name) VALUES (9, 'quiet') $$"
        )
        conn.execute("SELECT public.import_quietly()")
        assert conn.execute("SELECT count(*) FROM pub.outbox").fetchone()[0] == 0
    assert_reported(pub_db, "function public.import_quietly(): sets session_replication_role")


@pytest.fixture
def publisher(pg_server: Any, pub_db: Database) -> Iterator[Database]:
    with pub_db.connect() as conn:
        if conn.execute("SHOW wal_level").fetchone()[0] != "logical":
            pytest.skip("the server's wal_level is not logical")
    name = f"pubctl_publisher_{os.getpid()}"
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    db = Database(pg_server.url(name), pg_server)
    try:
        yield db
    finally:
        with psycopg.connect(pg_server.url("postgres"), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = %s",
                (name,),
            )
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_a_subscription_writing_a_source_table_is_reported(
    pub_db: Database, publisher: Database
) -> None:
    slot = f"pubctl_test_{os.getpid()}"
    with publisher.connect() as conn:
        conn.execute(read_sql_file("sample_app_schema.sql").encode())
        conn.execute("CREATE PUBLICATION topics FOR TABLE study_topic")
        # Created beforehand: in the same cluster, CREATE SUBSCRIPTION would wait for
        # its own transaction to create the slot.
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    source = conninfo.make_conninfo(publisher.url)
    with pub_db.connect() as conn:
        conn.execute(
            f"CREATE SUBSCRIPTION topics_in CONNECTION '{source}' PUBLICATION topics"
            f" WITH (create_slot = false, slot_name = '{slot}', copy_data = false)"
        )
        try:
            assert_reported(
                pub_db,
                "public.study_topic: subscription topics_in writes it: the rows it applies "
                "fire no capture trigger",
            )
        finally:
            conn.execute("ALTER SUBSCRIPTION topics_in DISABLE")
            conn.execute("ALTER SUBSCRIPTION topics_in SET (slot_name = NONE)")
            conn.execute("DROP SUBSCRIPTION topics_in")
    assert problems(pub_db) == []
