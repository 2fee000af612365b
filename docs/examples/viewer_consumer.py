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


# The identity and one page in one statement, so both come from one snapshot: a page can
# never be taken for part of a state it does not belong to. An empty page is one row
# with the identity and NULL item columns.
PAGE = """
SELECT i.feed_id::text, f.rev, f.kind, f.source_id, f.payload, f.deleted
FROM (SELECT pub.feed_id() AS feed_id) AS i
LEFT JOIN LATERAL pub.feed(%s, %s) AS f ON true
ORDER BY f.rev
"""


def sync(url: str, copy: Copy, page: int = 1000) -> bool:
    """Apply every change after ``copy.cursor``. Returns True when the published state
    was replaced since the last sync: the copy was then dropped and rebuilt from rev 0."""
    reset = False
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            rows = conn.execute(PAGE, (copy.cursor, page)).fetchall()
            feed_id = rows[0][0]
            if feed_id != copy.feed_id:
                # Another published state: its revs have nothing to do with the cursor.
                reset = reset or copy.feed_id is not None
                read_from_start = copy.cursor == 0
                copy.items.clear()
                copy.cursor = 0
                copy.feed_id = feed_id
                if not read_from_start:
                    continue  # read again from rev 0 of the state now current
            items = [row[1:] for row in rows if row[1] is not None]
            for rev, kind, source_id, payload, deleted in items:
                if deleted:
                    copy.items.pop((kind, source_id), None)  # a tombstone: the item is gone
                else:
                    copy.items[(kind, source_id)] = payload  # the item's newest payload
                copy.cursor = rev
            if len(items) < page:
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
