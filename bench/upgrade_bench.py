"""Upgrading a populated install to the head revision: how long `pubctl migrate` takes
over N published items plus a pending outbox backlog, and how long an application
write waits meanwhile (the migrations that rewrite pub's tables lock them; the
application's tables are never locked, but capture writes the outbox).

Reported per scale: the upgrade's time, the longest a single-row INSERT of the
application waited during it (one writer inserting in a loop), and the items per second
the upgrade converted."""

from __future__ import annotations

import threading
import time

import psycopg

from pubctl.apply import drain
from pubctl.migrate import migrate, revisions
from pubctl.queries import read_sql_file

BACKLOG = 10_000

FILL = """
INSERT INTO study_question (id, topic_id, exam_name, exam_round, number, body, choices, answer,
                            explanation, explanation_status)
SELECT g, 1, 'Exam ' || (g %% 10), g %% 5, g %% 40, rpad('Question body ' || g || ' ', 300, 'xyz '),
       '["alpha","beta","gamma","delta"]'::jsonb, g %% 4,
       rpad('Because ' || g || ' ', 500, 'abc '), 'ready'
FROM generate_series(%(first)s, %(last)s) g
"""


def run(url: str, scale: int) -> list[tuple[str, str]]:
    """`scale` questions publish 2 * scale items (question and explanation)."""
    previous = revisions()[-2]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(read_sql_file("sample_app_schema.sql").encode())
        migrate(url, previous)
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'bench')")
        conn.execute(FILL, {"first": 1, "last": scale})
    with psycopg.connect(url, autocommit=True) as conn:
        drain(conn, 50_000)
        conn.execute(FILL, {"first": scale + 1, "last": scale + BACKLOG // 2})
        conn.execute("VACUUM ANALYZE pub.content, pub.outbox")
        (items,) = conn.execute("SELECT count(*) FROM pub.content").fetchone() or (0,)
        (backlog,) = conn.execute("SELECT count(*) FROM pub.outbox").fetchone() or (0,)
        conn.execute("CHECKPOINT")

    waits: list[float] = []
    stop = threading.Event()

    def writer() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            next_id = 10 * scale
            while not stop.is_set():
                next_id += 1
                started = time.perf_counter()
                conn.execute(
                    "INSERT INTO study_topic (id, name) VALUES (%s, 'during upgrade')", (next_id,)
                )
                waits.append(time.perf_counter() - started)
                time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.5)
    started = time.perf_counter()
    migrate(url, lock_timeout_s=600)
    elapsed = time.perf_counter() - started
    stop.set()
    thread.join()
    return [
        (f"upgrade {previous} -> head, {items:,} items + {backlog:,} pending", f"{elapsed:.1f} s"),
        ("  items converted per second", f"{items / elapsed:,.0f}"),
        ("  longest application INSERT during it", f"{max(waits):.2f} s"),
    ]
