"""One page of the feed as the HTTP answer writes it, and its ETag.

The body
--------

The body is written by hand, not by a JSON library, so that each item's ``payload``
appears as the exact bytes its ``payload_hash`` was computed from: a viewer can hash
the bytes between ``"payload":`` and ``,"payload_hash"`` and compare with
``payload_hash`` without any JSON library of its own. The database stores each payload
as ``json`` holding the RFC 8785 canonical text the capture trigger built (revision
0104), and the feed query selects it as text, so the server writes those characters
as they come (UTF-8), never parsing or re-encoding them. The other string fields are
a kind name, a uuid, a hex hash and the feed id: written between quotes as they are
when they hold nothing JSON would escape (checked for each row), through
``json.dumps`` otherwise. An item is one ``%`` formatting of a template: a page of
1,000 items is written in a few milliseconds.

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
``has_more``): a few integers, whatever the page's size. ``limit`` is not part of it:
it changes the body only through the count and ``has_more``. Equal tags mean
byte-equal bodies, which is what a strong ETag promises, what the server's body cache
relies on, and what a CDN or a viewer's ``If-None-Match`` may rely on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

# Part of every ETag: a change in how bodies are written changes every tag.
BODY_FORMAT = "pubctl-feed-2"

# rev, kind, pub_id, source_id, payload (its stored canonical text), payload_hash,
# schema_version, deleted
Row = tuple[int, str, str, int, str, str, int, bool]

_ITEM = (
    '{"rev":%d,"kind":"%s","pub_id":"%s","source_id":%d,"payload":%s,"payload_hash":"%s",'
    '"schema_version":%d,"deleted":'
)
_LIVE = _ITEM + "false}"
_GONE = _ITEM + "true}"
_KINDS = frozenset(("topic", "question", "explanation"))


def _plain(value: str) -> bool:
    """Whether JSON writes ``value`` between quotes as it is: printable ASCII without a
    quote or a backslash (json.dumps would escape anything else)."""
    return value.isascii() and value.isprintable() and '"' not in value and "\\" not in value


def _string(value: str) -> str:
    if _plain(value):
        return f'"{value}"'
    return json.dumps(value)


def _item(row: Row) -> str:
    if row[1] in _KINDS and _plain(row[2]) and _plain(row[5]):
        return (_GONE if row[7] else _LIVE) % row[:7]
    rev, kind, pub_id, source_id, payload_text, payload_hash, schema_version, deleted = row
    return (
        f'{{"rev":{rev:d},"kind":{_string(kind)},"pub_id":{_string(pub_id)},'
        f'"source_id":{source_id:d},"payload":{payload_text},'
        f'"payload_hash":{_string(payload_hash)},"schema_version":{schema_version:d},'
        f'"deleted":{"true" if deleted else "false"}}}'
    )


def encode_item(row: Row) -> bytes:
    """One item: the fields of ``pub.feed`` in its column order, the payload's stored
    bytes as they are."""
    return _item(row).encode()


@dataclass
class Page:
    """The answer to one feed request: up to ``limit`` rows after ``after`` of the kinds
    asked for (``kinds`` as the parameters normalise them; empty: all)."""

    feed_id: str
    after: int
    rows: Sequence[Row]
    has_more: bool
    kinds: tuple[str, ...] = ()
    _etag: str | None = field(default=None, repr=False)
    _body: bytes | None = field(default=None, repr=False)
    count: int = field(init=False, repr=False)
    last_rev: int | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.count = len(self.rows)
        self.last_rev = self.rows[-1][0] if self.rows else None

    @property
    def next_after(self) -> int:
        return self.after if self.last_rev is None else self.last_rev

    def settle(self) -> None:
        """Write the body and the tag now, and let the rows go: a page kept for long
        holds its bytes only (thousands of row tuples per page would otherwise make
        every full garbage collection of the server slower)."""
        _ = self.etag, self.body
        self.rows = ()

    @property
    def etag(self) -> str:
        """A strong ETag: equal tags mean byte-equal bodies (see the module's docstring
        for why the rows themselves need not be hashed)."""
        if self._etag is None:
            words = (
                BODY_FORMAT,
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
            self._body = "".join(
                (
                    '{"items":[',
                    ",".join(map(_item, self.rows)),
                    f'],"next_after":{self.next_after:d},'
                    f'"has_more":{"true" if self.has_more else "false"},'
                    f'"feed_id":{_string(self.feed_id)}}}',
                )
            ).encode()
        return self._body
