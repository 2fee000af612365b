"""`pubctl serve` and `pubctl feed --follow` on a streaming hot standby, which cannot
LISTEN: long-polls and followers wake within a second or two of a change's replay,
`/healthz` reports the replica and its lag, many held long-polls cost no connection,
a follower keeps its reconnections and its end on a replaced state, and a promoted
standby switches to notifications. The roles and grants come over from the primary
like everything else: the standby's reader has exactly the primary's reader grants."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from support import rawhttp
from support.cli import run_subprocess, spawn
from support.db import Database, ServerInfo
from support.serve import Served, publish, reader_url, wait_until
from support.standby import Standby

POOL = 3
# serve's connections beyond its pool: the health/head connection and the one that
# listens on a primary and watches replay on a standby.
EXTRA_CONNECTIONS = 2
FILL = """
INSERT INTO study_topic (id, name) SELECT g, 'Topic ' || g FROM generate_series(1, 5) g;
SELECT pub.apply_batch(100000);
"""


@pytest.fixture(scope="module")
def primary_db(pub_template: Any, pg_server: ServerInfo) -> Iterator[Database]:
    """One database for the module, on the primary, with a few published topics."""
    if pg_server.throwaway is None:
        pytest.skip("needs the throwaway test server (a standby is made of it)")
    name = "pubctl_test_standby"
    admin_url = pg_server.url(pg_server.maintenance_dbname)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pub_template.template_dbname}"')
    db = Database(url=pg_server.url(name), server=pg_server)
    with db.connect() as conn:
        conn.execute(FILL.encode())
    yield db
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def standby(primary_db: Database) -> Iterator[Standby]:
    with Standby(primary_db.url) as made:
        yield made


@pytest.fixture(scope="module")
def standby_reader(primary_db: Database, standby: Standby) -> str:
    """The standby's URL for the primary's feed reader role, once it has come over."""
    url = reader_url(primary_db)
    standby.caught_up()
    return standby.url_for(url)


@pytest.fixture(scope="module")
def served(standby_reader: str) -> Iterator[Served]:
    with Served(standby_reader, "--pool-size", str(POOL)) as server:
        yield server


def _metric(server: Served, series: str) -> float:
    for line in httpx.get(server.url("/metrics"), timeout=10).text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in the metrics")


def _last_rev(db: Database) -> int:
    with db.connect() as conn:
        row = conn.execute("SELECT last_rev FROM pub.rev_counter").fetchone()
    assert row is not None
    return int(row[0])


def _sessions(standby: Standby, db: Database, application: str) -> int:
    """Sessions of ``db`` on the standby whose application_name is LIKE ``application``."""
    with psycopg.connect(standby.url_for(db.url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE %s",
            (application,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _serve_connections(standby: Standby, db: Database) -> int:
    return _sessions(standby, db, "pubctl serve%")


def test_healthz_reports_the_replica_and_its_lag(
    served: Served, primary_db: Database, standby: Standby
) -> None:
    standby.caught_up()
    health = httpx.get(served.url("/healthz"), timeout=5)
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["status"] == "ok" and body["listener"] == "connected"
    assert body["replica"] is True and body["streaming"] is True
    assert isinstance(body["replay_lag_s"], float) and 0 <= body["replay_lag_s"] < 5
    assert isinstance(body["replay_lag_bytes"], int) and body["replay_lag_bytes"] >= 0
    assert body["last_rev"] == _last_rev(primary_db)
    # A cursor further ahead than the standby's last rev (one from a server ahead of it)
    # gets an empty page that keeps the cursor, never an older one.
    ahead = body["last_rev"] + 1000
    page = httpx.get(served.url("/published/feed"), params={"after": ahead}, timeout=5).json()
    assert page["items"] == [] and page["next_after"] == ahead and page["has_more"] is False
    assert page["feed_id"] == body["feed_id"]
    assert _metric(served, "pubctl_serve_replica") == 1.0
    assert _metric(served, "pubctl_serve_replay_lag_seconds") >= 0
    assert "standby in recovery" in served.log
    assert "LISTEN" not in served.log and "Traceback" not in served.log


def test_long_poll_is_answered_within_seconds_of_the_replay(
    served: Served, primary_db: Database, standby: Standby
) -> None:
    standby.caught_up()
    after = int(httpx.get(served.url("/healthz"), timeout=5).json()["last_rev"])
    answers: list[tuple[httpx.Response, float]] = []

    def poll() -> None:
        response = httpx.get(
            served.url("/published/feed"), params={"after": after, "wait": 30}, timeout=40
        )
        answers.append((response, time.monotonic()))

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(1.0)
    assert not answers, "held while nothing is newer"
    publish(primary_db, "UPDATE study_topic SET name = 'replayed' WHERE id = 2")
    committed = time.monotonic()
    waiter.join(30)
    response, answered = answers[0]
    assert response.status_code == 200
    assert [item["payload"]["name"] for item in response.json()["items"]] == ["replayed"]
    assert answered - committed < 2.0, answered - committed


def test_many_held_long_polls_hold_no_connection(
    served: Served, primary_db: Database, standby: Standby
) -> None:
    standby.caught_up()
    after = int(httpx.get(served.url("/healthz"), timeout=5).json()["last_rev"])
    host, port = rawhttp.host_port(served.base)
    feed_reads = _metric(served, 'pubctl_serve_database_queries_total{purpose="feed"}')
    counted: list[int] = []
    committed: list[float] = []

    async def crowd() -> list[tuple[int, dict[str, str], bytes, float]]:
        held = [
            asyncio.ensure_future(rawhttp.get(host, port, f"/published/feed?after={after}&wait=30"))
            for _ in range(200)
        ]
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(
            None,
            lambda: wait_until(
                lambda: _metric(served, "pubctl_serve_waiting_long_polls") == 200, timeout=20
            ),
        )
        assert ready, "the long-polls were not all held"
        counted.append(await loop.run_in_executor(None, _serve_connections, standby, primary_db))

        def write() -> None:
            publish(primary_db, "UPDATE study_topic SET name = 'crowd' WHERE id = 3")
            committed.append(time.monotonic())

        await loop.run_in_executor(None, write)
        return await asyncio.gather(*held)

    answers = asyncio.run(crowd())
    assert counted[0] <= POOL + EXTRA_CONNECTIONS, counted
    assert [status for status, *_rest in answers] == [200] * 200
    for _status, _headers, body, _at in answers:
        assert [item["payload"]["name"] for item in json.loads(body)["items"]] == ["crowd"]
    slowest = max(at for *_rest, at in answers) - committed[0]
    assert slowest < 3.0, slowest
    # The crowd shares its reads: one for the first page, one after the wake-up.
    reads = _metric(served, 'pubctl_serve_database_queries_total{purpose="feed"}') - feed_reads
    assert reads <= 10, reads
    assert _serve_connections(standby, primary_db) <= POOL + EXTRA_CONNECTIONS


def _follow(url: str, after: int) -> subprocess.Popen[str]:
    return spawn(
        url,
        "feed",
        "--follow",
        "--after",
        str(after),
        "--poll-interval",
        "30",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _next_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The follower's next line, read in a thread so that a silent follower fails the
    test instead of hanging it."""
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    assert lines and lines[0], "the follower printed nothing in time"
    parsed: dict[str, Any] = json.loads(lines[0])
    return parsed


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return err


