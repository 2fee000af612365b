"""The rendered capture and projection publish byte for byte what the hand-written ones
of revision 0104 did: the same corpus of writes into a database at 0104 and one at head
gives the same outbox, payload text, hashes and tombstones included, and so does a
backfill."""

from __future__ import annotations

import json
import random
from typing import Any

from pubctl import migrate

from support.db import Database

PIECES = ['"', "\\", "\u2028", "\x7f", "\x1f", "\n\t", "e\u0301", "\u05e9\u05dc\u05d5\u05dd",
          "\U0001f600", "</script>", "ß", "€", "\ud7ff", "\ufeff", "'", "{}", "null"]  # fmt: skip
INT32 = (-(2**31), 2**31 - 1, 0, -1, 7, None)
IDS = (2**53 - 1, -(2**53 - 1), 1, 2**31)


def text(rng: random.Random) -> str | None:
    if rng.random() < 0.1:
        return None
    parts = [rng.choice(PIECES) if rng.random() < 0.5 else chr(rng.randint(0x20, 0x2FFF))
             for _ in range(rng.randint(0, 12))]  # fmt: skip
    return "".join(p for p in parts if not 0xD800 <= ord(p[0]) <= 0xDFFF)


def writes(seed: int) -> list[tuple[str, tuple[Any, ...]]]:
    """A fixed corpus: topics and questions of every shape, then edits, soft and hard
    deletes, key changes, each statement with its parameters."""
    rng = random.Random(seed)
    out: list[tuple[str, tuple[Any, ...]]] = []
    for topic in range(1, 21):
        out.append(("INSERT INTO study_topic (id, name, exam_round_size, deleted_at)"
                    " VALUES (%s, %s, %s, CASE WHEN %s THEN now() END)",
                    (topic, text(rng) or "t", rng.choice(INT32), rng.random() < 0.1)))  # fmt: skip
    questions = list(range(1, 301)) + [rng.choice(IDS) + n for n in range(3)]
    for qid in questions:
        choices = [text(rng) or "" for _ in range(rng.randint(0, 4))]
        out.append((
            "INSERT INTO study_question (id, topic_id, exam_name, exam_round, number, body,"
            " choices, answer, explanation, explanation_status, deleted_at) VALUES"
            " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END)",
            (qid if abs(qid) < 2**53 else 2**53 - 1 - qid % 7, rng.randint(1, 20), text(rng),
             rng.choice(INT32), rng.choice(INT32), text(rng) or "b", json.dumps(choices),
             rng.choice(INT32), text(rng), rng.choice(["ready", "draft", "Ready", "ready "]),
             rng.random() < 0.1),
        ))  # fmt: skip
    for qid in rng.sample(range(1, 301), 120):
        change = rng.choice(["body", "explanation", "status", "soft", "revive", "delete", "key"])
        statement = {
            "body": "UPDATE study_question SET body = %s WHERE id = %s",
            "explanation": "UPDATE study_question SET explanation = %s WHERE id = %s",
            "status": "UPDATE study_question SET explanation_status = %s WHERE id = %s",
            "soft": "UPDATE study_question SET deleted_at = now() WHERE id = %s OR %s IS NULL",
            "revive": "UPDATE study_question SET deleted_at = NULL WHERE id = %s OR %s IS NULL",
            "delete": "DELETE FROM study_question WHERE id = %s OR %s IS NULL",
            "key": "UPDATE study_question SET id = id + 100000 WHERE id = %s OR %s IS NULL",
        }[change]
        value: Any = text(rng) or "x"
        if change == "status":
            value = rng.choice(["ready", "draft"])
        if change in ("soft", "revive", "delete", "key"):
            out.append((statement, (qid, 0)))
        else:
            out.append((statement, (value, qid)))
    out.append(("UPDATE study_topic SET name = name || '!' WHERE id %% 3 = 0", ()))
    out.append(("UPDATE study_topic SET deleted_at = now() WHERE id %% 5 = 0", ()))
    out.append(("DELETE FROM study_topic WHERE id = 20", ()))
    return out


def outbox(db: Database) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT kind, source_id, payload::text, payload_hash, deleted, schema_version"
            " FROM pub.outbox ORDER BY id"
        ).fetchall()
        conn.execute("DELETE FROM pub.outbox")
    return rows


def test_the_rendered_forms_publish_the_same_bytes(app_db: Database, pub_db: Database) -> None:
    migrate.migrate(app_db.url, "0104")
    corpus = writes(seed=8785)
    for db in (app_db, pub_db):
        with db.connect() as conn:
            conn.execute("ALTER TABLE study_question DROP CONSTRAINT study_question_topic_id_fkey")
            for statement, params in corpus:
                conn.execute(statement, params)
    at_0104, at_head = outbox(app_db), outbox(pub_db)
    assert len(at_head) > 400
    assert at_0104 == at_head

    for db in (app_db, pub_db):  # what `pubctl backfill all --include-deleted` runs
        with db.connect() as conn:
            for source in ("study_topic", "study_question"):
                conn.execute("SELECT pub.backfill_page(%s, NULL, 100000, true, false)", (source,))
    backfilled = outbox(pub_db)
    assert len(backfilled) > 550
    assert outbox(app_db) == backfilled
