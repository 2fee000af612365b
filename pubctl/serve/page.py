"""One page of the feed as the HTTP answer writes it, and its ETag.

The body
--------

The items are written by PostgreSQL, not by Python: the feed query
(``feed_page_items`` in ``sql/queries.sql``, the one definition of an item's JSON form,
which ``pubctl feed`` prints too) returns the feed id, the item count, the last rev,
``has_more`` and the page's items already joined into one text. Each item's
``payload`` is the stored ``json`` value as text: the RFC 8785 canonical bytes the
capture trigger built (revision 0104), never parsed or re-encoded, so a viewer can hash
the bytes between ``"payload":`` and ``,"payload_hash"`` and compare with
``payload_hash`` without any JSON library of its own. The server receives five values
per page instead of eight per item, and writes the body as
``{"items":[`` + that text + ``],"next_after":...,"has_more":...,"feed_id":...}``.

The ETag, without hashing the rows
----------------------------------

A page is the items of the asked kinds with a rev in ``(after, L]``, where ``L`` is the
rev of its last item, plus ``has_more``, ``next_after`` and the feed id. Since revision
0104 every change a reader can see gives the item a new rev larger than every rev
published so far (an item that changes leaves its old rev for the new one), so within
one feed id:

- no rev ever *appears* in ``(after, L]`` after a page holding ``L`` was read: a new
  rev is larger than the last rev published, which is at least ``L``; and a rev only
  becomes visible after every smaller one is visible;
- a rev that is still present means the same item with the same content: it was never
  rewritten in place;
- so over time the set of items in ``(after, L]`` can only lose members (items that
  moved to a larger rev, tombstones pruned), never gain or change one.

Two reads of the same question (``after``, ``kinds``) in the same feed that hold the
same number of items and end at the same ``L`` therefore hold the same set of items,
each with the same content: the items are byte-equal. ``next_after`` is ``L`` (or
``after`` when empty) and the rest of the body is ``has_more`` and the feed id. The
tag is thus a hash of (body format, feed id, after, kinds, item count, ``L``,
``has_more``) and of the database's pubctl revision, since a migration may rewrite the
stored bytes of the same revs without a new rev or feed id: a few words, whatever the
page's size. ``limit`` is not part of it, nor the byte bound of a page: they change the
body only through the count and ``has_more``. Equal tags mean byte-equal bodies, which
is what a strong ETag promises and what a CDN or a viewer's ``If-None-Match`` relies on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

# Part of every ETag: a change in how bodies are written changes every tag.
BODY_FORMAT = "pubctl-feed-4"


def _string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


@dataclass
class Page:
    """The answer to one feed request: ``count`` items after ``after`` of the kinds
    asked for (``kinds`` as the parameters normalise them; empty: all), the last of
    them at ``last_rev``; ``items`` is their JSON texts joined by commas, as the feed
    query writes them (UTF-8)."""

    feed_id: str
    after: int
    items: bytes
    count: int
    last_rev: int | None
    has_more: bool
    kinds: tuple[str, ...] = ()
    # The pubctl revision of the database and its last rev, from the snapshot the page
    # was read in (serve's query): the state the page belongs to.
    revision: str = ""
    head_rev: int | None = None
    _etag: str | None = field(default=None, repr=False)
    _body: bytes | None = field(default=None, repr=False)

    @property
    def next_after(self) -> int:
        return self.after if self.last_rev is None else self.last_rev

    def settle(self) -> None:
        """Write the body and the tag now, and let the items' text go: a page kept for
        long holds its bytes only."""
        _ = self.etag, self.body
        self.items = b""

    @property
    def etag(self) -> str:
        """A strong ETag: equal tags mean byte-equal bodies (see the module's docstring
        for why the items themselves need not be hashed)."""
        if self._etag is None:
            words = (
                BODY_FORMAT,
                self.revision,
                self.feed_id,
                str(self.after),
                ",".join(self.kinds),
                str(self.count),
                str(self.next_after),
                "1" if self.has_more else "0",
            )
            digest = hashlib.blake2b("\x1f".join(words).encode(), digest_size=16)
            self._etag = f'"{digest.hexdigest()}"'
        return self._etag

    @property
    def body(self) -> bytes:
        """``{"items": [...], "next_after": REV, "has_more": bool, "feed_id": F}``."""
        if self._body is None:
            tail = (
                f'],"next_after":{self.next_after:d},'
                f'"has_more":{"true" if self.has_more else "false"},'
                f'"feed_id":{_string(self.feed_id)}}}'
            )
            self._body = b"".join((b'{"items":[', self.items, tail.encode()))
        return self._body
