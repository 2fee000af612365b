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


def _choices(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise PayloadRuleError("choices must be a JSON array of strings")
    return list(value)


def topic_items(row: Mapping[str, Any]) -> list[Item]:
    """The items a ``study_topic`` row publishes (one: the topic).

    Only what is published is read: of a deleted row, its id and ``deleted_at``."""
    topic_id = _id(row["id"], "study_topic.id")
    payload = None
    if row["deleted_at"] is None:
        payload = {
            "topic_id": _safe_int(topic_id, "study_topic.id"),
            "name": row["name"],
            "exam_round_size": _safe_int(row["exam_round_size"], "exam_round_size"),
        }
    return [Item("topic", topic_id, payload)]


def question_items(row: Mapping[str, Any]) -> list[Item]:
    """The items a ``study_question`` row publishes: the question and its explanation.

    Only what is published is read: of a deleted row, its id and ``deleted_at``; the
    explanation only while ``explanation_status`` is 'ready'."""
    question_id = _id(row["id"], "study_question.id")
    live = row["deleted_at"] is None
    question = None
    explanation = None
    if live:
        question = {
            "question_id": _safe_int(question_id, "study_question.id"),
            "topic_id": _safe_int(row["topic_id"], "topic_id"),
            "exam_name": row["exam_name"],
            "exam_round": _safe_int(row["exam_round"], "exam_round"),
            "number": _safe_int(row["number"], "number"),
            "body": row["body"],
            "choices": _choices(row["choices"]),
            "answer": _safe_int(row["answer"], "answer"),
        }
        if row["explanation_status"] == "ready":
            explanation = {"question_id": question_id, "explanation": row["explanation"]}
    return [Item("question", question_id, question), Item("explanation", question_id, explanation)]


# The reference projection of each source table's rows.
ITEMS_OF_TABLE = {"study_topic": topic_items, "study_question": question_items}


def items_of(table: str, row: Mapping[str, Any]) -> list[Item]:
    """The items a row of ``table`` publishes."""
    return ITEMS_OF_TABLE[table](row)
