"""`pubctl serve` on a streaming hot standby beside one on the primary: apply-to-answer
latency of long-polling viewers through each.

A standby of the bench server is made with `pg_basebackup -R` (tests/support/standby.py,
durable settings like the primary's). Two `pubctl serve` processes run on the standby
and one on the primary; viewers are spread evenly over the three, each long-polling
from the head and polling again with `next_after` after every answer. A writer updates
one topic and applies it (`pub.apply_batch`) in one transaction, every
`INTERVAL_S`; for each viewer and each apply, the time from the apply's commit to the
answer carrying its rev is one sample, counted for the server group it went through.
The standby's servers learn of a change by watching replay (no LISTEN there), the
primary's by its notification.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from apply_feed import p50_p99

from pubctl.migrate import migrate
from pubctl.queries import read_sql_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.rawhttp import get, host_port
from support.standby import Standby

EXE = str(Path(sys.executable).with_name("pubctl"))
VIEWERS = int(os.environ.get("PUBCTL_BENCH_REPLICA_VIEWERS", "300"))
WRITES = int(os.environ.get("PUBCTL_BENCH_REPLICA_WRITES", "60"))
INTERVAL_S = 0.5
POOL_SIZE = 5
# Durable, like the primary of `make bench`.
STANDBY_SETTINGS = {"fsync": "on", "full_page_writes": "on", "shared_buffers": "256MB"}


def _serve(url: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [EXE, "--database-url", url, "serve", "--port", "0", "--pool-size", str(POOL_SIZE)],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("listening on "):
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, line.removeprefix("listening on ").strip()
    raise RuntimeError("pubctl serve did not start")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def _serve_connections(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'pubctl serve%'"
        ).fetchone()
    return int(row[0]) if row else 0


async def _viewer(
    base: str, after: int, stop: asyncio.Event, answers: list[tuple[int, float]]
) -> None:
    host, port = host_port(base)
    while not stop.is_set():
        status, _headers, body, at = await get(host, port, f"/published/feed?after={after}&wait=5")
        if status != 200:
            await asyncio.sleep(0.1)
            continue
        page = json.loads(body)
        for item in page["items"]:
            answers.append((int(item["rev"]), at))
        after = int(page["next_after"])


def _write(url: str, applied: dict[int, float], done: threading.Event) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for n in range(WRITES):
            time.sleep(INTERVAL_S)
            with conn.transaction():
                conn.execute(
                    "UPDATE study_topic SET name = %s WHERE id = %s", (f"write {n}", 1 + n % 50)
                )
                conn.execute("SELECT pub.apply_batch(1000)")
                row = conn.execute("SELECT last_rev FROM pub.rev_counter").fetchone()
            applied[int(row[0]) if row else 0] = time.monotonic()
    done.set()


def run(url: str, _rows: int) -> list[tuple[str, str]]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(read_sql_file("sample_app_schema.sql").encode())
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO study_topic (id, name) SELECT g, 't' || g FROM generate_series(1, 50) g"
        )
        conn.execute("SELECT pub.apply_batch(100000)")
        row = conn.execute("SELECT last_rev FROM pub.rev_counter").fetchone()
    head = int(row[0]) if row else 0
    results: list[tuple[str, str]] = []
    with Standby(url, STANDBY_SETTINGS) as standby:
        standby.caught_up()
        replica_url = standby.url_for(url)
        servers = [_serve(replica_url), _serve(replica_url), _serve(url)]
        groups = ["standby", "standby", "primary"]
        try:
            applied: dict[int, float] = {}
            by_group: dict[str, list[list[tuple[int, float]]]] = {"standby": [], "primary": []}

            async def measure() -> None:
                stop = asyncio.Event()
                tasks = []
                for n in range(VIEWERS):
                    answers: list[tuple[int, float]] = []
                    server = n % len(servers)
                    by_group[groups[server]].append(answers)
                    tasks.append(
                        asyncio.create_task(_viewer(servers[server][1], head, stop, answers))
                    )
                await asyncio.sleep(2.0)  # every viewer held
                done = threading.Event()
                writer = threading.Thread(target=_write, args=(url, applied, done))
                writer.start()
                while not done.is_set():
                    await asyncio.sleep(0.1)
                await asyncio.sleep(3.0)  # the last answers
                held = [_serve_connections(replica_url), _serve_connections(url)]
                results.append(
                    (
                        "serve connections open, standby (2 servers) / primary",
                        f"{held[0]} / {held[1]} (pools up to {POOL_SIZE}, {VIEWERS} viewers held)",
                    )
                )
                stop.set()
                await asyncio.gather(*tasks)

            asyncio.run(measure())
            for group in ("standby", "primary"):
                samples = [
                    at - applied[rev]
                    for answers in by_group[group]
                    for rev, at in answers
                    if rev in applied
                ]
                expected = len(by_group[group]) * len(applied)
                p50, p99 = p50_p99(samples)
                results.append(
                    (
                        f"apply -> answer through the {group}: p50 / p99",
                        f"{p50 * 1000:.0f} ms / {p99 * 1000:.0f} ms "
                        f"({len(samples)} of {expected} answers, max {max(samples) * 1000:.0f} ms)",
                    )
                )
        finally:
            for proc, _base in servers:
                _stop(proc)
    results.insert(0, ("viewers, writes", f"{VIEWERS} viewers over 3 servers, {WRITES} applies"))
    return results
