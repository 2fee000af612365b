"""Verify: `pubctl verify` over published questions against the floor (one sequential
scan computing the SQL projection of every row), and pubctl's peak memory."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from backfill_bench import SEED
from peak import wait_peak

from pubctl.apply import drain
from pubctl.migrate import migrate
from pubctl.queries import read_sql_file

REPEATS = 3
FLOOR = """
SELECT count(pub.question_canonical(q.id, q.topic_id, q.exam_name, q.exam_round, q.number, q.body,
                                    q.choices, q.answer, q.deleted_at)),
       count(pub.explanation_canonical(q.id, q.explanation, q.explanation_status, q.deleted_at))
FROM study_question q
"""

# Leaves the first N questions, published, and nothing else (publishing off meanwhile,
# so no tombstones are enqueued).
SHRINK = """
UPDATE pub.settings SET publishing_enabled = false;
DELETE FROM study_question WHERE id > {rows};
DELETE FROM pub.content WHERE kind <> 'topic' AND source_id > {rows};
UPDATE pub.settings SET publishing_enabled = true;
"""


def _pubctl(url: str, *args: str) -> tuple[float, int]:
    exe = str(Path(sys.executable).with_name("pubctl"))
    started = time.perf_counter()
    proc = subprocess.Popen([exe, "--database-url", url, *args], stdout=subprocess.DEVNULL)
    status, peak = wait_peak(proc)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise RuntimeError(f"pubctl {' '.join(args)} failed")
    return elapsed, peak


def run(url: str, rows: int) -> list[tuple[str, str]]:
    """Verify time against the floor, start-up of the interpreter subtracted."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(read_sql_file("sample_app_schema.sql").encode())
        migrate(url)
        conn.execute(SEED.format(rows=rows).encode())
        exe = str(Path(sys.executable).with_name("pubctl"))
        subprocess.run(
            [exe, "--database-url", url, "backfill", "all"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        drain(conn, 10_000)
        conn.execute("VACUUM ANALYZE study_question, pub.content")
        floor_t: list[float] = []
        verify_t: list[float] = []
        rss: list[int] = []
        for repeat in range(REPEATS + 1):
            started = time.perf_counter()
            conn.execute(FLOOR)
            floor = time.perf_counter() - started
            startup, _ = _pubctl(url, "--version")
            elapsed, peak = _pubctl(url, "verify", "--json")
            if repeat:
                floor_t.append(floor)
                verify_t.append(elapsed - startup)
                rss.append(peak)
        # The same at a tenth of the size, to show pubctl's memory does not grow with it.
        small = max(rows // 10, 1000)
        conn.execute(SHRINK.format(rows=small).encode())
        conn.execute("VACUUM ANALYZE study_question, pub.content")
        _elapsed, small_peak = _pubctl(url, "verify", "--json")
    ratios = sorted(v / f for v, f in zip(verify_t, floor_t, strict=True))
    return [
        (
            f"verify {rows} questions / projected seq scan",
            f"{statistics.median(verify_t) / statistics.median(floor_t):.2f}x"
            f" (min {ratios[0]:.2f}, max {ratios[-1]:.2f})",
        ),
        (
            f"verify peak RSS of pubctl, {rows} / {small} questions",
            f"{max(rss) / 1024:.0f} MiB / {small_peak / 1024:.0f} MiB",
        ),
    ]
