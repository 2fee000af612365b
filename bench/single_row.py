"""Single-row autocommit INSERTs from two concurrent clients: transactions per second
with pubctl's triggers against the same table without triggers, measured interleaved."""

from __future__ import annotations

import statistics
import threading
import time

import psycopg

from pubctl.migrate import migrate
from pubctl.queries import read_sql_file

REPEATS = 3
CLIENTS = 2
SECONDS = 4.0

INSERT = (
    "INSERT INTO {table} (topic_id, exam_name, exam_round, number, body, choices, answer,"
    " explanation, explanation_status)"
    " VALUES (1, 'Exam', 1, %s, rpad('Question body', 300, 'xyz '), '[\"alpha\",\"beta\"]',"
    " 1, rpad('Because', 500, 'abc '), CASE WHEN %s %% 2 = 0 THEN 'ready' ELSE 'draft' END)"
)


def _tps(url: str, table: str) -> float:
    counts = [0] * CLIENTS
    stop = time.monotonic() + SECONDS
    sql = INSERT.format(table=table)

    def client(slot: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            n = 0
            while time.monotonic() < stop:
                conn.execute(sql, (n, n))
                n += 1
            counts[slot] = n

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / SECONDS


def run(url: str, _rows: int) -> list[tuple[str, str]]:
    """tps with triggers / tps without, median of REPEATS interleaved runs."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(read_sql_file("sample_app_schema.sql").encode())
        migrate(url)
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'bench')")
        conn.execute("CREATE TABLE bench_bare (LIKE study_question INCLUDING ALL)")
        conn.execute(
            "ALTER TABLE bench_bare ADD FOREIGN KEY (topic_id) REFERENCES study_topic (id)"
        )
    bare: list[float] = []
    triggers: list[float] = []
    for _ in range(REPEATS):
        bare.append(_tps(url, "bench_bare"))
        triggers.append(_tps(url, "study_question"))
    ratios = sorted(t / b for t, b in zip(triggers, bare, strict=True))
    return [
        (f"single-row inserts, {CLIENTS} clients: bare tps", f"{statistics.median(bare):.0f}"),
        (
            f"single-row inserts, {CLIENTS} clients: triggers / bare tps",
            f"{statistics.median(triggers) / statistics.median(bare):.2f}x"
            f" (min {ratios[0]:.2f}, max {ratios[-1]:.2f})",
        ),
    ]
