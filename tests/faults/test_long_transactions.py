"""A session left idle in transaction must not stall anyone else's publishing, and the
lag it causes must show in `pubctl status`."""

from __future__ import annotations

import json
import threading
import time

import pytest

from pubctl.feed import read

from support.cli import run_inprocess
from support.db import Database


def apply_within(db: Database, seconds: float) -> None:
    """Drain the outbox; fail if that takes longer than ``seconds`` (i.e. it waits)."""
    done = threading.Event()
    errors: list[BaseException] = []

    def drain() -> None:
        try:
            with db.connect() as conn:
                while conn.execute("SELECT consumed FROM pub.apply_batch(1000)").fetchone() != (0,):
                    pass
        except BaseException as exc:
            errors.append(exc)
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    assert done.wait(seconds), "apply waited for an unrelated open transaction"
    assert not errors, errors


def status(capsys: pytest.CaptureFixture[str], db: Database) -> dict[str, object]:
    result = run_inprocess(capsys, "--database-url", db.url, "status", "--json")
    assert result.code == 0, result
    report: dict[str, object] = json.loads(result.out)
    return report


def test_idle_in_transaction_writer_delays_only_its_own_rows(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation_status)"
            " SELECT g, 1, 'v1', '[]', 'draft' FROM generate_series(1, 3) g"
        )
    apply_within(pub_db, 10)
    with pub_db.connect() as conn:
        cursor = conn.execute("SELECT last_rev FROM pub.rev_counter").fetchone()[0]  # type: ignore[index]

    with pub_db.connect(autocommit=False) as idle, pub_db.connect() as other:
        idle.execute("UPDATE study_question SET body = 'slow' WHERE id = 1")
        idle.execute("SELECT 1 FROM study_question WHERE id = 3 FOR UPDATE")  # a row lock too
        time.sleep(1.0)  # ... and the session goes idle in transaction
        other.execute("SET lock_timeout = '5s'")  # a regression fails instead of hanging
        other.execute("UPDATE study_question SET body = 'fast' WHERE id = 2")
        other.execute("UPDATE study_topic SET name = 'Anatomy II' WHERE id = 1")
        apply_within(pub_db, 5)

        report = status(capsys, pub_db)
        assert report["open_writers"] == 1
        assert float(report["oldest_open_writer_age_s"]) >= 1.0  # type: ignore[arg-type]
        assert (
            "1 open transaction writing the outbox"
            in run_inprocess(capsys, "--database-url", pub_db.url, "status").out
        )
        with pub_db.connect() as conn:
            fast = [json.loads(line) for line in read(conn, cursor)]
        assert {(c["kind"], c["source_id"]) for c in fast} == {("question", 2), ("topic", 1)}

        idle.commit()

    # The late rows carry their transaction's start time: the lag is visible at once.
    report = status(capsys, pub_db)
    assert report["open_writers"] == 0
    assert report["outbox_backlog"] == 1
    assert float(report["outbox_oldest_age_s"]) >= 1.0  # type: ignore[arg-type]

    apply_within(pub_db, 5)
    with pub_db.connect() as conn:
        late = [json.loads(line) for line in read(conn, max(c["rev"] for c in fast))]
    assert [(c["kind"], c["source_id"], c["payload"]["body"]) for c in late] == [
        ("question", 1, "slow")
    ], "a reader past the fast changes still receives the late one"
