"""Bulk edits in one statement over thousands of rows: every changed item's outbox row
equals the Python reference, item by item, and nothing unchanged is written; repeated
and mixed writes of the same ids in one transaction publish the final state."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from pubctl.projection import Item, items_of

from support.cli import run_subprocess
from support.db import Database
from support.workload import reference_state

ROWS = 2000

Key = tuple[str, int]


@pytest.fixture
def conn(pub_db: Database) -> Any:
    with pub_db.connect() as connection:
        connection.execute(
            "INSERT INTO study_topic (id, name) SELECT g, 'topic ' || g FROM generate_series(1, 4) g"
        )
        connection.execute(
            "INSERT INTO study_question (id, topic_id, exam_name, exam_round, number, body,"
            " choices, answer, explanation, explanation_status)"
            " SELECT g, 1 + g %% 4, 'Exam ' || (g %% 3), g %% 5, g %% 40, 'Body ' || g,"
            " '[\"a\", \"b\"]', g %% 2, 'Because ' || g,"
            " CASE WHEN g %% 3 = 0 THEN 'draft' ELSE 'ready' END"
            " FROM generate_series(1, %s) g",
            (ROWS,),
        )
        connection.execute("SELECT pub.apply_batch(100000)")
        yield connection


def reference(conn: psycopg.Connection) -> dict[Key, Item]:
    items: dict[Key, Item] = {}
    with conn.cursor(row_factory=dict_row) as cur:
        for row in cur.execute("SELECT * FROM study_topic"):
            items.update({(i.kind, i.source_id): i for i in items_of("study_topic", row)})
        for row in cur.execute("SELECT * FROM study_question"):
            items.update({(i.kind, i.source_id): i for i in items_of("study_question", row)})
    return items


def outbox(conn: psycopg.Connection) -> dict[Key, tuple[Any, str, bool]]:
    """The outbox, one entry per item (asserting there is only one)."""
    rows = conn.execute(
        "SELECT kind, source_id, payload::text, payload_hash, deleted FROM pub.outbox ORDER BY id"
    ).fetchall()
    found: dict[Key, tuple[Any, str, bool]] = {}
    for kind, source_id, payload, payload_hash, deleted in rows:
        assert (kind, source_id) not in found, f"two outbox rows for {kind} {source_id}"
        found[(kind, source_id)] = (json.loads(payload), payload_hash, deleted)
    return found


def expected_rows(before: dict[Key, Item], after: dict[Key, Item]) -> dict[Key, Any]:
    """What capture must write: each item whose payload or liveness changed, as the
    reference says it is now (an item that disappeared, or stopped being live, is a
    tombstone; one that was never live and still is not adds nothing)."""
    expected: dict[Key, Any] = {}
    for key in before.keys() | after.keys():
        old, new = before.get(key), after.get(key)
        old_payload = old.payload if old else None
        new_payload = new.payload if new else None
        if old_payload == new_payload:
            continue
        item = new if new is not None else Item(key[0], key[1], None)
        expected[key] = (item.published_payload, item.payload_hash, item.deleted)
    return expected


def assert_capture(conn: psycopg.Connection, statement: str) -> dict[Key, Any]:
    conn.execute("DELETE FROM pub.outbox")
    before = reference(conn)
    conn.execute(statement)
    written = outbox(conn)
    expected = expected_rows(before, reference(conn))
    assert len(expected) >= 1000, "a bulk edit"
    assert written == expected
    return written


def assert_clean(db: Database) -> None:
    assert run_subprocess("--database-url", db.url, "apply").code == 0
    verify = run_subprocess("--database-url", db.url, "verify", "--fail-on", "pending")
    assert verify.code == 0, verify.out


BULK_EDITS = {
    "edit body and explanation": (
        "UPDATE study_question SET body = body || ' (edited)', explanation = explanation || '!'"
    ),
    "rename an exam": "UPDATE study_question SET exam_name = 'Renamed' WHERE exam_name <> 'Exam 0'",
    "soft-delete a topic's questions": "UPDATE study_question SET deleted_at = now() WHERE topic_id IN (1, 2)",
    "change every key": "UPDATE study_question SET id = id + 100000",
    "flip explanations to ready": "UPDATE study_question SET explanation_status ="
    " CASE explanation_status WHEN 'ready' THEN 'review' ELSE 'ready' END",
    "upsert, half of them changed": (
        "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status)"
        " SELECT g, 1 + g % 4, CASE WHEN g % 2 = 0 THEN 'Body ' || g ELSE 'New ' || g END,"
        " '[\"a\", \"b\"]', 'Because ' || g, CASE WHEN g % 3 = 0 THEN 'draft' ELSE 'ready' END"
        " FROM generate_series(1, 2600) g"
        " ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body"
    ),
    "insert, skipping the ids that exist": (
        "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status)"
        " SELECT g, 1, 'New ' || g, '[\"a\"]', 'Because ' || g, 'ready'"
        " FROM generate_series(1, 3500) g ON CONFLICT DO NOTHING"
    ),
    "merge: delete, update and insert in one statement": (
        "MERGE INTO study_question AS q"
        " USING (SELECT g AS id FROM generate_series(1, 2600) g) AS s ON q.id = s.id"
        " WHEN MATCHED AND q.id % 3 = 0 THEN DELETE"
        " WHEN MATCHED THEN UPDATE SET body = q.body || ' (merged)'"
        " WHEN NOT MATCHED THEN INSERT (id, topic_id, body, choices, explanation,"
        " explanation_status) VALUES (s.id, 1, 'Merged ' || s.id, '[\"a\"]', 'e', 'ready')"
    ),
    "move rows with a writable CTE": (
        "WITH moved AS (DELETE FROM study_question WHERE id <= 1200 RETURNING *)"
        " INSERT INTO study_question (id, topic_id, exam_name, exam_round, number, body,"
        " choices, answer, explanation, explanation_status)"
        " SELECT id + 50000, topic_id, exam_name, exam_round, number, body, choices, answer,"
        " explanation, explanation_status FROM moved"
    ),
}


@pytest.mark.parametrize("statement", list(BULK_EDITS.values()), ids=list(BULK_EDITS))
def test_bulk_edit_in_one_statement(
    pub_db: Database, conn: psycopg.Connection, statement: str
) -> None:
    assert_capture(conn, statement)
    assert_clean(pub_db)


def test_copy_is_captured_like_insert(pub_db: Database, conn: psycopg.Connection) -> None:
    conn.execute("DELETE FROM pub.outbox")
    before = reference(conn)
    with conn.cursor().copy(
        "COPY study_question (id, topic_id, body, choices, explanation, explanation_status)"
        " FROM STDIN"
    ) as copy:
        for n in range(3001, 4501):
            copy.write_row((n, 1 + n % 4, f"Copied {n}", '["a"]', f"Because {n}", "ready"))
    expected = expected_rows(before, reference(conn))
    assert len(expected) == 2 * 1500
    assert outbox(conn) == expected
    assert_clean(pub_db)


def test_no_op_bulk_update_writes_nothing(conn: psycopg.Connection) -> None:
    conn.execute("DELETE FROM pub.outbox")
    conn.execute("UPDATE study_question SET updated_at = now(), body = body, choices = choices")
    conn.execute("UPDATE study_question SET deleted_at = now() WHERE explanation_status = 'draft'")
    conn.execute("DELETE FROM pub.outbox")
    # Rows that stay deleted: any change to them adds nothing.
    conn.execute("UPDATE study_question SET body = 'x' WHERE deleted_at IS NOT NULL")
    assert conn.execute("SELECT count(*) FROM pub.outbox").fetchone() == (0,)


TRANSACTIONS: dict[str, list[str]] = {
    "the same rows updated several times": [
        f"UPDATE study_question SET body = body || '{n}' WHERE id <= 1500" for n in range(3)
    ],
    "insert, update and delete of the same ids": [
        "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status)"
        " SELECT g, 1, 'fresh', '[]', 'e', 'ready' FROM generate_series(5001, 6000) g",
        "UPDATE study_question SET body = 'changed' WHERE id BETWEEN 5500 AND 6500",
        "DELETE FROM study_question WHERE id BETWEEN 5800 AND 5900 OR id <= 300",
        "INSERT INTO study_question (id, topic_id, body, choices) SELECT g, 2, 'again', '[]'"
        " FROM generate_series(5850, 5860) g",
        "UPDATE study_question SET id = id + 20000 WHERE id BETWEEN 301 AND 400",
        "UPDATE study_question SET id = id - 20000 WHERE id BETWEEN 20301 AND 20350",
        "UPDATE study_question SET deleted_at = now() WHERE id BETWEEN 401 AND 500",
        "UPDATE study_question SET deleted_at = NULL WHERE id BETWEEN 451 AND 460",
    ],
}


@pytest.mark.parametrize("statements", list(TRANSACTIONS.values()), ids=list(TRANSACTIONS))
def test_one_transaction_publishes_the_final_state(
    pub_db: Database, conn: psycopg.Connection, statements: list[str]
) -> None:
    with pub_db.connect(autocommit=False) as txn:
        for statement in statements:
            txn.execute(statement)
        txn.commit()
    assert_clean(pub_db)
    published = {
        (kind, source_id): payload
        for kind, source_id, payload in conn.execute(
            "SELECT kind, source_id, payload FROM pub.content WHERE NOT deleted"
        )
    }
    assert published == reference_state(pub_db)


def test_an_orm_saving_one_row_again_and_again_leaves_one_row_per_item(
    pub_db: Database, conn: psycopg.Connection
) -> None:
    conn.execute("DELETE FROM pub.outbox")
    with pub_db.connect(autocommit=False) as txn:
        for n in range(5):
            txn.execute(
                "UPDATE study_question SET body = %s, explanation = %s WHERE id = 7",
                (f"b{n}", f"e{n}"),
            )
        txn.commit()
    assert conn.execute(
        "SELECT kind, payload ->> 'body', payload ->> 'explanation' FROM pub.outbox ORDER BY id"
    ).fetchall() == [("question", "b4", None), ("explanation", None, "e4")]
