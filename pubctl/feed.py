"""Reading the feed as JSON lines (``pubctl feed``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence

import psycopg

from pubctl.queries import query

PAGE_SIZE = 1000
FEED_COLUMNS = (
    "rev", "kind", "pub_id", "source_id", "payload", "payload_hash", "schema_version", "deleted",
)  # fmt: skip


def to_json_line(row: Sequence[object]) -> str:
    """One feed row as a JSON object, the payload spliced in as stored (exact numbers)."""
    record = dict(zip(FEED_COLUMNS, row, strict=True))
    payload_text = str(record.pop("payload"))
    head = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    # Keep the column order of pub.feed: payload goes between source_id and payload_hash.
    before, after = head.split(',"payload_hash"', 1)
    return f'{before},"payload":{payload_text},"payload_hash"{after}'


def read(
    conn: psycopg.Connection[tuple[object, ...]],
    after_rev: int = 0,
    limit: int | None = None,
    kinds: Sequence[str] | None = None,
    *,
    follow: bool = False,
    poll_interval: float = 1.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[str]:
    """Yield JSON lines from ``after_rev`` on; up to ``limit`` rows, or to the end, or
    (with ``follow``) forever, polling at the end."""
    cursor = after_rev
    remaining = limit
    while remaining is None or remaining > 0:
        page = PAGE_SIZE if remaining is None else min(PAGE_SIZE, remaining)
        rows = conn.execute(
            query("feed_page"),
            {"after_rev": cursor, "max_rows": page, "kinds": list(kinds) if kinds else None},
        ).fetchall()
        for row in rows:
            yield to_json_line(row)
            cursor = int(str(row[0]))
        if remaining is not None:
            remaining -= len(rows)
        if len(rows) < page:
            if not follow or should_stop():
                return
            time.sleep(poll_interval)
            if should_stop():
                return
