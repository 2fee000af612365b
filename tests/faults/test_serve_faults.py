"""`pubctl serve` under faults and load: the database going away and coming back,
SIGTERM while long-polls are held, hundreds of long-polls on one listening connection,
and a viewer process following the feed through writes, backfills and applier
restarts."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import conninfo

from support import rawhttp
from support.cli import spawn
from support.db import Database
from support.serve import (
    Served,
    publish,
    reader_url,
    serve_connections,
    terminate_serve_backends,
    wait_until,
)
from support.workload import Writers

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "http_viewer.py"


def _set_connections_allowed(db: Database, allowed: bool) -> None:
    name = conninfo.conninfo_to_dict(db.url)["dbname"]
    with psycopg.connect(db.server.url(db.server.maintenance_dbname), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')


def _metric(served: Served, name: str, token: str = "") -> float:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for line in httpx.get(served.url("/metrics"), headers=headers, timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_health_follows_the_database_and_long_polls_survive_its_outage(pub_db: Database) -> None:
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'before')")
        conn.execute("SELECT pub.apply_batch(100)")
    with Served(reader_url(pub_db), "--pool-timeout", "0.5") as served, pub_db.connect() as writer:
        assert httpx.get(served.url("/healthz")).json()["status"] == "ok"
        held: list[httpx.Response] = []
        poll = threading.Thread(
            target=lambda: held.append(
                httpx.get(served.url("/published/feed?after=1&wait=30"), timeout=60)
            )
        )
        poll.start()
        wait_until(lambda: _metric(served, "pubctl_serve_waiting_long_polls") == 1)

        _set_connections_allowed(pub_db, False)
        terminate_serve_backends(pub_db)
        down = httpx.get(served.url("/healthz"), timeout=30)
        assert down.status_code == 503 and down.headers["retry-after"]
        assert down.json()["status"] != "ok" and down.json()["reason"]
        feed = httpx.get(served.url("/published/feed"), timeout=30)
        assert feed.status_code == 503 and feed.headers["retry-after"]
        assert "Traceback" not in down.text + feed.text
        # Published while the listener is away: its notification is lost.
        writer.execute("UPDATE study_topic SET name = 'during the outage' WHERE id = 1")
        writer.execute("SELECT pub.apply_batch(100)")
        assert not held, "the long-poll is still held"

        _set_connections_allowed(pub_db, True)
        back = wait_until(
            lambda: httpx.get(served.url("/healthz"), timeout=30).status_code == 200, timeout=30
        )
        assert back, served.log
        poll.join(30)
        # The listener, back, woke every waiter to re-read: the missed change arrives.
        assert held and held[0].status_code == 200
        assert [i["payload"]["name"] for i in held[0].json()["items"]] == ["during the outage"]
    assert "listener lost the database" in served.log
    assert "listener reconnected" in served.log
    assert "Traceback" not in served.log


def test_sigterm_answers_held_long_polls_and_exits_0(pub_db: Database) -> None:
    served = Served(reader_url(pub_db))
    answers: list[tuple[int, Any]] = []

    def poll() -> None:
        response = httpx.get(served.url("/published/feed?wait=60"), timeout=60)
        answers.append((response.status_code, response.json()))

    threads = [threading.Thread(target=poll) for _ in range(20)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: _metric(served, "pubctl_serve_waiting_long_polls") == 20)
    start = time.monotonic()
    assert served.stop(signal.SIGTERM) == 0
    stopped = time.monotonic() - start
    for thread in threads:
        thread.join(10)
    assert stopped < 5, stopped
    assert len(answers) == 20
    assert all(code == 200 and body["items"] == [] for code, body in answers), answers
    assert "stopped (SIGTERM)" in served.log


async def _hold_many(base: str, count: int, after: int) -> list[tuple[int, Any, float]]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    answers = await asyncio.gather(
        *(
            rawhttp.get(host, int(port), f"/published/feed?after={after}&wait=30")
            for _ in range(count)
        )
    )
    return [(status, json.loads(body), at) for status, _headers, body, at in answers]


def test_500_long_polls_share_one_listening_connection(pub_db: Database) -> None:
    """Held by a minimal asyncio client: httpx's pool bookkeeping grows with its open
    connections, and with 500 of them the client, not the server, is what is timed."""
    count, pool_size = 500, 4
    with Served(reader_url(pub_db), "--pool-size", str(pool_size)) as served:
        results: list[Any] = []
        runner = threading.Thread(
            target=lambda: results.extend(asyncio.run(_hold_many(served.base, count, 0)))
        )
        runner.start()
        assert wait_until(
            lambda: _metric(served, "pubctl_serve_waiting_long_polls") == count, timeout=60
        ), served.log
        held_with = serve_connections(pub_db)
        assert held_with <= pool_size + 2, held_with  # the pool, the listener, health
        publish(pub_db, "INSERT INTO study_topic (id, name) VALUES (1, 'wake up')")
        written = time.monotonic()
        runner.join(60)
        assert len(results) == count
        assert all(
            code == 200 and [i["rev"] for i in body["items"]] == [1] for code, body, _ in results
        )
        last = max(at for _, _, at in results) - written
        assert last < 2.5, last
        assert serve_connections(pub_db) <= pool_size + 2


def _pubctl_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PUBCTL_DATABASE_URL", "DATABASE_URL")}


def test_viewer_follows_writes_backfills_and_applier_restarts(
    pub_db: Database, tmp_path: Path
) -> None:
    with pub_db.connect() as conn:
        conn.execute(
            "INSERT INTO study_topic (id, name) SELECT g, 't' || g FROM generate_series(1, 3) g"
        )
        conn.execute("SELECT pub.apply_batch(100)")
    copy_file, stop_file = tmp_path / "copy.json", tmp_path / "stop"
    with Served(reader_url(pub_db), env={"PUBCTL_FEED_TOKENS": "viewer-token"}) as served:
        viewer = subprocess.Popen(
            [sys.executable, str(EXAMPLE), served.base, "--token", "viewer-token",
             "--follow-until", str(stop_file), "--save", str(copy_file), "--page", "50", "--wait", "1"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        worker = spawn(pub_db.url, "worker", "--poll-interval", "0.2", env=_pubctl_env())
        try:
            with Writers(pub_db, count=2, seed=7, max_id=60, pause_s=0.002) as writers:
                time.sleep(1.5)
                worker.send_signal(signal.SIGKILL)
                worker.wait(10)
                with pub_db.connect() as conn:
                    conn.execute("UPDATE study_topic SET name = name || ' (while no applier)'")
                backfill = spawn(
                    pub_db.url, "backfill", "all", "--batch-size", "20", env=_pubctl_env()
                )
                assert backfill.wait(60) == 0
                worker = spawn(pub_db.url, "worker", "--poll-interval", "0.2", env=_pubctl_env())
                time.sleep(1.5)
            assert not writers.errors, writers.errors
            assert writers.writes > 50
            with pub_db.connect() as conn:
                conn.execute("SELECT pub.apply_batch(100000)")  # whatever the worker has left
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(10)
        with pub_db.connect() as conn:
            last_rev = conn.execute("SELECT last_rev FROM pub.rev_counter").fetchone()[0]
            content = {
                f"{kind}/{source_id}": payload
                for kind, source_id, payload in conn.execute(
                    "SELECT kind, source_id, payload FROM pub.content WHERE NOT deleted"
                )
            }
        assert wait_until(
            lambda: _metric(served, "pubctl_serve_last_rev_served", "viewer-token") >= last_rev,
            timeout=15,
        )
        stop_file.write_text("")
        _out, err = viewer.communicate(timeout=60)
    assert viewer.returncode == 0, err
    saved = json.loads(copy_file.read_text())
    assert saved["cursor"] == last_rev
    assert saved["items"] == content


def _series(served: Served, series: str) -> float:
    """One series of /metrics, labels included (``name{label="v"}``)."""
    for line in httpx.get(served.url("/metrics"), timeout=10).text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    raise AssertionError(f"no series {series}")


def _queries(served: Served, purpose: str) -> float:
    return _series(served, f'pubctl_serve_database_queries_total{{purpose="{purpose}"}}')


def _raise_open_files(needed: int) -> None:
    """The client here and the server it spawns each hold one socket per long-poll."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        top = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
        assert top >= needed, f"open files limited to {hard}"


