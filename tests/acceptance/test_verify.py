"""`pubctl verify`: clean after writes, backfill and apply; every kind of drift caught
and named; pending is not drift unless asked."""

from __future__ import annotations

import json
from typing import Any

import pytest

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
        "UPDATE pub.content SET payload = jsonb_set(payload, '{body}', '\"x\"') WHERE kind = 'question' AND source_id = 4",
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
        "CREATE OR REPLACE FUNCTION pub.json_string(value text) RETURNS text LANGUAGE sql STABLE BEGIN ATOMIC SELECT COALESCE(pg_catalog.upper(pg_catalog.to_json(value)::text), 'null'); END",
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
