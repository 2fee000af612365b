"""A kind defined in one place: a definition with a ``study_note`` source and the
migration ``make revision`` renders from it make the whole flow work for kind ``note``
(capture of every kind of write, backfill, apply, pub.feed, `pubctl feed`, `serve`,
verify) without another line anywhere."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import httpx
import psycopg
import pytest

from pubctl import rendering, revision_sql, sources
from pubctl.sources import Definition, Field

from support import note_kind
from support.catalog import snapshot
from support.cli import run_subprocess
from support.db import Database
from support.serve import Served, reader_url

TESTS = str(Path(__file__).resolve().parent.parent)
WITH_NOTES = {
    "PUBCTL_DEFINITION": "support.note_kind:DEFINITION",
    "PYTHONPATH": os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH", "")) if p),
}


def pubctl(db: Database, *args: str) -> tuple[int, str, str]:
    result = run_subprocess("--database-url", db.url, *args, env=WITH_NOTES)
    return result.code, result.out, result.err


def published_notes(db: Database) -> dict[int, tuple[str, bool]]:
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT source_id, payload::text, deleted FROM pub.content WHERE kind = 'note'"
        ).fetchall()
    return {source_id: (payload, deleted) for source_id, payload, deleted in rows}


def note(note_id: int, topic_id: int, text: str) -> str:
    return json.dumps(
        {"note_id": note_id, "text": text, "topic_id": topic_id},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def test_a_new_kind_from_its_definition_alone(pub_db: Database) -> None:
    migration = revision_sql.delta(
        rendering.render(sources.STUDY), rendering.render(note_kind.DEFINITION)
    )
    with pub_db.connect() as conn:
        conn.execute(note_kind.TABLE_SQL)
        # Rows from before: only a backfill publishes them.
        conn.execute("INSERT INTO study_note (id, topic_id, text) VALUES (1, 1, 'before')")
        with conn.transaction():
            conn.execute(migration)

        # Every kind of write is captured.
        conn.execute(
            "INSERT INTO study_note (id, topic_id, text) VALUES (2, 1, 'n2'), (3, 1, 'n3'),"
            " (4, 1, 'gone'), (5, 2, 'moves')"
        )
        conn.execute("SELECT pub.apply_batch(1000)")
        assert len(published_notes(pub_db)) == 4
        conn.execute("UPDATE study_note SET text = 'n2 \"edited\" é' WHERE id = 2")
        conn.execute("UPDATE study_note SET updated_at = now() WHERE id = 3")  # not projected
        conn.execute("UPDATE study_note SET deleted_at = now() WHERE id = 3")
        conn.execute("DELETE FROM study_note WHERE id = 4")
        conn.execute("UPDATE study_note SET id = 6 WHERE id = 5")
        conn.execute("SELECT pub.apply_batch(1000)")
    assert published_notes(pub_db) == {
        2: (note(2, 1, 'n2 "edited" é'), False),
        3: ("{}", True),
        4: ("{}", True),
        5: ("{}", True),
        6: (note(6, 2, "moves"), False),
    }

    code, out, err = pubctl(pub_db, "backfill", "notes")
    assert code == 0, err
    code, out, err = pubctl(pub_db, "apply")
    assert code == 0, err
    assert published_notes(pub_db)[1] == (note(1, 1, "before"), False)

    with pub_db.connect() as conn:
        kinds = conn.execute("SELECT DISTINCT kind FROM pub.feed(0, 1000, '{note}')").fetchall()
        assert kinds == [("note",)]
        assert conn.execute("SELECT pub.source_kinds('study_note')").fetchone() == (["note"],)

    code, out, err = pubctl(pub_db, "feed", "--kind", "note")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert {line["kind"] for line in lines} == {"note"}
    assert {line["source_id"] for line in lines} == {1, 2, 3, 4, 5, 6}

    with Served(reader_url(pub_db), env=WITH_NOTES) as served:
        answer = httpx.get(served.url("/published/feed?kind=note"), timeout=10)
        assert answer.status_code == 200, answer.text
        items = answer.json()["items"]
        assert {item["kind"] for item in items} == {"note"} and len(items) == 6

    code, out, err = pubctl(pub_db, "verify")
    assert code == 0, out + err

    with pub_db.connect() as conn:
        conn.execute(
            "UPDATE pub.content SET payload = %s::json WHERE kind = 'note' AND source_id = 2",
            (note(2, 1, "tampered"),),
        )
    code, out, err = pubctl(pub_db, "verify", "--json")
    assert code == 1, out + err
    report = json.loads(out)
    assert report["counts"]["stale"] == {"note": 1}, report
    assert report["examples"][0]["source_id"] == 2, report


def test_a_kind_removed_again_takes_its_ended_items_along(pub_db: Database) -> None:
    up = revision_sql.delta(rendering.render(sources.STUDY), rendering.render(note_kind.DEFINITION))
    down = revision_sql.delta(
        rendering.render(note_kind.DEFINITION), rendering.render(sources.STUDY)
    )
    with pub_db.connect() as conn:
        before = snapshot(conn)
        conn.execute(note_kind.TABLE_SQL)
        with conn.transaction():
            conn.execute(up)
        conn.execute("INSERT INTO study_note (id, topic_id, text) VALUES (1, 1, 'n')")
        conn.execute("SELECT pub.apply_batch(1000)")
        conn.execute(
            "INSERT INTO pub.backfill_runs (source, state) VALUES ('study_note', 'finished')"
        )
        # A pubctl without the note kind would render over it: rename-column refuses.
        other = run_subprocess(
            "--database-url", pub_db.url, "rename-column", "study_question", "body", "text2"
        )
        assert other.code != 0 and "other sources or kinds" in other.err, other.err
        # A live note: removing the kind would take it from viewers without a tombstone.
        with pytest.raises(psycopg.Error) as refused, conn.transaction():
            conn.execute(down)
        assert refused.value.sqlstate == "PB008"
        conn.execute("DELETE FROM study_note")
        conn.execute("SELECT pub.apply_batch(1000)")
        with conn.transaction():
            conn.execute(down)
        assert conn.execute("SELECT count(*) FROM pub.content WHERE kind = 'note'").fetchone() == (
            0,
        )
        conn.execute("DROP TABLE study_note")
        assert snapshot(conn) == before


def test_a_new_field_from_its_definition_and_back(pub_db: Database) -> None:
    topics = sources.TOPICS
    kind = topics.publishes[0]
    wider = Definition(
        (
            replace(
                topics,
                publishes=(replace(kind, fields=(*kind.fields, Field("size", "exam_round_size"))),),
            ),
            sources.QUESTIONS,
        )
    )
    up = revision_sql.delta(rendering.render(sources.STUDY), rendering.render(wider))
    down = revision_sql.delta(rendering.render(wider), rendering.render(sources.STUDY))
    with pub_db.connect() as conn:
        before = snapshot(conn)
        with conn.transaction():
            conn.execute(up)
        conn.execute("INSERT INTO study_topic (id, name, exam_round_size) VALUES (1, 'A', 3)")
        (payload,) = conn.execute("SELECT payload::text FROM pub.outbox").fetchone()
        assert payload == '{"exam_round_size":3,"name":"A","size":3,"topic_id":1}'
        with conn.transaction():
            conn.execute(down)
        assert snapshot(conn) == before


def test_a_definition_that_cannot_be_loaded_is_one_line() -> None:
    result = run_subprocess("status", env={"PUBCTL_DEFINITION": "support.nowhere:DEFINITION"})
    assert result.code == 1
    assert result.err.startswith("pubctl: PUBCTL_DEFINITION=support.nowhere:DEFINITION does not")
    assert len(result.err.strip().splitlines()) == 1
