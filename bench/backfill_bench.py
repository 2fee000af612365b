"""Backfill: `pubctl backfill questions` against the floor (one INSERT INTO pub.outbox
SELECT of the same projection in a single statement), per page size, with the peak
memory of the pubctl process at two table sizes."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from peak import wait_peak

from pubctl.migrate import migrate
from pubctl.queries import read_sql_file

REPEATS = 3
PAGE_SIZES = (1000, 5000, 20000)

SEED = """
UPDATE pub.settings SET publishing_enabled = false;
INSERT INTO study_topic (id, name) VALUES (1, 'bench');
INSERT INTO study_question (id, topic_id, exam_name, exam_round, number, body, choices, answer,
                            explanation, explanation_status)
SELECT g, 1, 'Exam ' || (g % 10), g % 5, g % 40, rpad('Question body ' || g || ' ', 300, 'xyz '),
       '["alpha","beta","gamma","delta"]', g % 4, rpad('Because ' || g || ' ', 500, 'abc '),
       CASE WHEN g % 2 = 0 THEN 'ready' ELSE 'draft' END
FROM generate_series(1, {rows}) g;
UPDATE pub.settings SET publishing_enabled = true;
"""

FLOOR = """
INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
SELECT i.kind, i.source_id, pub.outbox_payload(i.canonical), pub.outbox_payload_hash(i.canonical),
       pub.schema_version(), false
FROM (SELECT 'question', q.id, pub.question_canonical(q.id, q.topic_id, q.exam_name, q.exam_round,
             q.number, q.body, q.choices, q.answer, q.deleted_at)
      FROM study_question q WHERE q.deleted_at IS NULL OFFSET 0) AS i(kind, source_id, canonical)
UNION ALL
SELECT i.kind, i.source_id, pub.outbox_payload(i.canonical), pub.outbox_payload_hash(i.canonical),
       pub.schema_version(), false
FROM (SELECT 'explanation', q.id, pub.explanation_canonical(q.id, q.explanation,
             q.explanation_status, q.deleted_at)
      FROM study_question q WHERE pub.explanation_is_live(q.deleted_at, q.explanation_status)
      OFFSET 0) AS i(kind, source_id, canonical)
"""


def _pubctl(url: str, *args: str) -> tuple[float, int]:
    """Backfill time as pubctl reports it (without interpreter start-up) and the peak
    RSS (KiB) of the pubctl process."""
    exe = str(Path(sys.executable).with_name("pubctl"))
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            [exe, "--database-url", url, *args, "--json"], stdout=out, stderr=subprocess.DEVNULL
        )
        status, peak = wait_peak(proc)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"pubctl {' '.join(args)} failed")
        out.seek(0)
        seconds = sum(float(r["seconds"]) for r in json.load(out))
    return seconds, peak


def _reset(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute("TRUNCATE pub.outbox")
    conn.execute("CHECKPOINT")


def _measure(url: str, rows: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"floor": [], "rss": []}
    times.update({f"pages of {n}": [] for n in PAGE_SIZES})
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(read_sql_file("sample_app_schema.sql").encode())
        migrate(url)
        conn.execute(SEED.format(rows=rows).encode())
        conn.execute("VACUUM ANALYZE study_question")
        for repeat in range(REPEATS + 1):
            _reset(conn)
            started = time.perf_counter()
            conn.execute(FLOOR.encode())
            floor = time.perf_counter() - started
            runs = {}
            for n in PAGE_SIZES:
                _reset(conn)
                runs[n] = _pubctl(url, "backfill", "questions", "--batch-size", str(n))
            if repeat:  # the first round warms caches
                times["floor"].append(floor)
                for n, (elapsed, rss) in runs.items():
                    times[f"pages of {n}"].append(elapsed)
                    times["rss"].append(rss)
    return times


def run(url: str, rows: int) -> list[tuple[str, str]]:
    """Backfill figures at `rows` and at a tenth of it (for memory)."""
    big = _measure(url, rows)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA pub CASCADE")
        conn.execute("DROP TABLE study_question, study_topic")
    small = _measure(url, max(rows // 10, 1000))
    out = []
    for n in PAGE_SIZES:
        key = f"pages of {n}"
        ratios = sorted(f / t for f, t in zip(big["floor"], big[key], strict=True))
        rate = rows / statistics.median(big[key])
        out.append(
            (
                f"backfill {rows} questions, {key}: floor / backfill",
                f"{statistics.median(big['floor']) / statistics.median(big[key]):.2f}x"
                f" (min {ratios[0]:.2f}, max {ratios[-1]:.2f}), {rate:,.0f} rows/s",
            )
        )
    out.append(
        (
            "backfill peak RSS of pubctl: full / tenth size",
            f"{max(big['rss']) / 1024:.0f} MiB / {max(small['rss']) / 1024:.0f} MiB",
        )
    )
    return out
