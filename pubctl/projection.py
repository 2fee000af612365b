"""The reference projection in Python: what each source row publishes, and its hash.

The database has its own projection (the one triggers, backfill and verify use); this
module is the independent second opinion that tests and ``pubctl verify`` hold the SQL
against. It follows the contract's words directly and uses the ``rfc8785`` package for
the canonical bytes, so it shares no code with the SQL it checks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import rfc8785

from pubctl.sources import BY_TABLE, ID_TYPES, JSON_STRING_ARRAY, Field, Kind, Source

SCHEMA_VERSION = 1
TOMBSTONE: dict[str, Any] = {}
# RFC 8785 numbers are IEEE doubles: integers beyond this lose precision, so the
# payload rules refuse them rather than publish a different number.
MAX_SAFE_INTEGER = 2**53 - 1


class PayloadRuleError(ValueError):
    """A source row that cannot be published as it is."""


@dataclass(frozen=True)
class Item:
    """One published item as the source says it should be: ``payload`` None = tombstone."""

    kind: str
    source_id: int
    payload: dict[str, Any] | None

    @property
    def deleted(self) -> bool:
        return self.payload is None

    @property
    def published_payload(self) -> dict[str, Any]:
        return TOMBSTONE if self.payload is None else self.payload

    @property
    def payload_hash(self) -> str:
        return payload_hash(self.published_payload)


def _plain(value: Any) -> bool:
    r"""Whether ``value`` lies in the domain where Python's C JSON encoder (sorted keys,
    compact separators, no ASCII escaping) writes exactly RFC 8785's bytes: strings,
    integers within +-(2^53-1), null, booleans, arrays, objects with ASCII keys. There
    the two escape strings identically (\" \\ \b \f \n \r \t, other control
    characters as lowercase \u00xx, the rest literal) and sort ASCII keys alike."""
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return True
    if kind is int:
        return bool(-MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER)
    if kind is list:
        return all(map(_plain, value))
    if kind is dict:
        return all(type(k) is str and k.isascii() for k in value) and all(
            map(_plain, value.values())
        )
    return False


def canonical_json(payload: Mapping[str, Any]) -> bytes:
    """The RFC 8785 (JSON Canonicalization Scheme) bytes of a payload.

    Payloads of our kinds take the C encoder's fast path (see ``_plain``; a property
    test holds it byte-equal to ``rfc8785``); anything else (floats, huge integers,
    non-ASCII keys) goes through the ``rfc8785`` package itself.
    """
    if _plain(payload):
        text = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return text.encode("utf-8")
    return bytes(rfc8785.dumps(dict(payload)))


def payload_hash(payload: Mapping[str, Any]) -> str:
    """Lowercase hex SHA-256 of the payload's canonical JSON bytes."""
    return hashlib.sha256(canonical_json(payload)).hexdigest()


def _id(value: Any, column: str) -> int:
    """A row's id: any integer names the item (a tombstone carries no payload, so the
    JSON-safe range is a payload rule for live rows only)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadRuleError(f"{column} must be an integer, got {value!r}")
    return value


def _safe_int(value: Any, column: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadRuleError(f"{column} must be an integer, got {value!r}")
    if abs(value) > MAX_SAFE_INTEGER:
        raise PayloadRuleError(f"{column} = {value} is outside the JSON-safe range ±(2^53-1)")
    return value


def _live(kind: Kind, row: Mapping[str, Any]) -> bool:
    """Whether the row's item of ``kind`` is live: its liveness columns say so."""
    return all(row[column] is None for column in kind.live_when_null) and all(
        row[column] == value for column, value in kind.live_when_equal
    )


def _value(source: Source, kind: Kind, field: Field, row: Mapping[str, Any]) -> Any:
    """A field's JSON value, by the type of the column it reads, with its rules."""
    column = source.column(field.column)
    value = row[field.column]
    if column.types == JSON_STRING_ARRAY:
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise PayloadRuleError(f"{kind.name}: {field.key} must be a JSON array of strings")
        return list(value)
    if value is None:
        if not field.nullable:
            raise PayloadRuleError(f"{kind.name}: {field.key} must not be null")
        return None
    if set(column.types) <= set(ID_TYPES):
        return _safe_int(value, f"{source.table}.{column.name}")
    if not isinstance(value, str):
        raise PayloadRuleError(f"{source.table}.{column.name} must be text, got {value!r}")
    return value


def items_of(table: str, row: Mapping[str, Any]) -> list[Item]:
    """The items a row of ``table`` publishes, one per kind of its source, in the
    definition's order (:mod:`pubctl.sources`): the payload of each live item, a
    tombstone for the others.

    Only what is published is read: of a row, its key and its liveness columns; a field
    only while its item is live."""
    source = BY_TABLE[table]
    key = _id(row[source.key.name], f"{table}.{source.key.name}")
    return [
        Item(
            kind.name,
            key,
            {f.key: _value(source, kind, f, row) for f in kind.fields}
            if _live(kind, row)
            else None,
        )
        for kind in source.publishes
    ]
