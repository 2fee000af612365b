"""A real database outage under `pubctl worker` and `pubctl feed --follow`: the server is
stopped for a while, then started again on the same port and data directory. While it is
down both retry about every second; once it is back, a write made at once is applied and
printed within about two seconds.

PUBCTL_OUTAGE_SECONDS sets the outage (default 20 s, as an operator saw it; 5 is enough for a quick run).
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from typing import Any

import pytest

from pubctl.throwaway import ThrowawayPostgres, find_bindir

from support.cli import spawn
from support.db import Database

OUTAGE_S = float(os.environ.get("PUBCTL_OUTAGE_SECONDS", "20"))
CATCH_UP_S = 2.5  # "about 2 s": a reconnection attempt at most every second, plus slack


def _stop_server(pg: ThrowawayPostgres) -> None:
    proc = pg._proc
    assert proc is not None
    proc.send_signal(signal.SIGINT)
    proc.wait(30)


def _start_server(pg: ThrowawayPostgres) -> None:
    """Start again on the same data directory and port (as ThrowawayPostgres.restart)."""
    assert pg.base is not None
    started = pg._launch(
        find_bindir(), pg.base / "data", pg.base / "sock", pg._owner_ids(), pg.port
    )
    assert started, f"port {pg.port} was taken while the server was down"


class _Knocks:
    """Listens on the stopped server's port and counts the connection attempts (closing
    each at once): libpq may open a second socket for one attempt (without SSL), so
    sockets opened within 50 ms of each other count once."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.1)
        self.at: list[float] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.done.is_set():
            try:
                conn, _peer = self.sock.accept()
            except TimeoutError:
                continue
            self.at.append(time.monotonic())
            conn.close()

    def close(self) -> list[float]:
        self.done.set()
        self.thread.join(5)
        self.sock.close()
        attempts: list[float] = []
        for at in self.at:
            if not attempts or at - attempts[-1] > 0.05:
                attempts.append(at)
        return attempts


def _lines(stream: Any, into: queue.Queue[tuple[float, str]]) -> None:
    for line in stream:
        into.put((time.monotonic(), line))


def _content_name(db: Database) -> str | None:
    with db.connect() as conn:
        row = conn.execute(
            "SELECT payload->>'name' FROM pub.content WHERE kind = 'topic' AND source_id = 1"
        ).fetchone()
    return str(row[0]) if row else None


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return proc.returncode, err


def test_worker_and_follower_catch_up_within_2s_of_the_database_coming_back(
    pub_db: Database,
) -> None:
    pg = pub_db.server.throwaway
    if pg is None:
        pytest.skip("needs the throwaway server, which the test can stop and start")
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'before')")
    # The default poll interval (5 s): catching up must not depend on polling.
    worker = spawn(pub_db.url, "worker", stderr=subprocess.PIPE)
    follower = spawn(pub_db.url, "feed", "--follow", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    printed: queue.Queue[tuple[float, str]] = queue.Queue()
    assert follower.stdout is not None
    threading.Thread(target=_lines, args=(follower.stdout, printed), daemon=True).start()
    try:
        _at, first = printed.get(timeout=20)
        assert json.loads(first)["payload"]["name"] == "before"
        _stop_server(pg)
        knocks = _Knocks(pg.host, pg.port)
        time.sleep(OUTAGE_S)
        attempts = knocks.close()
        _start_server(pg)
        with pub_db.connect() as conn:
            conn.execute("UPDATE study_topic SET name = 'after' WHERE id = 1")
        written = time.monotonic()
        while _content_name(pub_db) != "after":
            assert time.monotonic() - written < 30, "the worker never caught up"
            time.sleep(0.02)
        applied_after = time.monotonic() - written
        at, line = printed.get(timeout=30)
        printed_after = at - written
        assert json.loads(line)["payload"]["name"] == "after"
        assert worker.poll() is None and follower.poll() is None
    finally:
        worker_code, worker_log = _finish(worker)
        follower_code, follower_log = _finish(follower)
        if pg._proc is None:
            _start_server(pg)
    print(f"outage {OUTAGE_S:.0f}s: applied {applied_after:.2f}s, printed {printed_after:.2f}s")
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    print(f"{len(attempts)} attempts, largest gap {max(gaps, default=0):.2f}s")
    # Two clients retrying every 0.5..1 s: about 2 * OUTAGE_S / 0.75 attempts (a backoff
    # doubling from 0.5 s makes 3 each in 5 s, 5 each in 20 s).
    assert len(attempts) >= 1.4 * OUTAGE_S, attempts
    assert len(attempts) <= 2 * (OUTAGE_S / 0.45 + 1), "retrying faster than about 1/s"
    assert max(gaps) <= 1.1, gaps
    assert applied_after < CATCH_UP_S, worker_log
    assert printed_after < CATCH_UP_S, follower_log
    assert worker_code == 0, worker_log
    assert follower_code == 0, follower_log
    for log in (worker_log, follower_log):
        assert log.count("lost the database") == 1, log
        assert log.count("reconnected after") == 1, log
    assert worker_log.count("worker started") == 1, "a reconnection is not a restart"