class Crowd:
    """Long-polls held from a thread of their own (raw HTTP over asyncio), opened at
    once; ``answers`` fills in as they are answered."""

    def __init__(self, base: str, targets: list[str]) -> None:
        self.host, self.port = rawhttp.host_port(base)
        self.targets = targets
        self.answers: list[tuple[int, Any, float]] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()))
        self.thread.start()

    async def _one(self, target: str) -> None:
        try:
            status, _fields, body, at = await rawhttp.get(self.host, self.port, target)
        except Exception as exc:  # kept for the test to report
            self.errors.append(exc)
            return
        self.answers.append((status, json.loads(body) if body else None, at))

    async def _run(self) -> None:
        await asyncio.gather(*(self._one(target) for target in self.targets))

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "long-polls still held"
        assert not self.errors, self.errors[:3]


def _head_known(served: Served) -> None:
    """The server has read the head once (its listener connected and asked)."""
    assert wait_until(lambda: _queries(served, "head") >= 1), served.log


def test_healthz_answers_within_a_second_while_4000_long_polls_are_opened(
    pub_db: Database,
) -> None:
    """4,000 long-polls opened at once (a crowd reconnecting: a few distinct questions)
    on a pool of 2: /healthz, on its own connection, answers 200 within a second while
    they are opened and while they are held."""
    count = 4000
    _raise_open_files(2 * count + 1000)
    publish(pub_db, "INSERT INTO study_topic (id, name) VALUES (1, 'one')")
    with Served(reader_url(pub_db), "--pool-size", "2", "--pool-timeout", "60") as served:
        _head_known(served)
        host, port = rawhttp.host_port(served.base)

        def held() -> int:
            status, body = rawhttp.get_blocking(host, port, "/metrics")
            for line in body.decode().splitlines():
                if line.startswith("pubctl_serve_waiting_long_polls "):
                    return int(float(line.split()[1]))
            raise AssertionError(status)

        crowd = Crowd(
            served.base, [f"/published/feed?after={1 + i % 4}&wait=30" for i in range(count)]
        )
        took: list[tuple[float, int]] = []
        all_held_at = None
        while all_held_at is None or len(took) < all_held_at + 5:  # during, then after
            if all_held_at is None and held() == count:
                all_held_at = len(took)
            start = time.monotonic()
            status, _body = rawhttp.get_blocking(host, port, "/healthz")
            took.append((time.monotonic() - start, status))
            assert len(took) < 3000, "the long-polls were never all held"
            time.sleep(0.02)
        assert all(status == 200 for _, status in took), took
        assert max(t for t, _ in took) < 1.0, sorted(took)[-5:]
        assert all_held_at and all_held_at >= 5, "measured while the long-polls were opened"
        assert not crowd.answers, "held: nothing is newer"
        assert serve_connections(pub_db) <= 2 + 2, "the pool, the listener, health"
        assert served.stop(signal.SIGTERM) == 0
        crowd.join(30)
    assert len(crowd.answers) == count
    assert all(status == 200 and body["items"] == [] for status, body, _ in crowd.answers)


