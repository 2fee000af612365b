"""`pubctl apply`, `feed`, `worker` and `status` as a user runs them."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import pytest

from support.cli import run_inprocess, run_subprocess, spawn
from support.db import Database
from support.workload import reference_state


def seed(db: Database, questions: int = 3) -> None:
    with db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status)"
            " SELECT g, 1, 'Q' || g, '[\"a\",\"b\"]', 'why ' || g,"
            " CASE WHEN g %% 2 = 0 THEN 'ready' ELSE 'draft' END FROM generate_series(1, %s) g",
            (questions,),
        )


def feed_lines(
    capsys: pytest.CaptureFixture[str], db: Database, *args: str
) -> list[dict[str, Any]]:
    result = run_inprocess(capsys, "--database-url", db.url, "feed", *args)
    assert result.code == 0, result
    return [json.loads(line) for line in result.out.splitlines()]


def replay(lines: list[dict[str, Any]]) -> dict[tuple[str, int], Any]:
    """A viewer's state after reading the feed from rev 0."""
    state: dict[tuple[str, int], Any] = {}
    for line in lines:
        key = (line["kind"], line["source_id"])
        if line["deleted"]:
            state.pop(key, None)
        else:
            state[key] = line["payload"]
    return state


def test_apply_then_feed(capsys: pytest.CaptureFixture[str], pub_db: Database) -> None:
    seed(pub_db, 4)
    result = run_inprocess(capsys, "--database-url", pub_db.url, "apply", "--batch-size", "3")
    assert result.code == 0
    assert (
        "3 batches, 7 outbox rows consumed: 7 items changed, 0 unchanged, 0 dropped" in result.out
    )
    lines = feed_lines(capsys, pub_db)
    assert [line["rev"] for line in lines] == list(range(1, 8))
    assert list(lines[0]) == [
        "rev",
        "kind",
        "pub_id",
        "source_id",
        "payload",
        "payload_hash",
        "schema_version",
        "deleted",
    ]
    assert isinstance(lines[0]["pub_id"], str)
    assert replay(lines) == reference_state(pub_db)
    assert [line["rev"] for line in feed_lines(capsys, pub_db, "--after", "5")] == [6, 7]
    assert len(feed_lines(capsys, pub_db, "--limit", "2")) == 2
    kinds = {
        line["kind"]
        for line in feed_lines(capsys, pub_db, "--kind", "explanation", "--kind", "topic")
    }
    assert kinds == {"explanation", "topic"}


@pytest.mark.parametrize(
    "args",
    [
        ["apply", "--batch-size", "0"],
        ["apply", "--batch-size", "-5"],
        ["apply", "--batch-size", "x"],
        ["feed", "--kind", "quiz"],
        ["feed", "--after", "-1"],
        ["feed", "--limit", "many"],
        ["worker", "--poll-interval", "0"],
    ],
)
def test_bad_options_exit_2(
    capsys: pytest.CaptureFixture[str], pub_db: Database, args: list[str]
) -> None:
    seed(pub_db, 1)
    result = run_inprocess(capsys, "--database-url", pub_db.url, *args)
    assert result.code == 2
    with pub_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pub.content").fetchone() == (0,), (
            "nothing written"
        )


@pytest.mark.parametrize("command", ["apply", "feed", "worker"])
def test_unmigrated_database_names_migrate(app_db: Database, command: str) -> None:
    result = run_subprocess("--database-url", app_db.url, command, timeout=30)
    assert result.code == 3
    assert "pubctl migrate" in result.err


