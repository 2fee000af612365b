"""`pubctl worker` and `pubctl feed --follow` when the published state is dropped (or
dropped and installed again) under them: a message naming what happened and what to do,
exit 3."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import pytest

from support.cli import run_subprocess, spawn
from support.db import Database


def _wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def _published(db: Database) -> int:
    with db.connect() as conn:
        row = conn.execute("SELECT count(*) FROM pub.content").fetchone()
        return int(row[0]) if row else 0


def _finish(proc: subprocess.Popen[str], timeout: float = 15.0) -> tuple[int, str]:
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        _out, err = proc.communicate()
        raise AssertionError(f"still running after the state was dropped: {err}") from None
    return proc.returncode, err


def _drop(db: Database, reinstall: bool, proc: subprocess.Popen[str]) -> None:
    """Drop the published state (and install it again); the process under test is
    paused meanwhile, so that it sees either state, never the moment in between."""
    if reinstall:
        proc.send_signal(signal.SIGSTOP)
    try:
        _migrate(db, reinstall)
    finally:
        proc.send_signal(signal.SIGCONT)


def _migrate(db: Database, reinstall: bool) -> None:
    result = run_subprocess(
        "--database-url", db.url, "migrate", "--revision", "base", "--drop-published-state"
    )
    assert result.code == 0, result
    if reinstall:
        result = run_subprocess("--database-url", db.url, "migrate")
        assert result.code == 0, result


@pytest.mark.parametrize("reinstall", [False, True], ids=["dropped", "replaced"])
def test_worker_says_the_published_state_went_away_and_exits_3(
    pub_db: Database, reinstall: bool
) -> None:
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
    worker = spawn(pub_db.url, "worker", "--poll-interval", "0.2", stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: _published(pub_db) == 1)
        _drop(pub_db, reinstall, worker)
        code, err = _finish(worker)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert code == 3, err
    last = err.strip().splitlines()[-1]
    assert "OID" not in err and "3F000" not in err, err
    assert ("replaced" if reinstall else "removed") in last, last
    assert "pubctl migrate" in last and "restart" in last, last
    assert "Traceback" not in err


@pytest.mark.parametrize("reinstall", [False, True], ids=["dropped", "replaced"])
def test_feed_follow_says_the_published_state_went_away_and_exits_3(
    pub_db: Database, reinstall: bool
) -> None:
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
    assert run_subprocess("--database-url", pub_db.url, "apply").code == 0
    follower = spawn(
        pub_db.url,
        "feed",
        "--follow",
        "--poll-interval",
        "0.2",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert follower.stdout is not None
        assert json.loads(follower.stdout.readline())["rev"] == 1
        _drop(pub_db, reinstall, follower)
        code, err = _finish(follower)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert code == 3, err
    last = err.strip().splitlines()[-1]
    assert "OID" not in err and "3F000" not in err, err
    assert ("replaced" if reinstall else "removed") in last, last
    assert "rev 0" in last or "--after 0" in last, last
    assert "Traceback" not in err
