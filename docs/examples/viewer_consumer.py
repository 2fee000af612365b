"""A minimal viewer: keep a local copy of the published items by reading pub.feed.

Run it with a URL whose role has USAGE on schema pub and EXECUTE on pub.feed:
    python viewer_consumer.py postgresql://viewer@db.example/study
"""

from __future__ import annotations

import sys
from typing import Any

import psycopg


def sync(url: str, state: dict[tuple[str, int], Any], cursor: int = 0, page: int = 1000) -> int:
    """Apply every change after ``cursor`` to ``state``; return the new cursor."""
    with psycopg.connect(url) as conn:
        while True:
            rows = conn.execute(
                "SELECT rev, kind, source_id, payload, deleted FROM pub.feed(%s, %s)",
                (cursor, page),
            ).fetchall()
            for rev, kind, source_id, payload, deleted in rows:
                if deleted:
                    state.pop((kind, source_id), None)  # a tombstone: the item is gone
                else:
                    state[(kind, source_id)] = payload  # the item's newest payload
                cursor = rev
            if len(rows) < page:
                return cursor


def questions_of_topic(state: dict[tuple[str, int], Any], topic_id: int) -> list[Any]:
    """A viewer hides questions of deleted topics itself: they are not tombstoned."""
    if ("topic", topic_id) not in state:
        return []
    return sorted(
        (p for (kind, _id), p in state.items() if kind == "question" and p["topic_id"] == topic_id),
        key=lambda p: (p["exam_name"] or "", p["exam_round"] or 0, p["number"] or 0),
    )


if __name__ == "__main__":
    items: dict[tuple[str, int], Any] = {}
    last = sync(sys.argv[1], items)
    print(f"{len(items)} live items, cursor at rev {last}")
