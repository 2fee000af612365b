"""Write path: bulk INSERT and no-op UPDATE of questions, with pubctl's triggers against
the same table without triggers and against the floor (the bare insert plus inserting
the same outbox rows precomputed). Every variant runs in the same database, repeated
and interleaved, and is reported as a ratio."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import psycopg

from pubctl.migrate import migrate
from pubctl.queries import read_sql_file

REPEATS = 3

STAGE = """
DROP TABLE IF EXISTS bench_staged, bench_bare, bench_outbox_precomputed, bench_outbox_floor;
CREATE TABLE bench_staged AS
SELECT g AS id, 1 AS topic_id, 'Exam ' || (g % 10) AS exam_name, g % 5 AS exam_round,
       g % 40 AS number, rpad('Question body ' || g || ' ', 300, 'xyz ') AS body,
       '["alpha","beta","gamma","delta"]'::jsonb AS choices, g % 4 AS answer,
       rpad('Because ' || g || ' ', 500, 'abc ') AS explanation,
       CASE WHEN g % 2 = 0 THEN 'ready' ELSE 'draft' END AS explanation_status
FROM generate_series(1, %(rows)s) g;
CREATE TABLE bench_bare (LIKE study_question INCLUDING ALL);
ALTER TABLE bench_bare ADD FOREIGN KEY (topic_id) REFERENCES study_topic (id);
CREATE TABLE bench_outbox_floor (LIKE pub.outbox INCLUDING ALL);
CREATE TABLE bench_outbox_precomputed AS
SELECT kind, source_id, payload, payload_hash, schema_version, deleted FROM (
    SELECT 'question' AS kind, id::bigint AS source_id,
           pub.question_canonical(id, topic_id, exam_name, exam_round, number, body, choices,
                                  answer, NULL) AS c,
           1 AS schema_version, false AS deleted
    FROM bench_staged
    UNION ALL
    SELECT 'explanation', id, pub.explanation_canonical(id, explanation, explanation_status, NULL),
           1, false
    FROM bench_staged
) s(kind, source_id, c, schema_version, deleted)
CROSS JOIN LATERAL (SELECT c AS payload, pub.payload_hash(c::text) AS payload_hash) h
WHERE c IS NOT NULL;
"""

COLUMNS = (
    "id, topic_id, exam_name, exam_round, number, body, choices, answer, explanation, "
    "explanation_status"
)


def _timed(conn: psycopg.Connection[tuple[object, ...]], statements: list[str]) -> float:
    start = time.perf_counter()
    with conn.transaction():
        for sql in statements:
            conn.execute(sql.encode())
    return time.perf_counter() - start


def _reset(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute("UPDATE pub.settings SET publishing_enabled = false")
    conn.execute("TRUNCATE study_question, bench_bare, pub.outbox, bench_outbox_floor")
    conn.execute("UPDATE pub.settings SET publishing_enabled = true")
    conn.execute("CHECKPOINT")


# Raw timings of the last run's bulk inserts for the chart run.py draws: variant ->
# (rows, seconds of each round, warm-up excluded).
TIMINGS: dict[str, tuple[int, list[float]]] = {}


def run(url: str, rows: int) -> list[tuple[str, str]]:
    """Bulk insert and no-op update, each variant timed REPEATS times, interleaved."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(read_sql_file("sample_app_schema.sql").encode())
        migrate(url)
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'bench')")
        conn.execute(STAGE.replace("%(rows)s", str(rows)).encode())
        conn.execute("VACUUM ANALYZE bench_staged, bench_outbox_precomputed")
        outbox_cols = "kind, source_id, payload, payload_hash, schema_version, deleted"
        variants: dict[str, list[str]] = {
            "bare insert": [
                f"INSERT INTO bench_bare ({COLUMNS}) SELECT {COLUMNS} FROM bench_staged"
            ],
            "floor": [
                f"INSERT INTO bench_bare ({COLUMNS}) SELECT {COLUMNS} FROM bench_staged",
                f"INSERT INTO bench_outbox_floor ({outbox_cols}) "
                f"SELECT {outbox_cols} FROM bench_outbox_precomputed",
            ],
            "triggers": [
                f"INSERT INTO study_question ({COLUMNS}) SELECT {COLUMNS} FROM bench_staged"
            ],
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for repeat in range(REPEATS + 1):
            for name, statements in variants.items():
                _reset(conn)
                elapsed = _timed(conn, statements)
                if repeat:  # the first round only warms caches and the WAL
                    times[name].append(elapsed)
        outbox_rows = conn.execute("SELECT count(*) FROM pub.outbox").fetchone()
        TIMINGS.clear()
        for name in variants:
            TIMINGS[f"bulk insert: {name.removesuffix(' insert')}"] = (rows, list(times[name]))

        # No-op UPDATE: a column outside the projection, with and without triggers.
        noop: dict[str, Callable[[], float]] = {
            "bare no-op update": lambda: _timed(
                conn, ["UPDATE bench_bare SET updated_at = updated_at + interval '1 second'"]
            ),
            "triggers no-op update": lambda: _timed(
                conn, ["UPDATE study_question SET updated_at = updated_at + interval '1 second'"]
            ),
        }
        conn.execute(f"INSERT INTO bench_bare ({COLUMNS}) SELECT {COLUMNS} FROM bench_staged")
        conn.execute("DELETE FROM pub.outbox")
        for name in noop:
            times[name] = []
        for _ in range(REPEATS):
            for name, fn in noop.items():
                conn.execute("VACUUM study_question, bench_bare")
                times[name].append(fn())
        noop_outbox = conn.execute("SELECT count(*) FROM pub.outbox").fetchone()

    med = {name: statistics.median(values) for name, values in times.items()}

    def ratio(a: str, b: str) -> str:
        rs = sorted(x / y for x, y in zip(times[a], times[b], strict=True))
        return f"{med[a] / med[b]:.2f}x (min {rs[0]:.2f}, max {rs[-1]:.2f})"

    return [
        (f"bulk insert {rows} rows: triggers / bare", ratio("triggers", "bare insert")),
        (f"bulk insert {rows} rows: triggers / floor", ratio("triggers", "floor")),
        ("bulk insert: floor / bare", ratio("floor", "bare insert")),
        ("bulk insert: outbox rows", str(outbox_rows[0] if outbox_rows else "?")),
        (
            f"no-op update {rows} rows: triggers / bare",
            ratio("triggers no-op update", "bare no-op update"),
        ),
        ("no-op update: outbox rows", str(noop_outbox[0] if noop_outbox else "?")),
    ]
