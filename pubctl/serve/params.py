"""The query parameters of ``GET /published/feed``, checked strictly.

Every parameter is named once at most (``kind`` may repeat), numbers are plain decimal
digits within their bounds, and an unknown parameter is refused rather than ignored:
a typo such as ``kinds=topic`` would otherwise silently return every kind.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from urllib.parse import unquote_plus

from pubctl.sources import KINDS

MAX_AFTER = 2**63 - 1
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
MAX_WAIT_S = 60.0
# Far above any valid query (three kinds, four numbers and a uuid fit in 200 bytes).
MAX_QUERY_BYTES = 4096

_DIGITS = re.compile(r"[0-9]{1,19}")
_SECONDS = re.compile(r"[0-9]{1,2}(?:\.[0-9]{1,6})?")
_KNOWN = ("after", "limit", "kind", "wait", "feed_id")


class BadParameter(Exception):
    """A query parameter the feed refuses: 400 with ``error`` and ``parameter``."""

    def __init__(self, parameter: str, error: str) -> None:
        super().__init__(error)
        self.parameter = parameter
        self.error = error


@dataclass(frozen=True)
class FeedParams:
    """One feed request: the cursor, the page size, the kinds (None = all), how long
    to hold an empty answer, and the feed identity the cursor belongs to."""

    after: int = 0
    limit: int = DEFAULT_LIMIT
    kinds: tuple[str, ...] | None = None
    wait: float = 0.0
    feed_id: str | None = None


def _fields(query_string: bytes) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    for part in query_string.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        fields.append(
            (
                unquote_plus(name.decode("latin-1"), errors="replace"),
                unquote_plus(value.decode("latin-1"), errors="replace"),
            )
        )
    return fields


def _shown(name: str) -> str:
    """A client-supplied name as it may appear in an answer: short and printable."""
    clean = "".join(c if c.isprintable() else "?" for c in name[:40])
    return clean + ("..." if len(name) > 40 else "")


def _too_long(query_string: bytes, size: int) -> BadParameter:
    longest = max(query_string.split(b"&"), key=len)
    name = unquote_plus(longest.partition(b"=")[0].decode("latin-1"), errors="replace")
    return BadParameter(
        name if name in _KNOWN else "query",
        f"the query string is {size} bytes; at most {MAX_QUERY_BYTES} are accepted",
    )


def _integer(name: str, value: str, low: int, high: int) -> int:
    if not _DIGITS.fullmatch(value) or not low <= int(value) <= high:
        raise BadParameter(name, f"{name} must be an integer from {low} to {high}")
    return int(value)


def parse_feed_query(query_string: bytes, size: int | None = None) -> FeedParams:
    """Parse and check the raw query string; raise ``BadParameter`` on the first
    problem. ``size``: the query's real length when the server kept only its start."""
    size = max(size or 0, len(query_string))
    if size > MAX_QUERY_BYTES:
        raise _too_long(query_string, size)
    seen: dict[str, str] = {}
    kinds: list[str] = []
    for name, value in _fields(query_string):
        if name not in _KNOWN:
            raise BadParameter(
                _shown(name), f"unknown parameter; known ones are {', '.join(_KNOWN)}"
            )
        if name == "kind":
            if value not in KINDS:
                raise BadParameter("kind", f"kind must be one of {', '.join(KINDS)}")
            if value not in kinds:
                kinds.append(value)
            continue
        if name in seen:
            raise BadParameter(name, f"{name} is given more than once")
        seen[name] = value
    after = _integer("after", seen["after"], 0, MAX_AFTER) if "after" in seen else 0
    limit = _integer("limit", seen["limit"], 1, MAX_LIMIT) if "limit" in seen else DEFAULT_LIMIT
    wait = 0.0
    if "wait" in seen:
        text = seen["wait"]
        if not _SECONDS.fullmatch(text) or float(text) > MAX_WAIT_S:
            raise BadParameter("wait", f"wait must be a number of seconds from 0 to {MAX_WAIT_S:g}")
        wait = float(text)
    feed_id = None
    if "feed_id" in seen:
        try:
            feed_id = str(uuid.UUID(seen["feed_id"]))
        except ValueError:
            raise BadParameter("feed_id", "feed_id must be a uuid") from None
    return FeedParams(
        after=after,
        limit=limit,
        kinds=tuple(sorted(kinds, key=KINDS.index)) if kinds else None,
        wait=wait,
        feed_id=feed_id,
    )
