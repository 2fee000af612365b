"""`pubctl verify`: clean after writes, backfill and apply; every kind of drift caught
and named; pending is not drift unless asked."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from typing import Any

import psycopg
import pytest

from pubctl import sources
from pubctl import verify as verifier
from pubctl.migrate import migrate
from pubctl.queries import query

from support.cli import run_inprocess, run_subprocess
from support.db import Database


def prepare(db: Database, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows from before install, live writes, backfill and apply: a clean state."""
    with db.connect() as conn:
        conn.execute("UPDATE pub.settings SET publishing_enabled = false")
        conn.execute(
            "INSERT INTO study_topic (id, name) SELECT g, 't' || g FROM generate_series(1, 4) g"
        )
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status, deleted_at)"
            " SELECT g, 1 + g % 4, 'q' || g, '[\"a\",\"b\"]', 'e' || g,"
            " CASE WHEN g % 3 = 0 THEN 'ready' ELSE 'draft' END,"
            " CASE WHEN g % 7 = 0 THEN now() END FROM generate_series(1, 200) g"
        )
        conn.execute("UPDATE pub.settings SET publishing_enabled = true")
        conn.execute("UPDATE study_question SET body = 'edited' WHERE id < 20")
        conn.execute(
            "UPDATE study_question SET explanation_status = 'ready' WHERE id BETWEEN 20 AND 30"
        )
        conn.execute("DELETE FROM study_question WHERE id BETWEEN 190 AND 195")
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation_status) VALUES (500, 1, 'new', '[]', 'draft')"
        )
    assert run_inprocess(capsys, "--database-url", db.url, "backfill", "all").code == 0
    assert run_inprocess(capsys, "--database-url", db.url, "apply").code == 0


def verify(capsys: pytest.CaptureFixture[str], db: Database, *args: str) -> tuple[int, Any]:
    result = run_inprocess(capsys, "--database-url", db.url, "verify", "--json", *args)
    return result.code, json.loads(result.out)


def named(report: Any) -> set[tuple[str, str, Any]]:
    return {(e["category"], e["kind"], e["source_id"]) for e in report["examples"]}


