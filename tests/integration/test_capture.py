"""Capture: every write that changes a payload or its liveness reaches pub.outbox in the
writer's own transaction, and nothing else does."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from pubctl.projection import Item, items_of

from support.db import Database

Row = tuple[str, int, bool]


@pytest.fixture
def conn(pub_db: Database) -> Any:
    with pub_db.connect() as connection:
        yield connection


def outbox(conn: psycopg.Connection) -> list[Row]:
    return [
        (kind, source_id, deleted)
        for kind, source_id, deleted in conn.execute(
            "SELECT kind, source_id, deleted FROM pub.outbox ORDER BY id"
        )
    ]


def clear(conn: psycopg.Connection) -> None:
    conn.execute("DELETE FROM pub.outbox")


def add_topic(conn: psycopg.Connection, topic_id: int = 1, name: str = "Anatomy") -> None:
    conn.execute("INSERT INTO study_topic (id, name) VALUES (%s, %s)", (topic_id, name))


def add_question(
    conn: psycopg.Connection, qid: int = 10, status: str = "ready", **cols: Any
) -> None:
    values = {
        "id": qid,
        "topic_id": 1,
        "body": "Q?",
        "choices": '["a","b"]',
        "explanation": "because",
        "explanation_status": status,
        **cols,
    }
    names = ", ".join(values)
    marks = ", ".join(f"%({k})s" for k in values)
    conn.execute(f"INSERT INTO study_question ({names}) VALUES ({marks})", values)


def reference(conn: psycopg.Connection) -> dict[tuple[str, int], Item]:
    """The Python reference projection of the current source rows."""
    items: dict[tuple[str, int], Item] = {}
    with conn.cursor(row_factory=dict_row) as cur:
        for row in cur.execute("SELECT * FROM study_topic"):
            items.update({(i.kind, i.source_id): i for i in items_of("study_topic", row)})
        for row in cur.execute("SELECT * FROM study_question"):
            items.update({(i.kind, i.source_id): i for i in items_of("study_question", row)})
    return items


def test_inserts_publish_what_the_reference_says(conn: psycopg.Connection) -> None:
    add_topic(conn)
    add_question(conn, 10, "ready")
    add_question(conn, 11, "draft")
    assert outbox(conn) == [
        ("topic", 1, False),
        ("question", 10, False),
        ("explanation", 10, False),
        ("question", 11, False),
    ]
    ref = reference(conn)
    rows = conn.execute(
        "SELECT kind, source_id, payload, payload_hash, schema_version, deleted FROM pub.outbox"
    ).fetchall()
    for kind, source_id, payload, payload_hash, schema_version, deleted in rows:
        item = ref[(kind, source_id)]
        assert payload == item.published_payload
        assert payload_hash == item.payload_hash
        assert schema_version == 1 and deleted is False


def test_rollback_removes_outbox_rows(pub_db: Database) -> None:
    with pub_db.connect(autocommit=False) as writer:
        add_topic(writer)
        writer.rollback()
        with writer.transaction():
            add_topic(writer, 2, "kept")
            try:
                with writer.transaction():  # a savepoint
                    add_topic(writer, 3, "rolled back")
                    raise RuntimeError
            except RuntimeError:
                pass
        writer.commit()
        assert outbox(writer) == [("topic", 2, False)]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE study_question SET updated_at = now() + interval '1 day'",
        "UPDATE study_question SET body = body, choices = choices",
        "UPDATE study_question SET explanation_status = 'ready'",
        "UPDATE study_topic SET name = name, updated_at = now()",
        "UPDATE study_question SET created_at = now()",
    ],
)
def test_updates_that_change_no_payload_add_nothing(
    conn: psycopg.Connection, statement: str
) -> None:
    add_topic(conn)
    add_question(conn)
    clear(conn)
    conn.execute(statement)
    assert outbox(conn) == []


def test_update_of_a_projected_column(conn: psycopg.Connection) -> None:
    add_topic(conn)
    add_question(conn)
    clear(conn)
    conn.execute("UPDATE study_question SET body = 'new body'")
    assert outbox(conn) == [("question", 10, False)]
    clear(conn)
    conn.execute("UPDATE study_question SET explanation = 'new reason'")
    assert outbox(conn) == [("explanation", 10, False)]
    clear(conn)
    conn.execute("UPDATE study_topic SET exam_round_size = 20")
    assert outbox(conn) == [("topic", 1, False)]


def test_soft_delete_restore_and_changes_while_deleted(conn: psycopg.Connection) -> None:
    add_topic(conn)
    add_question(conn)
    clear(conn)
    conn.execute("UPDATE study_question SET deleted_at = now()")
    assert outbox(conn) == [("question", 10, True), ("explanation", 10, True)]
    payloads = conn.execute(
        "SELECT DISTINCT payload::text, payload_hash FROM pub.outbox"
    ).fetchall()
    assert payloads == [("{}", hashlib.sha256(b"{}").hexdigest())]
    clear(conn)
    conn.execute("UPDATE study_question SET body = 'edited while deleted'")
    conn.execute("UPDATE study_question SET deleted_at = now() + interval '1 hour'")
    conn.execute("DELETE FROM study_question")
    assert outbox(conn) == [], "a row that stays deleted adds nothing"


def test_restore_publishes_again(conn: psycopg.Connection) -> None:
    add_topic(conn)
    add_question(conn, deleted_at="2026-01-01")
    assert outbox(conn) == [("topic", 1, False)], "inserted deleted: nothing to tombstone"
    conn.execute("UPDATE study_question SET deleted_at = NULL")
    assert outbox(conn)[1:] == [("question", 10, False), ("explanation", 10, False)]


def test_topic_soft_delete_does_not_tombstone_questions(conn: psycopg.Connection) -> None:
    add_topic(conn)
    add_question(conn)
    clear(conn)
    conn.execute("UPDATE study_topic SET deleted_at = now()")
    assert outbox(conn) == [("topic", 1, True)]


def test_explanation_leaving_and_entering_ready(conn: psycopg.Connection) -> None:
    add_topic(conn)
    add_question(conn)
    clear(conn)
    conn.execute("UPDATE study_question SET explanation_status = 'review'")
    assert outbox(conn) == [("explanation", 10, True)]
    clear(conn)
    conn.execute("UPDATE study_question SET explanation = 'better'")
    assert outbox(conn) == [], "a non-ready explanation is not published"
    conn.execute("UPDATE study_question SET explanation_status = 'ready', explanation = NULL")
    rows = conn.execute("SELECT kind, payload, deleted FROM pub.outbox").fetchall()
    assert rows == [("explanation", {"question_id": 10, "explanation": None}, False)]


def test_hard_delete_tombstones_live_items(conn: psycopg.Connection) -> None:
    add_topic(conn)
    add_question(conn, 10, "ready")
    add_question(conn, 11, "draft")
    clear(conn)
    conn.execute("DELETE FROM study_question")
    assert sorted(outbox(conn)) == [
        ("explanation", 10, True),
        ("question", 10, True),
        ("question", 11, True),
    ]
    clear(conn)
    conn.execute("DELETE FROM study_topic")
    assert outbox(conn) == [("topic", 1, True)]


def test_primary_key_update_moves_the_item(conn: psycopg.Connection) -> None:
    add_topic(conn)
    add_question(conn)
    clear(conn)
    conn.execute("UPDATE study_question SET id = 99")
    assert outbox(conn) == [
        ("question", 10, True),
        ("explanation", 10, True),
        ("question", 99, False),
        ("explanation", 99, False),
    ]
    clear(conn)
    # ON UPDATE CASCADE in the sample schema republishes the questions' topic_id too.
    conn.execute("UPDATE study_topic SET id = 2")
    assert outbox(conn) == [("topic", 1, True), ("topic", 2, False), ("question", 99, False)]


def test_truncate_is_refused_while_publishing(conn: psycopg.Connection) -> None:
    add_topic(conn)
    for table in ("study_question", "study_topic"):
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"TRUNCATE {table} CASCADE")
        assert info.value.sqlstate == "PB002"
        assert "pubctl disable" in (info.value.diag.message_hint or "")
    assert conn.execute("SELECT count(*) FROM study_topic").fetchone() == (1,)
    conn.execute("UPDATE pub.settings SET publishing_enabled = false")
    conn.execute("TRUNCATE study_topic CASCADE")


def test_publishing_switch(conn: psycopg.Connection) -> None:
    conn.execute("UPDATE pub.settings SET publishing_enabled = false")
    add_topic(conn)
    add_question(conn)
    conn.execute("UPDATE study_question SET body = 'x'")
    conn.execute("DELETE FROM study_question")
    assert outbox(conn) == []
    conn.execute("UPDATE pub.settings SET publishing_enabled = true")
    add_question(conn, 12)
    assert outbox(conn) == [("question", 12, False), ("explanation", 12, False)]


def test_payload_rule_violation_refuses_the_write(conn: psycopg.Connection) -> None:
    add_topic(conn)
    with pytest.raises(psycopg.Error) as info:
        add_question(conn, 10, choices='["a", 2]')
    assert info.value.sqlstate == "PB001"
    assert "question 10" in str(info.value)
    assert "array of strings" in str(info.value)
    assert conn.execute("SELECT count(*) FROM study_question").fetchone() == (0,)
    assert outbox(conn) == [("topic", 1, False)]


def test_bad_row_from_before_install_can_be_fixed(conn: psycopg.Connection) -> None:
    conn.execute("UPDATE pub.settings SET publishing_enabled = false")
    add_topic(conn)
    add_question(conn, 10, choices='{"not": "a list"}')
    conn.execute("UPDATE pub.settings SET publishing_enabled = true")
    conn.execute("UPDATE study_question SET choices = '[\"fixed\"]'")
    assert outbox(conn) == [("question", 10, False)]


def test_one_megabyte_body_publishes(conn: psycopg.Connection) -> None:
    add_topic(conn)
    add_question(conn, body="ü" * 1_000_000)
    (payload,) = conn.execute("SELECT payload FROM pub.outbox WHERE kind = 'question'").fetchone()
    assert len(payload["body"]) == 1_000_000


def test_integer_ids_in_another_column_order(empty_db: Database) -> None:
    from pubctl.migrate import migrate

    with empty_db.connect() as conn:
        conn.execute(
            """
            CREATE TABLE study_topic (
                legacy text, deleted_at timestamp, exam_round_size smallint,
                name varchar(200) NOT NULL, id integer PRIMARY KEY);
            CREATE TABLE study_question (
                explanation_status varchar(20) NOT NULL, deleted_at timestamp, answer integer,
                explanation text, choices jsonb NOT NULL, body text NOT NULL, number integer,
                exam_round integer, exam_name text, topic_id integer NOT NULL,
                id integer PRIMARY KEY, extra jsonb);
            """
        )
        migrate(empty_db.url)
        conn.execute("INSERT INTO study_topic (id, name, exam_round_size) VALUES (1, 't', 5)")
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation_status, explanation)"
            " VALUES (7, 1, 'b', '[\"x\"]', 'ready', 'e')"
        )
        conn.execute("UPDATE study_question SET id = 8, extra = '{}'")
        conn.execute("UPDATE study_topic SET legacy = 'ignored'")
        conn.execute("UPDATE study_topic SET deleted_at = now()")
        assert outbox(conn) == [
            ("topic", 1, False),
            ("question", 7, False),
            ("explanation", 7, False),
            ("question", 7, True),
            ("explanation", 7, True),
            ("question", 8, False),
            ("explanation", 8, False),
            ("topic", 1, True),
        ]
        ref = reference(conn)
        (payload,) = conn.execute(
            "SELECT payload FROM pub.outbox WHERE kind = 'question' AND source_id = 8"
        ).fetchone()
        assert payload == ref[("question", 8)].payload


def test_application_role_needs_no_pub_privileges(pub_db: Database) -> None:
    with pub_db.connect() as admin:
        admin.execute("CREATE ROLE study_app LOGIN")
        admin.execute(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON study_topic, study_question TO study_app"
        )
    app_url = pub_db.url.replace("user=postgres", "user=study_app")
    with psycopg.connect(app_url, autocommit=True) as app:
        add_topic(app)
        app.execute("UPDATE study_topic SET name = 'renamed'")
        for attempt in (
            "INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)"
            " VALUES ('topic', 5, '{}', 'x', 1, true)",
            "SELECT pub.enqueue('{topic}', '{5}', '{NULL}')",
            "DELETE FROM pub.outbox",
            "UPDATE pub.settings SET publishing_enabled = false",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(attempt)
    with pub_db.connect() as admin:
        assert outbox(admin) == [("topic", 1, False), ("topic", 1, False)]
        (payload,) = admin.execute(
            "SELECT payload FROM pub.outbox ORDER BY id DESC LIMIT 1"
        ).fetchone()
        assert payload["name"] == "renamed"


def test_hostile_search_path_of_the_writer_is_ignored(conn: psycopg.Connection) -> None:
    conn.execute(
        """
        CREATE SCHEMA evil;
        CREATE FUNCTION evil.sha256(bytea) RETURNS bytea LANGUAGE sql AS $$ SELECT '\\x00'::bytea $$;
        CREATE FUNCTION evil.unnest(anyarray) RETURNS SETOF anyelement
            LANGUAGE sql AS $$ SELECT NULL $$;
        CREATE TABLE evil.outbox (LIKE pub.outbox);
        SET search_path = evil, public, pg_catalog;
        """
    )
    add_topic(conn)
    rows = conn.execute("SELECT payload_hash FROM pub.outbox").fetchall()
    expected = hashlib.sha256(
        json.dumps(
            {"exam_round_size": None, "name": "Anatomy", "topic_id": 1},
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
    ).hexdigest()
    assert rows == [(expected,)]
    assert conn.execute("SELECT count(*) FROM evil.outbox").fetchone() == (0,)


def test_one_notification_per_transaction(pub_db: Database) -> None:
    with pub_db.connect() as listener, pub_db.connect(autocommit=False) as writer:
        listener.execute("LISTEN pubctl_outbox")
        add_topic(writer, 1)
        add_topic(writer, 2)
        writer.execute("UPDATE study_topic SET name = name || '!'")
        writer.commit()
        writer.execute("UPDATE study_topic SET updated_at = now()")  # no change, no wake-up
        writer.commit()
        notes = list(listener.notifies(timeout=1.0))
        assert [n.channel for n in notes] == ["pubctl_outbox"]


def test_bulk_insert(conn: psycopg.Connection) -> None:
    add_topic(conn)
    conn.execute(
        """
        INSERT INTO study_question (topic_id, body, choices, explanation, explanation_status)
        SELECT 1, 'body ' || g, '["a","b","c"]', 'why ' || g,
               CASE WHEN g % 2 = 0 THEN 'ready' ELSE 'draft' END
        FROM generate_series(1, 20000) g
        """
    )
    assert conn.execute("SELECT count(*) FROM pub.outbox").fetchone() == (1 + 20000 + 10000,)


def test_repeated_updates_in_one_transaction_leave_one_row_per_item(pub_db: Database) -> None:
    with pub_db.connect(autocommit=False) as writer:
        add_topic(writer)
        add_question(writer)
        writer.commit()
        clear(writer)
        writer.commit()
        for n in range(50):
            writer.execute(
                "UPDATE study_question SET body = %s, explanation = %s", (f"b{n}", f"e{n}")
            )
        writer.commit()
        rows = writer.execute("SELECT kind, payload FROM pub.outbox ORDER BY id").fetchall()
        assert [(k, p.get("body", p.get("explanation"))) for k, p in rows] == [
            ("question", "b49"),
            ("explanation", "e49"),
        ]


def test_superseded_row_comes_back_when_a_savepoint_rolls_back(pub_db: Database) -> None:
    with pub_db.connect(autocommit=False) as writer:
        add_topic(writer)
        writer.commit()
        clear(writer)
        writer.execute("UPDATE study_topic SET name = 'kept'")
        try:
            with writer.transaction():
                writer.execute("UPDATE study_topic SET name = 'rolled back'")
                raise RuntimeError
        except RuntimeError:
            pass
        writer.execute("UPDATE study_topic SET exam_round_size = 3")
        writer.commit()
        rows = writer.execute("SELECT payload FROM pub.outbox ORDER BY id").fetchall()
        assert [p for (p,) in rows] == [{"topic_id": 1, "name": "kept", "exam_round_size": 3}]