def test_a_crowd_reconnecting_at_once_costs_one_query_per_distinct_question(
    pub_db: Database,
) -> None:
    publish(pub_db, "INSERT INTO study_topic (id, name) VALUES (1, 'one')")
    with Served(reader_url(pub_db), "--pool-size", "4") as served:
        _head_known(served)
        questions = ["after=1", "after=1&kind=topic", "after=1&kind=question&kind=explanation"]
        each = 300
        before = _queries(served, "feed")
        crowd = Crowd(
            served.base, [f"/published/feed?{q}&wait=30" for q in questions for _ in range(each)]
        )
        assert wait_until(
            lambda: _metric(served, "pubctl_serve_waiting_long_polls") == each * len(questions),
            timeout=30,
        )
        first_reads = _queries(served, "feed") - before
        # One per question; a crowd arriving over more than a second may cost one more.
        assert len(questions) <= first_reads <= 2 * len(questions), first_reads
        before = _queries(served, "feed")
        publish(pub_db, "UPDATE study_topic SET name = 'two' WHERE id = 1")
        written = time.monotonic()
        assert wait_until(lambda: len(crowd.answers) == 2 * each, timeout=10)
        assert max(at for _, _, at in crowd.answers) - written < 1.0
        assert all(
            status == 200 and [i["payload"]["name"] for i in body["items"]] == ["two"]
            for status, body, _ in crowd.answers
        )
        # Woken together: one re-read per question (the question/explanation crowd
        # finds nothing and stays held).
        rereads = _queries(served, "feed") - before
        assert rereads <= len(questions), rereads
        time.sleep(0.3)
        assert len(crowd.answers) == 2 * each
        assert _metric(served, "pubctl_serve_waiting_long_polls") == each
        assert served.stop(signal.SIGTERM) == 0
        crowd.join(30)
    assert len(crowd.answers) == each * len(questions)


