"""A minimal viewer: keep a local copy of the published items by reading pub.feed.

Run it with a URL whose role has USAGE on schema pub and EXECUTE on pub.feed and
pub.feed_id (docs/viewer.md):
    python viewer_consumer.py postgresql://viewer@db.example/study
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import psycopg


@dataclass
class Copy:
    """The viewer's copy: live items by (kind, source_id), the cursor, and the identity
    of the published state the cursor belongs to. Save all three together."""

    items: dict[tuple[str, int], Any] = field(default_factory=dict)
    cursor: int = 0
    feed_id: str | None = None


def sync(url: str, copy: Copy, page: int = 1000) -> bool:
    """Apply every change after ``copy.cursor``. Returns True when the published state
    was replaced since the last sync: the copy was then dropped and rebuilt from rev 0."""
    with psycopg.connect(url, autocommit=True) as conn:
        # The identity is read before the pages: if the state is replaced while they
        # are read, the next sync sees an identity it does not know and starts again.
        (feed_id,) = conn.execute("SELECT pub.feed_id()::text").fetchone() or (None,)
        reset = copy.feed_id is not None and feed_id != copy.feed_id
        if feed_id != copy.feed_id:
            copy.items.clear()
            copy.cursor = 0
            copy.feed_id = feed_id
        while True:
            rows = conn.execute(
                "SELECT rev, kind, source_id, payload, deleted FROM pub.feed(%s, %s)",
                (copy.cursor, page),
            ).fetchall()
            for rev, kind, source_id, payload, deleted in rows:
                if deleted:
                    copy.items.pop((kind, source_id), None)  # a tombstone: the item is gone
                else:
                    copy.items[(kind, source_id)] = payload  # the item's newest payload
                copy.cursor = rev
            if len(rows) < page:
                return reset


def questions_of_topic(copy: Copy, topic_id: int) -> list[Any]:
    """A viewer hides questions of deleted topics itself: they are not tombstoned."""
    if ("topic", topic_id) not in copy.items:
        return []
    return sorted(
        (
            p
            for (kind, _id), p in copy.items.items()
            if kind == "question" and p["topic_id"] == topic_id
        ),
        key=lambda p: (p["exam_name"] or "", p["exam_round"] or 0, p["number"] or 0),
    )


if __name__ == "__main__":
    copy = Copy()
    sync(sys.argv[1], copy)
    print(f"{len(copy.items)} live items, cursor at rev {copy.cursor} of feed {copy.feed_id}")
