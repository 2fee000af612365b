"""The query parameters of ``GET /published/feed``, checked strictly.

Every parameter is named once at most (``kind`` may repeat), integers are plain
decimal digits within their bounds, ``wait`` is any JSON number from 0 to 60 (``0.5``,
``1.802744152145689``, ``1e1``), ``feed_id`` a uuid written 8-4-4-4-12, and an unknown
parameter is refused rather than ignored: a typo such as ``kinds=topic`` would
otherwise silently return every kind. The OpenAPI description (``openapi.py``) states
the same rules.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import unquote_plus

from pubctl.sources import KINDS

MAX_AFTER = 2**63 - 1
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
MAX_WAIT_S = 60
# ``kind`` may repeat (three kinds, each any number of times): at most this often.
MAX_KINDS = 16
# Far above any valid query (three kinds, four numbers and a uuid fit in 200 bytes).
MAX_QUERY_BYTES = 4096

_DIGITS = re.compile(r"[0-9]{1,19}")
# A JSON number (leading zeros tolerated): sign, digits, fraction, exponent.
_NUMBER = re.compile(r"(-?)([0-9]+(?:\.[0-9]+)?)(?:[eE]([+-]?)([0-9]+))?")
# 8-4-4-4-12 hex digits, as JSON Schema's "uuid" format has it (any case).
_UUID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
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


def _seconds(name: str, value: str, high: int) -> float:
    """Any JSON number from 0 to ``high``, compared exactly (``60.0000000001`` is
    refused, ``-0`` is 0); a value below 1e-999999 is 0."""
    match = _NUMBER.fullmatch(value)
    error = BadParameter(name, f"{name} must be a number of seconds from 0 to {high}")
    if match is None:
        raise error
    negative, mantissa, exponent_sign, exponent = match.groups(default="")
    if not mantissa.strip("0."):
        return 0.0
    if negative:
        raise error
    exponent = exponent.lstrip("0") or "0"
    if len(exponent) > 6:  # 1e1000000 and beyond: far above 60, or far below a nanosecond
        if exponent_sign == "-":
            return 0.0
        raise error
    number = Decimal(f"{mantissa}e{exponent_sign}{exponent}")
    if number > high:
        raise error
    return float(number)


def parse_feed_query(query_string: bytes, size: int | None = None) -> FeedParams:
    """Parse and check the raw query string; raise ``BadParameter`` on the first
    problem. ``size``: the query's real length when the server kept only its start."""
    size = max(size or 0, len(query_string))
    if size > MAX_QUERY_BYTES:
        raise _too_long(query_string, size)
    seen: dict[str, str] = {}
    kinds: list[str] = []
    repeats = 0
    for name, value in _fields(query_string):
        if name not in _KNOWN:
            raise BadParameter(
                _shown(name), f"unknown parameter; known ones are {', '.join(_KNOWN)}"
            )
        if name == "kind":
            if value not in KINDS:
                raise BadParameter("kind", f"kind must be one of {', '.join(KINDS)}")
            repeats += 1
            if repeats > MAX_KINDS:
                raise BadParameter("kind", f"kind is given more than {MAX_KINDS} times")
            if value not in kinds:
                kinds.append(value)
            continue
        if name in seen:
            raise BadParameter(name, f"{name} is given more than once")
        seen[name] = value
    after = _integer("after", seen["after"], 0, MAX_AFTER) if "after" in seen else 0
    limit = _integer("limit", seen["limit"], 1, MAX_LIMIT) if "limit" in seen else DEFAULT_LIMIT
    wait = _seconds("wait", seen["wait"], MAX_WAIT_S) if "wait" in seen else 0.0
    feed_id = None
    if "feed_id" in seen:
        if not _UUID.fullmatch(seen["feed_id"]):
            raise BadParameter("feed_id", "feed_id must be a uuid (8-4-4-4-12 hex digits)")
        feed_id = str(uuid.UUID(seen["feed_id"]))
    return FeedParams(
        after=after,
        limit=limit,
        kinds=tuple(sorted(kinds, key=KINDS.index)) if kinds else None,
        wait=wait,
        feed_id=feed_id,
    )
