"""Load: several writer connections for a bounded time with `pubctl worker` running.
The outbox backlog must stay bounded and drain, commit -> feed latency is reported as
percentiles, and the outbox and published table sizes after VACUUM are reported.

`make test` runs it briefly; `make soak` for PUBCTL_LOAD_SECONDS (60 there). The
report line is shown with `pytest -s`.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
from pathlib import Path

from pubctl.feed import read

from support.campaign_report import TOTALS
from support.cli import spawn
from support.db import Database
from support.workload import Reader, Writers, install_churn_audit, reference_state, unchanged_revs

SECONDS = float(os.environ.get("PUBCTL_LOAD_SECONDS", "4"))
WRITERS = int(os.environ.get("PUBCTL_LOAD_WRITERS", "4"))
MAX_ID = 5000


def probe_latencies(db: Database, stop: threading.Event, out: list[float]) -> None:
    """Commit a unique topic name, then poll the feed until a viewer would see it."""
    with db.connect() as writer, db.connect() as viewer:
        cursor = 0
        n = 0
        while not stop.is_set():
            n += 1
            token = f"probe {n}"
            writer.execute("UPDATE study_topic SET name = %s WHERE id = 1", (token,))
            committed = time.monotonic()
            seen = False
            while not seen and time.monotonic() - committed < 30:
                for line in read(viewer, cursor, kinds=["topic"]):
                    change = json.loads(line)
                    cursor = change["rev"]
                    seen = seen or change["payload"].get("name") == token
                if not seen:
                    time.sleep(0.001)
            out.append(time.monotonic() - committed)
            time.sleep(0.02)


def test_backlog_stays_bounded_under_load(pub_db: Database, tmp_path: Path) -> None:
    install_churn_audit(pub_db)
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
    # The worker's log goes to a file: a pipe nobody reads until the end would fill up
    # and block the worker on its next log line.
    log = tmp_path / "worker.log"
    with log.open("w") as log_file:
        worker_started = time.monotonic()
        worker = spawn(pub_db.url, "worker", stderr=log_file)
    latencies: list[float] = []
    backlog: list[int] = []
    stop_probe = threading.Event()
    probe = threading.Thread(target=probe_latencies, args=(pub_db, stop_probe, latencies))
    try:
        time.sleep(0.5)
        probe.start()
        started = time.monotonic()
        with (
            Writers(pub_db, WRITERS, seed=7, max_id=MAX_ID) as writers,
            pub_db.connect() as conn,
        ):
            while time.monotonic() - started < SECONDS:
                row = conn.execute("SELECT count(*) FROM pub.outbox").fetchone()
                backlog.append(int(row[0]) if row else 0)
                time.sleep(0.25)
        elapsed = time.monotonic() - started
        stop_probe.set()
        probe.join(60)
        assert not writers.errors, writers.errors
        drained_in = time.monotonic()
        with pub_db.connect() as conn:
            while conn.execute("SELECT count(*) FROM pub.outbox").fetchone() != (0,):
                assert time.monotonic() - drained_in < 30, (
                    f"the worker does not keep up: backlog by quarter {_quarters(backlog)},"
                    f" worker exit code {worker.poll()}, sessions: {_sessions(conn)}"
                )
                time.sleep(0.05)
        drained_in = time.monotonic() - drained_in
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    assert worker.returncode == 0, log.read_text()
    ran_for = time.monotonic() - worker_started
    assert len(log.read_text().splitlines()) <= 3 + int(ran_for / 60), "no log flood"

    reader = Reader(pub_db)
    reader.poll()
    assert reader.state == reference_state(pub_db)
    assert unchanged_revs(pub_db) == 0

    with pub_db.connect() as conn:
        conn.execute("VACUUM pub.outbox, pub.content")
        sizes = conn.execute(
            "SELECT pg_relation_size('pub.outbox'), pg_total_relation_size('pub.outbox'),"
            " pg_total_relation_size('pub.content'), (SELECT count(*) FROM pub.content)"
        ).fetchone()
    assert sizes is not None
    outbox_heap, outbox_total, content_total, items = sizes
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    print(
        f"load: {WRITERS} writers for {elapsed:.0f}s, {writers.writes / elapsed:.0f} writes/s;"
        f" commit->feed over {len(latencies)} probes p50 {cuts[49] * 1000:.1f} ms,"
        f" p99 {cuts[98] * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms;"
        f" outbox backlog max {max(backlog)} (by quarter: {_quarters(backlog)}), drained {drained_in:.2f}s after the writers"
        f" stopped; after VACUUM: outbox heap {outbox_heap} B ({outbox_total} B with"
        f" indexes), pub.content {content_total // 1024} KiB for {items} items"
    )
    TOTALS.load.extend(
        [
            ("writers, seconds", f"{WRITERS}, {elapsed:.0f}"),
            ("writes/s", f"{writers.writes / elapsed:,.0f}"),
            (
                "commit->feed p50 / p99 / max",
                f"{cuts[49] * 1000:.1f} / {cuts[98] * 1000:.1f} / {max(latencies) * 1000:.1f} ms"
                f" ({len(latencies)} probes)",
            ),
            ("outbox backlog max", f"{max(backlog):,} rows"),
            ("drained after writers stopped", f"{drained_in:.2f} s"),
            ("outbox after VACUUM", f"heap {outbox_heap} B, {outbox_total:,} B with indexes"),
            ("pub.content after VACUUM", f"{content_total // 1024:,} KiB for {items:,} items"),
        ]
    )
    assert len(latencies) > 10
    assert statistics.median(latencies) < 1.0
    # The worker keeps up: the backlog stays far below what the writers produce.
    assert max(backlog) < max(1000, writers.writes // 4)
    # An applied outbox is empty and VACUUM truncates it (unless another session's old
    # snapshot or lock holds it back, as can happen on a shared server).
    assert outbox_heap <= 64 * 1024


def _quarters(samples: list[int]) -> str:
    size = max(1, len(samples) // 4)
    return "/".join(str(max(samples[i : i + size])) for i in range(0, len(samples), size))


def _sessions(conn: object) -> list[tuple[object, ...]]:
    """What every session on the server is doing (for a failure message)."""
    return list(
        conn.execute(  # type: ignore[attr-defined]
            "SELECT datname, application_name, state, wait_event_type, wait_event,"
            " left(query, 60), now() - xact_start FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchall()
    )
