"""Real concurrent connections: writers, a worker, a feed reader; a database restart."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any

import pytest

from pubctl import status

from support.cli import spawn
from support.db import Database
from support.workload import (
    Reader,
    Writers,
    install_churn_audit,
    reference_state,
    unchanged_revs,
)


def test_writers_worker_and_reader_agree(pub_db: Database) -> None:
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
    worker = spawn(
        pub_db.url, "worker", "--poll-interval", "0.2", "--batch-size", "50", stderr=subprocess.PIPE
    )
    install_churn_audit(pub_db)
    reader = Reader(pub_db)
    try:
        with Writers(pub_db, 4, seed=1, max_id=60) as writers:
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                reader.poll()
                time.sleep(0.05)
        assert not writers.errors, writers.errors
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
    assert unchanged_revs(pub_db) == 0, "no rev for a change that changes nothing"
    assert reader.state == reference_state(pub_db)


def test_worker_survives_a_database_restart(pub_db: Database) -> None:
    pg = pub_db.server.throwaway
    if pg is None:
        pytest.skip("needs the throwaway server, which the test can restart")
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
    worker = spawn(pub_db.url, "worker", "--poll-interval", "0.2", stderr=subprocess.PIPE)
    try:
        with pub_db.connect() as conn:
            deadline = time.monotonic() + 20
            while conn.execute("SELECT count(*) FROM pub.content").fetchone() != (1,):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        time.sleep(1.0)
        pg.restart()
        # Nothing applied since before the outage: status shows how long ago that was.
        gap = status.collect(pub_db.url)["last_published_age_s"]
        assert gap is not None and gap >= 1.0
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