FORGED = ["999999999", "9" * 300, "-1", "0", "", "not a number", "1e9", '{"rev": 5}', "NaN"]


def test_forged_notifications_are_hints_and_never_answer_a_long_poll(pub_db: Database) -> None:
    """Any role that may connect can NOTIFY pubctl_published with any payload. A burst of
    them, while 50 long-polls are held, costs a few re-reads of the head (at most one
    per 0.1 s) and no feed query, and answers nobody; a real publish still wakes all."""
    publish(pub_db, "INSERT INTO study_topic (id, name) VALUES (1, 'one')")
    url = reader_url(pub_db)
    count = 50
    with Served(url, "--pool-size", "4") as served:
        _head_known(served)
        crowd = Crowd(served.base, ["/published/feed?after=1&wait=30" for _ in range(count)])
        assert wait_until(lambda: _metric(served, "pubctl_serve_waiting_long_polls") == count)
        feed, head = _queries(served, "feed"), _queries(served, "head")
        notes = _metric(served, "pubctl_serve_notifications_total")
        sent = 0
        start = time.monotonic()
        # As the feed reader: it holds no right but to read the feed.
        with psycopg.connect(url, autocommit=True) as forger:
            for i in range(400):
                forger.execute(
                    "SELECT pg_notify('pubctl_published', %s)", (FORGED[i % len(FORGED)],)
                )
                sent += 1
                if i % 40 == 0:
                    time.sleep(0.05)
            with forger.transaction():  # distinct payloads: none folded into another
                for i in range(200):
                    forger.execute("SELECT pg_notify('pubctl_published', %s)", (f"{10**9 + i}",))
                    sent += 1
        burst = time.monotonic() - start
        assert wait_until(
            lambda: _metric(served, "pubctl_serve_notifications_total") - notes >= sent
        ), "every notification arrived"
        time.sleep(0.5)  # the last re-read, after the last notification
        spent = time.monotonic() - start
        assert _queries(served, "feed") - feed == 0, "nobody re-read the feed"
        rereads = _queries(served, "head") - head
        assert 1 <= rereads <= spent / 0.1 + 2, (rereads, spent, burst)
        assert not crowd.answers, "nobody was answered early"
        assert _metric(served, "pubctl_serve_waiting_long_polls") == count

        # A real publish while forged notifications keep streaming in wakes them all.
        streaming = threading.Event()
        stop = threading.Event()

        def stream() -> None:
            with psycopg.connect(url, autocommit=True) as forger:
                while not stop.is_set():
                    forger.execute("SELECT pg_notify('pubctl_published', '99999999999')")
                    streaming.set()
                    time.sleep(0.001)

        forging = threading.Thread(target=stream)
        forging.start()
        try:
            assert streaming.wait(10)
            time.sleep(0.3)
            publish(pub_db, "UPDATE study_topic SET name = 'real' WHERE id = 1")
            written = time.monotonic()
            crowd.join(10)
        finally:
            stop.set()
            forging.join(10)
        assert max(at for _, _, at in crowd.answers) - written < 1.0
        assert all(
            status == 200 and [i["payload"]["name"] for i in body["items"]] == ["real"]
            for status, body, _ in crowd.answers
        )
        assert _queries(served, "feed") - feed == 1, "woken together: one shared re-read"
    assert "Traceback" not in served.log
