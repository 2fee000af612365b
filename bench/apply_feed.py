"""Applier and feed: apply vs a plain INSERT ... SELECT of the same rows into a copy of
pub.content (the floor), no-op re-apply vs real changes, a feed page vs an index-only
keyset scan, and commit-to-feed latency with `pubctl worker` running."""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from pubctl.apply import drain
from pubctl.migrate import migrate
from pubctl.queries import read_sql_file

REPEATS = 3
BATCH = 10_000

# Outbox rows of mixed kinds, one per item.
# Mixed kinds; every fifth row repeats the item and payload of the row before it
# (20% no-op repeats, which the applier must consume without a rev).
FILL = """
INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
SELECT (ARRAY['topic', 'question', 'explanation'])[1 + i %% 3], i / 3,
       pub.outbox_payload(c), pub.outbox_payload_hash(c), 1, false
FROM generate_series(1, %(rows)s) g,
     LATERAL (SELECT CASE WHEN g %% 5 = 0 THEN g - 1 ELSE g END) AS item(i),
     LATERAL (SELECT '{"question_id":' || i || ',"text":'
                     || to_json(rpad('x', 300, 'y ' || i))::text || '}') AS t(c)
ORDER BY g
"""
REENQUEUE_ALL = """
INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
SELECT kind, source_id, payload, payload_hash, schema_version, deleted FROM pub.content
"""


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def _ratio(a: list[float], b: list[float]) -> str:
    rs = sorted(x / y for x, y in zip(a, b, strict=True))
    return f"{statistics.median(a) / statistics.median(b):.2f}x (min {rs[0]:.2f}, max {rs[-1]:.2f})"


@contextmanager
def running_worker(url: str) -> Iterator[None]:
    """`pubctl worker` running beside the block, as a deployment runs it."""
    worker = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("pubctl")),
            "--database-url",
            url,
            "worker",
            "--poll-interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # connected and listening
        yield
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(10)


def p50_p99(samples: list[float]) -> tuple[float, float]:
    """The median and the 99th percentile."""
    samples = sorted(samples)
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99) - 1]


def _latency(url: str, writes: int = 1000) -> tuple[float, float]:
    samples: list[float] = []
    with (
        running_worker(url),
        psycopg.connect(url, autocommit=True) as writer,
        psycopg.connect(url, autocommit=True) as reader,
    ):
        for n in range(writes):
            writer.execute("UPDATE study_topic SET name = %s WHERE id = 1", (f"latency {n}",))
            committed = time.perf_counter()
            while True:
                row = reader.execute(
                    "SELECT payload->>'name' FROM pub.feed("
                    "(SELECT max(rev) - 1 FROM pub.content), 1, '{topic}')"
                ).fetchone()
                if row and row[0] == f"latency {n}":
                    break
                time.sleep(0.0005)
            samples.append(time.perf_counter() - committed)
    return p50_p99(samples)


def _outbox_size(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    row = conn.execute("SELECT pg_total_relation_size('pub.outbox')").fetchone()
    return int(str(row[0])) if row else 0


def run(url: str, rows: int) -> list[tuple[str, str]]:
    """Apply, no-op re-apply, feed page and latency figures."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(read_sql_file("sample_app_schema.sql").encode())
        migrate(url)
        conn.execute("CREATE TABLE bench_content_floor (LIKE pub.content INCLUDING ALL)")
        conn.execute("CREATE UNLOGGED TABLE bench_staged_outbox (LIKE pub.outbox)")
        apply_t: list[float] = []
        floor_t: list[float] = []
        noop_t: list[float] = []
        for _ in range(REPEATS):
            conn.execute(
                "TRUNCATE pub.outbox, pub.content, bench_content_floor, bench_staged_outbox"
            )
            conn.execute(FILL.replace("%(rows)s", str(rows)).replace("%%", "%"))
            conn.execute("INSERT INTO bench_staged_outbox SELECT * FROM pub.outbox")
            conn.execute("VACUUM ANALYZE pub.outbox, bench_staged_outbox")
            conn.execute("CHECKPOINT")
            floor_t.append(_timed(lambda: conn.execute(
                "INSERT INTO bench_content_floor (kind, source_id, rev, payload, payload_hash,"
                " schema_version, deleted) SELECT DISTINCT ON (kind, source_id) kind, source_id,"
                " id, payload, payload_hash, schema_version, deleted FROM bench_staged_outbox"
                " ORDER BY kind, source_id, id DESC")))  # fmt: skip
            conn.execute("CHECKPOINT")
            apply_t.append(_timed(lambda: drain(conn, BATCH)))
            conn.execute(REENQUEUE_ALL)
            conn.execute("VACUUM ANALYZE pub.outbox")
            conn.execute("CHECKPOINT")
            full = _outbox_size(conn)
            noop_t.append(_timed(lambda: drain(conn, BATCH)))
        # Retention: an applied outbox holds nothing; VACUUM gives its heap back.
        conn.execute("VACUUM pub.outbox")
        emptied = _outbox_size(conn)

        conn.execute("VACUUM ANALYZE pub.content")
        last = conn.execute("SELECT max(rev) FROM pub.content").fetchone()
        middle = int(last[0]) // 2 if last and last[0] else 0
        page_sql = {
            # Server side only (count(*)): the feed reads each row's heap tuple for its
            # payload, which an index-only scan of rev never touches.
            "feed": "SELECT count(*) FROM pub.feed(%s, 1000)",
            "index_only": "SELECT count(*) FROM (SELECT rev FROM pub.content WHERE rev > %s"
            " ORDER BY rev LIMIT 1000) s",
            # Fetched by the client: the function against the same query written inline.
            "feed_fetch": "SELECT * FROM pub.feed(%s, 1000)",
            "inline_fetch": "SELECT rev, kind, pub_id, source_id, payload, payload_hash,"
            " schema_version, deleted FROM pub.content WHERE rev > %s ORDER BY rev LIMIT 1000",
        }
        page_t: dict[str, list[float]] = {name: [] for name in page_sql}
        for _ in range(REPEATS):
            for name, sql in page_sql.items():
                page_t[name].append(
                    _timed(
                        lambda sql=sql: [conn.execute(sql, (middle,)).fetchall() for _ in range(50)]
                    )
                )

        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'latency')")
    p50, p99 = _latency(url)
    per_s = rows / statistics.median(apply_t)
    return [
        (f"apply {rows} outbox rows: rows/s", f"{per_s:,.0f}"),
        ("apply: floor / apply time (>= 0.5 wanted)", _ratio(floor_t, apply_t)),
        ("no-op re-apply / real apply time", _ratio(noop_t, apply_t)),
        (
            "feed page of 1000 / index-only scan (server)",
            _ratio(page_t["feed"], page_t["index_only"]),
        ),
        (
            "feed page fetched / same query inline",
            _ratio(page_t["feed_fetch"], page_t["inline_fetch"]),
        ),
        (
            f"outbox after {2 * rows} rows applied, VACUUM",
            f"{emptied / 1024:,.0f} KiB (holding {rows} rows: {full / 2**20:,.0f} MiB)",
        ),
        ("commit -> feed latency with worker: p50", f"{p50 * 1000:.1f} ms"),
        ("commit -> feed latency with worker: p99", f"{p99 * 1000:.1f} ms"),
    ]