def test_clean_after_writes_backfill_and_apply(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    prepare(pub_db, capsys)
    code, report = verify(capsys, pub_db)
    assert code == 0, report
    assert report["clean"] and report["drift"] == 0
    text = run_inprocess(capsys, "--database-url", pub_db.url, "verify")
    assert text.code == 0 and "clean: published state equals the source" in text.out


TAMPERING = [
    (
        "missing",
        "DELETE FROM pub.content WHERE kind = 'question' AND source_id = 3",
        ("missing", "question", 3),
    ),
    (
        "stale payload",
        "UPDATE pub.content SET payload = jsonb_set(payload::jsonb, '{body}', '\"x\"')::json WHERE kind = 'question' AND source_id = 4",
        ("stale", "question", 4),
    ),
    (
        "stale hash",
        "UPDATE pub.content SET payload_hash = repeat('0', 64) WHERE kind = 'topic' AND source_id = 2",
        ("hash_mismatch", "topic", 2),
    ),
    (
        "orphaned",
        "INSERT INTO pub.content (kind, source_id, rev, payload, payload_hash, schema_version, deleted)"
        " VALUES ('question', 7, 999998, '{\"question_id\": 7}', pub.payload_hash('{\"question_id\":7}'), 1, false)",
        ("orphaned", "question", 7),
    ),
    (
        "orphan beyond the last row",
        "INSERT INTO pub.content (kind, source_id, rev, payload, payload_hash, schema_version, deleted) VALUES ('topic', 99, 999999, '{}', pub.payload_hash('{}'), 1, false)",
        ("orphaned", "topic", 99),
    ),
    (
        "old schema",
        "UPDATE pub.content SET schema_version = 0 WHERE kind = 'explanation' AND source_id = 3",
        ("old_schema", "explanation", 3),
    ),
    (
        "trigger disabled",
        "ALTER TABLE study_question DISABLE TRIGGER pub_capture_update",
        ("capture_bypassed", "capture", None),
    ),
    (
        "trigger fires for replicas only",
        "ALTER TABLE study_topic ENABLE REPLICA TRIGGER pub_capture_update",
        ("capture_bypassed", "capture", None),
    ),
    (
        "trigger dropped",
        "DROP TRIGGER pub_capture_insert ON study_topic",
        ("capture_bypassed", "capture", None),
    ),
    (
        "publishing off",
        "UPDATE pub.settings SET publishing_enabled = false",
        ("capture_bypassed", "capture", None),
    ),
    (
        "replica role",
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET session_replication_role = replica', current_database()); END $$",
        ("capture_bypassed", "capture", None),
    ),
    (
        "invalid row",
        "ALTER TABLE study_question DISABLE TRIGGER USER; UPDATE study_question SET choices = '{\"a\": 1}' WHERE id = 5; ALTER TABLE study_question ENABLE TRIGGER USER",
        ("invalid", "question", 5),
    ),
    (
        "projection bug",
        "CREATE OR REPLACE FUNCTION pub.topic_canonical(topic_id bigint, name text, exam_round_size integer, deleted_at timestamptz) RETURNS json LANGUAGE sql STABLE BEGIN ATOMIC SELECT CASE WHEN deleted_at IS NULL THEN pg_catalog.row_to_json(ROW(exam_round_size, pg_catalog.upper(name), topic_id)::pub.topic_payload) END; END",
        ("reference_mismatch", "topic", 1),
    ),
]


@pytest.mark.parametrize(("name", "tamper", "expected"), TAMPERING, ids=[t[0] for t in TAMPERING])
def test_each_kind_of_drift_fails_and_names_the_item(
    capsys: pytest.CaptureFixture[str],
    pub_db: Database,
    name: str,
    tamper: str,
    expected: tuple[str, str, Any],
) -> None:
    prepare(pub_db, capsys)
    with pub_db.connect() as conn:
        conn.execute(tamper)
    code, report = verify(capsys, pub_db, "--limit-report", "100")
    assert code == 1, report
    assert expected in named(report), report["examples"]
    text = run_inprocess(capsys, "--database-url", pub_db.url, "verify", "--limit-report", "100")
    assert text.code == 1 and "DRIFT" in text.out
    if expected[2] is not None:
        assert f"{expected[0]}: {expected[1]} {expected[2]}" in text.out


def test_pending_is_not_drift_unless_asked(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    prepare(pub_db, capsys)
    with pub_db.connect() as conn:
        conn.execute("UPDATE study_question SET body = 'waiting' WHERE id = 1")
    code, report = verify(capsys, pub_db)
    assert code == 0 and ("pending", "question", 1) in named(report)
    assert report["pending_outbox_rows"] == 1
    code, _ = verify(capsys, pub_db, "--fail-on", "pending")
    assert code == 1
    code, report = verify(capsys, pub_db, "--wait", "--fail-on", "pending")
    assert code == 0 and report["pending_outbox_rows"] == 0


def test_kind_filter(capsys: pytest.CaptureFixture[str], pub_db: Database) -> None:
    prepare(pub_db, capsys)
    with pub_db.connect() as conn:
        conn.execute("DELETE FROM pub.content WHERE kind = 'question' AND source_id = 3")
    assert verify(capsys, pub_db, "--kind", "topic", "--kind", "explanation")[0] == 0
    assert verify(capsys, pub_db, "--kind", "question")[0] == 1


def test_bad_usage_and_unmigrated(
    capsys: pytest.CaptureFixture[str], pub_db: Database, app_db: Database
) -> None:
    assert run_inprocess(capsys, "--database-url", pub_db.url, "verify", "--kind", "quiz").code == 2
    assert (
        run_inprocess(capsys, "--database-url", pub_db.url, "verify", "--fail-on", "stale").code
        == 2
    )
    assert (
        run_inprocess(capsys, "--database-url", pub_db.url, "verify", "--limit-report", "-1").code
        == 2
    )
    result = run_subprocess("--database-url", app_db.url, "verify")
    assert result.code == 3 and "pubctl migrate" in result.err


# --- every row read, only what is published judged ----------------------------------------

BIG = 8_000_000  # characters of incompressible text: about 4,000 TOAST chunks


def toast_blocks(conn: psycopg.Connection[Any]) -> int:
    """Blocks of the application's TOAST tables this transaction has read so far."""
    row = conn.execute(
        "SELECT sum(pg_stat_get_xact_blocks_fetched(c.reltoastrelid))::bigint FROM pg_class c"
        " WHERE c.oid IN ('study_topic'::regclass, 'study_question'::regclass)"
    ).fetchone()
    assert row is not None
    return int(row[0])


def read_as_verify_does(conn: psycopg.Connection[Any]) -> tuple[int, int, int]:
    """verify's queries over the source tables, range by range as it runs them, in one
    transaction: the TOAST blocks they read, the rows they shipped to the Python
    reference, and the largest of those rows in bytes."""
    with conn.transaction():
        before = toast_blocks(conn)
        rows = largest = 0
        run = verifier.Verification(conn)
        for source in sources.SOURCES:
            for lo, hi in run.ranges(source):
                range_ = {"source": source.table, "lo": lo, "hi": hi}
                conn.execute(query("verify_range"), range_).fetchall()
                for _id, row_data, *_ in conn.execute(query("verify_source_projection"), range_):
                    rows += 1
                    largest = max(largest, len(row_data.encode()))
        return toast_blocks(conn) - before, rows, largest


def test_unpublished_text_is_neither_read_nor_shipped(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    """A draft explanation, every value of a soft-deleted row but its id, and columns
    pubctl does not project cost verify nothing, however large."""
    big = os.urandom(BIG // 2).hex()
    with pub_db.connect() as conn:
        conn.execute("ALTER TABLE study_question ADD COLUMN notes text")
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 't')")
        conn.execute("INSERT INTO study_topic (id, name, deleted_at) VALUES (2, %s, now())", (big,))
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation,"
            " explanation_status, notes, deleted_at) VALUES"
            " (1, 1, 'b', '[\"x\"]', 'short', 'ready', %(big)s, NULL),"
            " (2, 1, 'b', '[\"x\"]', %(big)s, 'draft', NULL, NULL),"
            " (3, 1, %(big)s, '{\"not\": \"an array\"}', %(big)s, 'ready', %(big)s, now())",
            {"big": big},
        )
        assert run_inprocess(capsys, "--database-url", pub_db.url, "apply").code == 0
    with pub_db.connect(autocommit=False) as conn:
        blocks, rows, largest = read_as_verify_does(conn)
    assert rows == 5, "every row was read"
    assert blocks == 0, "no unpublished value was read"
    assert largest < 1000, "no unpublished value was shipped"
    code, report = verify(capsys, pub_db)
    assert code == 0 and report["checked"] == {"study_topic": 2, "study_question": 3}, report

    # The measure sees a published value: once the explanation is ready, verify reads it.
    with pub_db.connect() as conn:
        conn.execute("UPDATE study_question SET explanation_status = 'ready' WHERE id = 2")
        assert run_inprocess(capsys, "--database-url", pub_db.url, "apply").code == 0
    with pub_db.connect(autocommit=False) as conn:
        blocks, rows, largest = read_as_verify_does(conn)
    assert blocks > 1000 and largest > BIG
    assert verify(capsys, pub_db)[0] == 0


def test_deleted_rows_beyond_the_json_safe_range_are_clean(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    """An id beyond +-(2^53-1) breaks the payload rules only for a live row: a deleted
    one (and its other values) is a tombstone for verify too, before and after backfill."""
    prepare(pub_db, capsys)
    with pub_db.connect() as conn:
        conn.execute(
            "INSERT INTO study_topic (id, name, deleted_at) VALUES (%s, 'gone', now())", (2**60,)
        )
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation,"
            " explanation_status, deleted_at) VALUES (%s, %s, 'gone', '{\"a\": 1}', 'e', 'ready', now())",
            (-(2**60), 2**60),
        )
    assert run_inprocess(capsys, "--database-url", pub_db.url, "apply").code == 0
    code, report = verify(capsys, pub_db)
    assert code == 0 and report["counts"] == {}, report
    for step in (("backfill", "all", "--include-deleted"), ("apply",)):
        assert run_inprocess(capsys, "--database-url", pub_db.url, *step).code == 0
    code, report = verify(capsys, pub_db)
    assert code == 0 and report["counts"] == {}, report
    with pub_db.connect() as conn, pytest.raises(psycopg.Error, match="breaks the payload rules"):
        conn.execute("UPDATE study_topic SET deleted_at = NULL WHERE id = %s", (2**60,))


ID_TYPES = {"bigint": (-(2**63), 2**63 - 1), "integer": (-(2**31), 2**31 - 1)}
TABLES = """
CREATE TABLE study_topic (
    id {t} PRIMARY KEY, name text NOT NULL, exam_round_size integer, deleted_at timestamptz);
CREATE TABLE study_question (
    id {t} PRIMARY KEY, topic_id {t} NOT NULL, exam_name text, exam_round integer,
    number integer, body text NOT NULL, choices jsonb NOT NULL, answer integer,
    explanation text, explanation_status text NOT NULL, deleted_at timestamptz);
"""


def publish_by_hand(conn: psycopg.Connection[Any], items: list[tuple[str, int]]) -> None:
    """Items published live by some earlier state of the source."""
    with conn.transaction():
        for kind, source_id in items:
            conn.execute("UPDATE pub.rev_counter SET last_rev = last_rev + 1")
            conn.execute(
                "INSERT INTO pub.content (kind, source_id, rev, payload, payload_hash,"
                " schema_version, deleted) SELECT %s, %s, last_rev, '{}', pub.payload_hash('{}'),"
                " 1, false FROM pub.rev_counter",
                (kind, source_id),
            )


@pytest.mark.parametrize("id_type", list(ID_TYPES))
def test_verify_and_backfill_read_both_ends_of_the_id_type(
    capsys: pytest.CaptureFixture[str], empty_db: Database, id_type: str
) -> None:
    """Rows at the smallest and the largest id are read, and so are published items
    there: verify reports them, and a backfill (one row per page) repairs them."""
    low, high = ID_TYPES[id_type]
    # Beyond +-(2^53-1) only a deleted row keeps the payload rules.
    live = id_type == "integer"
    deleted_at = None if live else datetime.now(timezone.utc)
    with empty_db.connect() as conn:
        conn.execute(TABLES.format(t=id_type))
        for row_id in (low, 0, high):  # rows from before pubctl was installed
            gone = deleted_at if row_id else None
            conn.execute(
                "INSERT INTO study_topic (id, name, deleted_at) VALUES (%s, 't', %s)",
                (row_id, gone),
            )
            conn.execute(
                "INSERT INTO study_question (id, topic_id, body, choices, explanation,"
                " explanation_status, deleted_at) VALUES (%s, 0, 'q', '[]', 'e', 'ready', %s)",
                (row_id, gone),
            )
        migrate(empty_db.url)
        if not live:
            publish_by_hand(conn, [(k, i) for k in ("topic", "question") for i in (low, high)])
    ends = {
        ("missing" if live else "orphaned", kind, row_id)
        for kind in (("topic", "question", "explanation") if live else ("topic", "question"))
        for row_id in (low, high)
    }
    middle = {("missing", kind, 0) for kind in ("topic", "question", "explanation")}
    code, report = verify(capsys, empty_db, "--limit-report", "100")
    assert code == 1 and named(report) == ends | middle, report
    assert report["checked"] == {"study_topic": 3, "study_question": 3}

    backfill = run_inprocess(
        capsys, "--database-url", empty_db.url, "backfill", "all", "--batch-size", "1", "--json"
    )
    assert backfill.code == 0 and [r["rows"] for r in json.loads(backfill.out)] == [3, 3]
    assert run_inprocess(capsys, "--database-url", empty_db.url, "apply").code == 0
    code, report = verify(capsys, empty_db)
    assert code == 0 and report["counts"] == {}, report
    with empty_db.connect() as conn:
        published = conn.execute(
            "SELECT kind, source_id, deleted FROM pub.content WHERE source_id IN (%s, %s)",
            (low, high),
        ).fetchall()
    assert sorted(published) == sorted((k, i, not live) for _c, k, i in ends)


BAD_ROWS = """
ALTER TABLE study_topic DISABLE TRIGGER USER;
ALTER TABLE study_question DISABLE TRIGGER USER;
UPDATE study_question SET choices = '{"a": 1}' WHERE id IN (6, 14);
INSERT INTO study_topic (id, name) VALUES (9007199254740992, 'beyond');
INSERT INTO study_topic (id, name, deleted_at) VALUES (1152921504606846976, 'gone', now());
UPDATE study_question SET topic_id = 1152921504606846976 WHERE id = 8;
INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status)
VALUES (1152921504606846976, 1, 'q', '[]', 'e', 'ready'),
       (-9223372036854775808, 1, 'q', '[]', 'e', 'draft');
ALTER TABLE study_topic ENABLE TRIGGER USER;
ALTER TABLE study_question ENABLE TRIGGER USER;
"""
ID_RULE = "id must be within +-(2^53-1)"
IDS_RULE = "id and topic_id must be within +-(2^53-1)"
INVALID = {
    ("question", 6): "choices must be a JSON array of strings",
    ("question", 8): IDS_RULE,
    ("question", 2**60): IDS_RULE,
    ("explanation", 2**60): ID_RULE,
    ("question", -(2**63)): IDS_RULE,
    ("topic", 2**53): ID_RULE,
}


@pytest.mark.parametrize("page_size", [1, 3, 10_000])
def test_rows_breaking_the_payload_rules_are_invalid_once_per_item(
    capsys: pytest.CaptureFixture[str], pub_db: Database, page_size: int
) -> None:
    """Each item a live row cannot publish is reported once, as `invalid` naming the rule
    (question 6's explanation, which keeps the rules, is not reported); the rest of its
    range is compared as usual, and deleted rows' values (question 14) are not judged."""
    prepare(pub_db, capsys)
    with pub_db.connect() as conn:
        conn.execute(BAD_ROWS)
        conn.execute("DELETE FROM pub.content WHERE kind = 'topic' AND source_id = 3")
        report = verifier.verify(conn, limit_report=100, page_size=page_size).as_dict()
    expected = {item: f"breaks the payload rules: {rule}" for item, rule in INVALID.items()}
    found = {(e["kind"], e["source_id"]): e["detail"] for e in report["examples"]}
    assert found == {**expected, ("topic", 3): ""}, report
    assert report["counts"] == {
        "missing": {"topic": 1},
        "invalid": {"question": 4, "explanation": 1, "topic": 1},
    }
    # 6 topics and 197 questions, less the rows breaking the rules.
    assert report["checked"] == {"study_topic": 5, "study_question": 193}


def test_invalid_rows_fail_verify_with_exit_1_and_name_the_rule(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    prepare(pub_db, capsys)
    with pub_db.connect() as conn:
        conn.execute(BAD_ROWS)
    text = run_inprocess(capsys, "--database-url", pub_db.url, "verify", "--limit-report", "100")
    assert text.code == 1, text
    for (kind, source_id), rule in INVALID.items():
        line = f"invalid: {kind} {source_id}: breaks the payload rules: {rule}"
        assert text.out.count(line) == 1, text.out
    code, report = verify(capsys, pub_db, "--kind", "explanation")
    assert code == 1 and named(report) == {("invalid", "explanation", 2**60)}, report
