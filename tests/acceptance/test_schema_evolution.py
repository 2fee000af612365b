"""Changing a projection (schema_version 2): the publishing half of the procedure in
docs/operations.md, "Changing a payload".

The example change adds "exam_label" to the question payload, from columns pubctl
already reads. The SQL a new revision would carry (pub.question_canonical and
pub.schema_version() replaced) is run directly, and the Python reference is swapped the
way the new pubctl release would change it. Then: verify reports old-schema (and stale)
items, a backfill republishes, the applier gives every item republished under the new version
a new rev (its schema_version is part of what a reader sees), and verify is clean again.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pubctl import projection, verify

from support.cli import run_inprocess
from support.db import Database

V2_SQL = """
CREATE TYPE pub.question_payload_v2 AS (
    answer integer, body text, choices text[], exam_label text, exam_name text,
    exam_round integer, number integer, question_id bigint, topic_id bigint
);
CREATE OR REPLACE FUNCTION pub.question_canonical(
    question_id bigint, topic_id bigint, exam_name text, exam_round integer,
    number integer, body text, choices jsonb, answer integer, deleted_at timestamptz
) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN NOT pub.question_is_live(deleted_at) THEN NULL
        WHEN NOT (pub.is_json_safe_integer(question_id) AND pub.is_json_safe_integer(topic_id))
            THEN pub.payload_rule_violation('question', question_id,
                                            'id and topic_id must be within +-(2^53-1)')::json
        ELSE pg_catalog.row_to_json(ROW(
            answer, body,
            COALESCE(pub.string_array_items(choices),
                     pub.payload_rule_violation('question', question_id,
                                                'choices must be a JSON array of strings')::text[]),
            exam_name || ' / round ' || exam_round,
            exam_name, exam_round, number, question_id, topic_id)::pub.question_payload_v2)
    END;
END;
CREATE OR REPLACE FUNCTION pub.schema_version() RETURNS integer
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT 2;
END;
"""


V1_ITEMS_OF = projection.items_of


def v2_items_of(table: str, row: dict[str, Any]) -> list[projection.Item]:
    if table != "study_question":
        return V1_ITEMS_OF(table, row)
    question, explanation = V1_ITEMS_OF(table, row)
    if question.payload is not None:
        label = None
        if row["exam_name"] is not None and row["exam_round"] is not None:
            label = f"{row['exam_name']} / round {row['exam_round']}"
        question = projection.Item(
            "question", question.source_id, {**question.payload, "exam_label": label}
        )
    return [question, explanation]


def revs(db: Database) -> dict[tuple[str, int], int]:
    with db.connect() as conn:
        return {
            (k, s): r for k, s, r in conn.execute("SELECT kind, source_id, rev FROM pub.content")
        }


def test_projection_change_end_to_end(
    capsys: pytest.CaptureFixture[str], pub_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
        conn.execute(
            "INSERT INTO study_question (id, topic_id, exam_name, exam_round, body, choices, explanation, explanation_status)"
            " SELECT g, 1, CASE WHEN g % 2 = 0 THEN 'Spring' END, 1, 'q' || g, '[\"a\"]', 'e', 'ready'"
            " FROM generate_series(1, 20) g"
        )
    assert run_inprocess(capsys, "--database-url", pub_db.url, "apply").code == 0
    before = revs(pub_db)

    # The new revision's SQL, and the new release's Python reference.
    with pub_db.connect() as conn:
        conn.execute(V2_SQL)
    monkeypatch.setattr(verify, "items_of", v2_items_of)

    result = run_inprocess(
        capsys, "--database-url", pub_db.url, "verify", "--json", "--limit-report", "100"
    )
    report = json.loads(result.out)
    assert result.code == 1
    assert report["counts"]["old_schema"] == {"topic": 1, "question": 20, "explanation": 20}
    assert report["counts"]["stale"] == {"question": 20}

    assert run_inprocess(capsys, "--database-url", pub_db.url, "backfill", "all").code == 0
    applied = run_inprocess(capsys, "--database-url", pub_db.url, "apply")
    # Every item republished under version 2 is a change a reader sees (its
    # schema_version), so each gets a new rev, payload changed or not.
    assert "41 items changed, 0 unchanged" in applied.out
    after = revs(pub_db)
    assert all(after[key] > before[key] for key in before), "every item has a new rev"
    # Applying version 2 again is churn 0.
    assert run_inprocess(capsys, "--database-url", pub_db.url, "backfill", "all").code == 0
    again = run_inprocess(capsys, "--database-url", pub_db.url, "apply")
    assert "0 items changed, 41 unchanged" in again.out
    assert revs(pub_db) == after

    result = run_inprocess(capsys, "--database-url", pub_db.url, "verify", "--json")
    assert result.code == 0, result.out
    with pub_db.connect() as conn:
        assert conn.execute("SELECT DISTINCT schema_version FROM pub.content").fetchall() == [(2,)]
        (payload,) = conn.execute(
            "SELECT payload FROM pub.content WHERE kind = 'question' AND source_id = 2"
        ).fetchone()
    assert payload["exam_label"] == "Spring / round 1"
