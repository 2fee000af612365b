"""Kind-filtered feed pages: a page of 1,000 items of one kind, or of two, against a page
of the unfiltered feed, fetched by a client through pub.feed, over ten times the scale's
items of which 0.1% are topics (the rest questions and explanations, payloads of about
400 bytes). Interleaved; the ratio of the medians."""

from __future__ import annotations

import statistics
import time

import psycopg

from pubctl.migrate import migrate
from pubctl.queries import read_sql_file

REPEATS = 5
PAGE = 1000

FILL = """
INSERT INTO pub.content (kind, source_id, rev, payload, payload_hash, schema_version, deleted)
SELECT CASE WHEN g %% 1000 = 0 THEN 'topic' WHEN g %% 2 = 0 THEN 'question' ELSE 'explanation' END,
       g, g, json_build_object('id', g, 'text', rpad('x', 380, 'y ' || g)), md5(g::text), 1, false
FROM generate_series(1, %(items)s) g
"""


def _page(
    conn: psycopg.Connection[tuple[object, ...]], after: int, kinds: list[str] | None
) -> float:
    start = time.perf_counter()
    rows = conn.execute(
        "SELECT rev, kind, pub_id, source_id, payload::text, payload_hash, schema_version, deleted"
        " FROM pub.feed(%s, %s, %s)",
        (after, PAGE, kinds),
    ).fetchall()
    elapsed = time.perf_counter() - start
    assert len(rows) == PAGE, (kinds, len(rows))
    return elapsed


def run(url: str, rows: int) -> list[tuple[str, str]]:
    items = 10 * rows
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(read_sql_file("sample_app_schema.sql").encode())
        migrate(url)
        conn.execute(FILL, {"items": items})
        conn.execute("UPDATE pub.rev_counter SET last_rev = %s", (items,))
        conn.execute("VACUUM ANALYZE pub.content")
        # Pages from the middle of the feed (topics: from the start, there are so few).
        middle = items // 2
        cases: dict[str, tuple[int, list[str] | None]] = {
            "all kinds": (middle, None),
            "topic": (0, ["topic"]),
            "question": (middle, ["question"]),
            "explanation": (middle, ["explanation"]),
            "question, explanation": (middle, ["question", "explanation"]),
            "topic, question": (middle, ["topic", "question"]),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for repeat in range(REPEATS + 1):
            for name, (after, kinds) in cases.items():
                elapsed = _page(conn, after, kinds)
                if repeat:
                    times[name].append(elapsed)

    def ratio(name: str) -> str:
        rs = sorted(x / y for x, y in zip(times[name], times["all kinds"], strict=True))
        med = statistics.median(times[name]) / statistics.median(times["all kinds"])
        return f"{med:.2f}x (min {rs[0]:.2f}, max {rs[-1]:.2f})"

    label = f"feed page of {PAGE} over {items:,} items (0.1% topics)"
    return [
        (f"{label}: all kinds, ms", f"{1000 * statistics.median(times['all kinds']):.1f}"),
        *[(f"{label}: {name} / all kinds", ratio(name)) for name in cases if name != "all kinds"],
    ]