def test_feed_follow_on_the_standby_emits_changes_and_survives_its_restart(
    primary_db: Database, standby: Standby, standby_reader: str
) -> None:
    standby.caught_up()
    after = _last_rev(primary_db)
    follower = _follow(standby_reader, after)
    try:
        time.sleep(1.0)
        publish(primary_db, "UPDATE study_topic SET name = 'followed' WHERE id = 4")
        committed = time.monotonic()
        line = _next_line(follower, 10)
        took = time.monotonic() - committed
        assert line["payload"]["name"] == "followed" and line["rev"] > after
        assert took < 2.0, took
        standby.restart()
        publish(primary_db, "UPDATE study_topic SET name = 'after the restart' WHERE id = 4")
        line = _next_line(follower, 20)
        assert line["payload"]["name"] == "after the restart"
    finally:
        err = _stop(follower)
    assert "lost the database" in err and "reconnected" in err, err
    assert "LISTEN" not in err and "Traceback" not in err, err


def test_feed_follow_on_the_standby_stops_when_the_state_is_replaced(
    pub_db: Database, standby: Standby
) -> None:
    publish(pub_db, "INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
    standby.caught_up()
    follower = _follow(standby.url_for(pub_db.url), 0)
    try:
        assert _next_line(follower, 10)["rev"] == 1
        # Paused while the primary drops the state and installs it again: it sees one
        # state or the other once the standby has replayed both, never the moment between.
        follower.send_signal(signal.SIGSTOP)
        try:
            for args in (("migrate", "--revision", "base", "--drop-published-state"), ("migrate",)):
                result = run_subprocess("--database-url", pub_db.url, *args)
                assert result.code == 0, result
            standby.caught_up()
        finally:
            follower.send_signal(signal.SIGCONT)
        _out, err = follower.communicate(timeout=20)
    finally:
        _stop(follower)
    assert follower.returncode == 3, err
    last = err.strip().splitlines()[-1]
    assert "replaced" in last and ("rev 0" in last or "--after 0" in last), last
    assert "Traceback" not in err


def test_a_promoted_standby_switches_to_notifications(pub_db: Database) -> None:
    """On its own standby, promoted under a running server and follower: both go on,
    now woken by the notifications of writes on the new primary itself."""
    publish(pub_db, "INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
    with Standby(pub_db.url) as own:
        reader = own.url_for(reader_url(pub_db))
        own.caught_up()
        with Served(reader, "--pool-size", "1") as server:
            follower = _follow(reader, 1)
            try:
                assert httpx.get(server.url("/healthz"), timeout=5).json()["replica"] is True
                assert wait_until(lambda: _sessions(own, pub_db, "pubctl") == 1), "no follower"
                own.promote()
                assert wait_until(
                    lambda: httpx.get(server.url("/healthz"), timeout=5).json()["replica"] is False,
                    timeout=10,
                )
                assert wait_until(lambda: "promoted" in server.log, timeout=10), server.log
                new_primary = Database(url=own.url_for(pub_db.url), server=pub_db.server)
                answers: list[httpx.Response] = []
                waiter = threading.Thread(
                    target=lambda: answers.append(
                        httpx.get(
                            server.url("/published/feed"),
                            params={"after": 1, "wait": 30},
                            timeout=40,
                        )
                    )
                )
                waiter.start()
                time.sleep(1.0)
                publish(new_primary, "UPDATE study_topic SET name = 'promoted' WHERE id = 1")
                committed = time.monotonic()
                waiter.join(30)
                assert time.monotonic() - committed < 1.0
                assert [i["payload"]["name"] for i in answers[0].json()["items"]] == ["promoted"]
                assert _next_line(follower, 10)["payload"]["name"] == "promoted"
                assert _metric(server, "pubctl_serve_replica") == 0.0
            finally:
                err = _stop(follower)
        assert "promoted" in err and "Traceback" not in err, err
