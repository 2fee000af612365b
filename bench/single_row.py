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


# The floor: the bare insert plus the outbox rows it would produce, precomputed, in
# one round trip and one transaction (a multi-statement simple query).
FLOOR_OUTBOX = (
    "INSERT INTO bench_outbox_floor (kind, source_id, payload, payload_hash, schema_version,"
    " deleted) SELECT kind, source_id, payload, payload_hash, schema_version, deleted"
    " FROM bench_outbox_sample WHERE %s %% 2 = 0 OR kind = 'question'"
)


def _tps(url: str, table: str) -> float:
    counts = [0] * CLIENTS
    stop = time.monotonic() + SECONDS
    if table == "floor":
        sql = INSERT.format(table="bench_bare") + "; " + FLOOR_OUTBOX
    else:
        sql = INSERT.format(table=table)

    def client(slot: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            n = 0
            while time.monotonic() < stop:
                if table == "floor":
                    conn.execute(sql.replace("%s", str(n)).replace("%%", "%").encode())
                else:
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
        conn.execute("CREATE TABLE bench_outbox_floor (LIKE pub.outbox INCLUDING ALL)")
        # One question and its explanation, as the triggers would enqueue them.
        conn.execute(INSERT.format(table="study_question"), (0, 0))
        conn.execute("CREATE TABLE bench_outbox_sample AS SELECT * FROM pub.outbox")
    tps: dict[str, list[float]] = {"bench_bare": [], "floor": [], "study_question": []}
    for _ in range(REPEATS):
        for table, values in tps.items():
            values.append(_tps(url, table))

    def ratio(a: str, b: str) -> str:
        rs = sorted(x / y for x, y in zip(tps[a], tps[b], strict=True))
        med = statistics.median(tps[a]) / statistics.median(tps[b])
        return f"{med:.2f}x (min {rs[0]:.2f}, max {rs[-1]:.2f})"

    label = f"single-row inserts, {CLIENTS} clients"
    return [
        (f"{label}: bare tps", f"{statistics.median(tps['bench_bare']):.0f}"),
        (f"{label}: triggers / bare tps", ratio("study_question", "bench_bare")),
        (f"{label}: floor / bare tps", ratio("floor", "bench_bare")),
        (f"{label}: triggers / floor tps", ratio("study_question", "floor")),
    ]
