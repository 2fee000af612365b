"""Real concurrent connections: writers, a worker, a feed reader; a database restart."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from typing import Any

import pytest
from psycopg.rows import dict_row

from pubctl.feed import read
from pubctl.projection import question_items, topic_items

from support.cli import pubctl_executable
from support.db import Database


def reference_state(db: Database) -> dict[tuple[str, int], Any]:
    items: dict[tuple[str, int], Any] = {}
    with db.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
        for row in cur.execute("SELECT * FROM study_topic"):
            items.update({(i.kind, i.source_id): i.payload for i in topic_items(row) if i.payload})
        for row in cur.execute("SELECT * FROM study_question"):
            items.update(
                {(i.kind, i.source_id): i.payload for i in question_items(row) if i.payload}
            )
    return items


class Reader:
    """A viewer polling the feed with its cursor, as docs/viewer.md describes."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.cursor = 0
        self.state: dict[tuple[str, int], Any] = {}
        self.revs: list[int] = []

    def poll(self) -> None:
        with self.db.connect() as conn:
            for line in read(conn, self.cursor):
                row = json.loads(line)
                self.revs.append(row["rev"])
                self.cursor = row["rev"]
                key = (row["kind"], row["source_id"])
                if row["deleted"]:
                    self.state.pop(key, None)
                else:
                    self.state[key] = row["payload"]


def writer(db: Database, seed: int, stop: threading.Event, errors: list[BaseException]) -> None:
    rng = random.Random(seed)
    try:
        with db.connect() as conn:
            while not stop.is_set():
                qid = rng.randint(1, 60)
                action = rng.random()
                if action < 0.35:
                    conn.execute(
                        "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status)"
                        " VALUES (%s, 1, %s, '[\"a\"]', 'e', %s) ON CONFLICT (id) DO UPDATE"
                        " SET body = EXCLUDED.body, deleted_at = NULL",
                        (qid, f"b{rng.random()}", rng.choice(["ready", "draft"])),
                    )
                elif action < 0.6:
                    conn.execute(
                        "UPDATE study_question SET body = %s WHERE id = %s",
                        (f"u{rng.random()}", qid),
                    )
                elif action < 0.7:
                    conn.execute(
                        "UPDATE study_question SET updated_at = now() WHERE id = %s", (qid,)
                    )
                elif action < 0.8:
                    conn.execute(
                        "UPDATE study_question SET deleted_at = now() WHERE id = %s", (qid,)
                    )
                elif action < 0.9:
                    conn.execute(
                        "UPDATE study_question SET explanation_status = %s, explanation = %s WHERE id = %s",
                        (rng.choice(["ready", "review"]), f"x{rng.random()}", qid),
                    )
                else:
                    with conn.transaction():
                        conn.execute(
                            "UPDATE study_question SET body = body || '+' WHERE id = %s", (qid,)
                        )
                        conn.execute(
                            "UPDATE study_question SET body = body || '-' WHERE id = %s", (qid,)
                        )
                        if rng.random() < 0.3:
                            conn.execute("DELETE FROM study_question WHERE id = %s", (qid,))
    except BaseException as exc:  # pragma: no cover - reported by the test
        errors.append(exc)


def test_writers_worker_and_reader_agree(pub_db: Database) -> None:
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
    worker = subprocess.Popen(
        [
            pubctl_executable(),
            "--database-url",
            pub_db.url,
            "worker",
            "--poll-interval",
            "0.2",
            "--batch-size",
            "50",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stop = threading.Event()
    errors: list[BaseException] = []
    threads = [threading.Thread(target=writer, args=(pub_db, n, stop, errors)) for n in range(4)]
    reader = Reader(pub_db)
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            reader.poll()
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with pub_db.connect() as conn:
                backlog = conn.execute("SELECT count(*) FROM pub.outbox").fetchone()
            if backlog == (0,):
                break
            time.sleep(0.1)
        reader.poll()
    finally:
        worker.send_signal(signal.SIGTERM)
        _out, err = worker.communicate(timeout=15)
    assert worker.returncode == 0, err
    assert reader.revs == sorted(set(reader.revs)), "revs arrive in order, never twice"
    assert reader.state == reference_state(pub_db)


def test_worker_survives_a_database_restart(pub_db: Database) -> None:
    pg = pub_db.server.throwaway
    if pg is None:
        pytest.skip("needs the throwaway server, which the test can restart")
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
    worker = subprocess.Popen(
        [pubctl_executable(), "--database-url", pub_db.url, "worker", "--poll-interval", "0.2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        pg.restart()
        with pub_db.connect() as conn:
            conn.execute("UPDATE study_topic SET name = 'after restart'")
        deadline = time.monotonic() + 30
        published: Any = None
        while time.monotonic() < deadline:
            with pub_db.connect() as conn:
                published = conn.execute(
                    "SELECT payload->>'name' FROM pub.content WHERE kind = 'topic'"
                ).fetchone()
            if published == ("after restart",):
                break
            time.sleep(0.1)
        assert published == ("after restart",)
    finally:
        worker.send_signal(signal.SIGTERM)
        _out, err = worker.communicate(timeout=15)
    assert worker.returncode == 0, err
    assert "lost the database" in err and "reconnected after" in err
    assert err.count("lost the database") == 1, "one line per outage, not one per retry"
