"""One page of the feed as the HTTP answer writes it, and its ETag.

The body is written by hand, not by a JSON library, so that each item's ``payload``
appears as its RFC 8785 canonical bytes: a viewer can hash the exact bytes between
``"payload":`` and ``,"payload_hash"`` and compare with ``payload_hash`` without any
JSON library of its own. Payloads come from the database as jsonb text (jsonb orders
keys by length and adds spaces, which is not canonical); they are parsed with
``json.loads`` (our payloads hold only integers, so numbers stay exact) and written
with ``pubctl.projection.canonical_json``.

The ETag is a hash of the rows as the database returned them, plus everything else the
body holds, so a conditional GET that matches is answered without encoding anything:
the body is a pure function of those rows and the request.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from pubctl.projection import canonical_json

# Part of every ETag: a change in how bodies are written changes every tag.
BODY_FORMAT = b"pubctl-feed-1"

# rev, kind, pub_id, source_id, payload (jsonb text), payload_hash, schema_version, deleted
Row = tuple[int, str, str, int, str, str, int, bool]


def _string(value: str) -> bytes:
    return json.dumps(value).encode("ascii")


def encode_item(row: Row) -> bytes:
    """One item: the fields of ``pub.feed`` in its column order, payload canonical."""
    rev, kind, pub_id, source_id, payload_text, payload_hash, schema_version, deleted = row
    return b"".join(
        (
            b'{"rev":%d,"kind":%s,"pub_id":%s,"source_id":%d,"payload":'
            % (rev, _string(kind), _string(pub_id), source_id),
            canonical_json(json.loads(payload_text)),
            b',"payload_hash":%s,"schema_version":%d,"deleted":%s}'
            % (_string(payload_hash), schema_version, b"true" if deleted else b"false"),
        )
    )


@dataclass
class Page:
    """The answer to one feed request: up to ``limit`` rows after ``after``."""

    feed_id: str
    after: int
    rows: Sequence[Row]
    has_more: bool
    _etag: str | None = field(default=None, repr=False)
    _body: bytes | None = field(default=None, repr=False)

    @property
    def next_after(self) -> int:
        return self.rows[-1][0] if self.rows else self.after

    @property
    def etag(self) -> str:
        """A strong ETag: equal tags mean byte-equal bodies."""
        if self._etag is None:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(b"%s\x1f%s\x1f%d\x1f%d\x1e" % (
                BODY_FORMAT, self.feed_id.encode(), self.after, self.has_more,
            ))  # fmt: skip
            for row in self.rows:
                digest.update("\x1f".join(map(str, row)).encode("utf-8", "surrogatepass"))
                digest.update(b"\x1e")
            self._etag = f'"{digest.hexdigest()}"'
        return self._etag

    @property
    def body(self) -> bytes:
        """``{"items": [...], "next_after": REV, "has_more": bool, "feed_id": F}``."""
        if self._body is None:
            self._body = b"".join(
                (
                    b'{"items":[',
                    b",".join(map(encode_item, self.rows)),
                    b'],"next_after":%d,"has_more":%s,"feed_id":%s}'
                    % (
                        self.next_after,
                        b"true" if self.has_more else b"false",
                        _string(self.feed_id),
                    ),
                )
            )
        return self._body

    @property
    def last_rev(self) -> int | None:
        return self.rows[-1][0] if self.rows else None