def test_status_reports_backlog_revs_and_disabled_capture(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    seed(pub_db, 2)
    report = json.loads(run_inprocess(capsys, "--database-url", pub_db.url, "status", "--json").out)
    assert report["outbox_backlog"] == 4 and report["last_rev"] == 0 and report["capture_ok"]
    run_inprocess(capsys, "--database-url", pub_db.url, "apply")
    with pub_db.connect() as conn:
        conn.execute("ALTER TABLE study_question DISABLE TRIGGER pub_capture_update")
    report = json.loads(run_inprocess(capsys, "--database-url", pub_db.url, "status", "--json").out)
    assert report["outbox_backlog"] == 0 and report["last_rev"] == 4
    assert report["items"]["question"] == {"live": 2, "tombstones": 0}
    assert report["capture_problems"] == [
        {"subject": "study_question.pub_capture_update", "problem": "disabled"}
    ]
    assert report["capture_ok"] is False
    text = run_inprocess(capsys, "--database-url", pub_db.url, "status").out
    assert "NOT CAPTURING: study_question.pub_capture_update: disabled" in text


def start_worker(db: Database, *extra: str) -> subprocess.Popen[str]:
    return spawn(db.url, "worker", "--poll-interval", "0.5", *extra, stderr=subprocess.PIPE)


def stop_worker(worker: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str]:
    """Signal the worker and collect its exit code and log."""
    if worker.poll() is None:
        worker.send_signal(sig)
    try:
        _out, err = worker.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        worker.kill()
        _out, err = worker.communicate()
    return worker.returncode, err


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def last_rev(db: Database) -> int:
    with db.connect() as conn:
        row = conn.execute("SELECT last_rev FROM pub.rev_counter").fetchone()
        return int(row[0]) if row else 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_worker_applies_on_notify_and_stops_cleanly(pub_db: Database, sig: signal.Signals) -> None:
    worker = start_worker(pub_db, "-v")
    try:
        wait_for(lambda: _workers(pub_db) == 1)
        seed(pub_db, 2)
        wait_for(lambda: last_rev(pub_db) == 4, timeout=5)
        with pub_db.connect() as conn:
            conn.execute("UPDATE study_topic SET name = 'renamed'")
        wait_for(lambda: last_rev(pub_db) == 5, timeout=5)
        started = time.monotonic()
        code, err = stop_worker(worker, sig)
        assert code == 0
        assert time.monotonic() - started < 5
        assert "worker stopped" in err and "batch:" in err
    finally:
        stop_worker(worker, signal.SIGKILL)


def test_status_counts_every_running_worker(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    workers = [start_worker(pub_db), start_worker(pub_db)]
    try:
        wait_for(lambda: _workers(pub_db) == 2)
        report = json.loads(
            run_inprocess(capsys, "--database-url", pub_db.url, "status", "--json").out
        )
        assert report["workers_running"] == 2
    finally:
        for worker in workers:
            assert stop_worker(worker)[0] == 0


def _workers(db: Database) -> int:
    with db.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pub.lock_holders('worker') WHERE granted"
        ).fetchone()
        return int(row[0]) if row else 0


def test_sigkill_mid_batch_loses_and_duplicates_nothing(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    seed(pub_db, 20000)  # 30,001 outbox rows
    worker = start_worker(pub_db, "--batch-size", "500")
    wait_for(lambda: last_rev(pub_db) > 0, timeout=30)
    stop_worker(worker, signal.SIGKILL)
    partial = last_rev(pub_db)
    with pub_db.connect() as conn:
        conn.execute("UPDATE study_question SET body = body || '!' WHERE id % 1000 = 0")
    worker = start_worker(pub_db, "--batch-size", "500")
    try:
        wait_for(lambda: _backlog(pub_db) == 0, timeout=60)
    finally:
        code, _err = stop_worker(worker)
    assert code == 0
    lines = feed_lines(capsys, pub_db)
    revs = [line["rev"] for line in lines]
    assert revs == sorted(set(revs)), "no duplicated or reordered revs"
    assert len(lines) == len({(line["kind"], line["source_id"]) for line in lines}), (
        "one row per item"
    )
    assert replay(lines) == reference_state(pub_db)
    assert partial < last_rev(pub_db) == 30001 + 20, "each change got exactly one rev"


def _backlog(db: Database) -> int:
    with db.connect() as conn:
        row = conn.execute("SELECT count(*) FROM pub.outbox").fetchone()
        return int(row[0]) if row else 0


def test_feed_follow_tails_new_changes(pub_db: Database) -> None:
    seed(pub_db, 1)
    run_subprocess("--database-url", pub_db.url, "apply")
    follower = spawn(
        pub_db.url,
        "feed",
        "--follow",
        "--after",
        "1",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(0.5)
        with pub_db.connect() as conn:
            conn.execute("UPDATE study_topic SET name = 'followed'")
        run_subprocess("--database-url", pub_db.url, "apply")
        assert follower.stdout is not None
        lines = [json.loads(follower.stdout.readline()) for _ in range(2)]
        assert [line["rev"] for line in lines] == [2, 3]
        assert lines[1]["payload"]["name"] == "followed"
    finally:
        follower.send_signal(signal.SIGTERM)
        _out, err = follower.communicate(timeout=10)
    assert follower.returncode == 0, err


def test_outbox_does_not_bloat(pub_db: Database) -> None:
    seed(pub_db, 30000)
    with pub_db.connect() as conn:
        filled = conn.execute("SELECT pg_total_relation_size('pub.outbox')").fetchone()
        while conn.execute("SELECT consumed FROM pub.apply_batch(5000)").fetchone() != (0,):
            pass
        conn.execute("VACUUM pub.outbox")
        emptied = conn.execute("SELECT pg_total_relation_size('pub.outbox')").fetchone()
    assert filled is not None and emptied is not None
    assert filled[0] > 10_000_000
    assert emptied[0] < filled[0] / 10, (filled, emptied)
