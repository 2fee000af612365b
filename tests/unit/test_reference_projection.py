"""The Python reference projection follows the contract's words."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from pubctl.projection import (
    PayloadRuleError,
    canonical_json,
    items_of,
    payload_hash,
)

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def question(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": 7,
        "topic_id": 3,
        "exam_name": "Spring",
        "exam_round": 2,
        "number": 5,
        "body": "Which?",
        "choices": ["a", "b"],
        "answer": 1,
        "explanation": "Because",
        "explanation_status": "ready",
        "deleted_at": None,
    }
    row.update(overrides)
    return row


def test_topic_canonical_bytes() -> None:
    (item,) = items_of(
        "study_topic", {"id": 1, "name": "Anatomy", "exam_round_size": None, "deleted_at": None}
    )
    assert canonical_json(item.published_payload) == (
        b'{"exam_round_size":null,"name":"Anatomy","topic_id":1}'
    )
    assert item.payload_hash == hashlib.sha256(canonical_json(item.published_payload)).hexdigest()


def test_question_and_explanation() -> None:
    q, e = items_of("study_question", question())
    assert q.kind == "question" and q.source_id == 7
    assert canonical_json(q.published_payload) == (
        b'{"answer":1,"body":"Which?","choices":["a","b"],"exam_name":"Spring",'
        b'"exam_round":2,"number":5,"question_id":7,"topic_id":3}'
    )
    assert e.payload == {"question_id": 7, "explanation": "Because"}


def test_ready_explanation_with_null_text_is_live() -> None:
    _q, e = items_of("study_question", question(explanation=None))
    assert e.payload == {"question_id": 7, "explanation": None}


@pytest.mark.parametrize("status", ["draft", "review", "READY", ""])
def test_explanation_not_ready_is_a_tombstone(status: str) -> None:
    _q, e = items_of("study_question", question(explanation_status=status))
    assert e.deleted and e.published_payload == {}


def test_soft_deleted_rows_are_tombstones() -> None:
    q, e = items_of("study_question", question(deleted_at=NOW))
    assert q.deleted and e.deleted
    (t,) = items_of("study_topic", {"id": 1, "name": "x", "exam_round_size": 3, "deleted_at": NOW})
    assert t.deleted
    assert t.payload_hash == payload_hash({}) == hashlib.sha256(b"{}").hexdigest()


@pytest.mark.parametrize(
    ("overrides", "rule"),
    [
        ({"choices": "a"}, "array of strings"),
        ({"choices": ["a", 1]}, "array of strings"),
        ({"choices": {"a": "b"}}, "array of strings"),
        ({"id": 2**53}, "JSON-safe range"),
        ({"topic_id": -(2**53)}, "JSON-safe range"),
    ],
)
def test_payload_rules(overrides: dict[str, object], rule: str) -> None:
    with pytest.raises(PayloadRuleError, match=rule):
        items_of("study_question", question(**overrides))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.text(st.characters(blacklist_categories=("Cs",))),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(st.characters(max_codepoint=127), max_size=6), children, max_size=4
        )
    ),
    max_leaves=12,
)


@settings(deadline=None)  # examples: the profile (tests/conftest.py)
@given(
    payload=st.dictionaries(
        st.text(st.characters(max_codepoint=127), max_size=8), json_values, max_size=8
    )
)
def test_fast_canonical_path_equals_rfc8785(payload: dict[str, object]) -> None:
    assert canonical_json(payload) == bytes(rfc8785.dumps(payload))


@pytest.mark.parametrize(
    "payload",
    [{"x": 1.5}, {"x": 2**60}, {"é": 1, "e": 2}, {"x": [1.0, "a"]}, {"\u00e9\U0001f600": None}],
)
def test_outside_the_fast_domain_rfc8785_decides(payload: dict[str, object]) -> None:
    try:
        expected = bytes(rfc8785.dumps(payload))
    except Exception as exc:
        with pytest.raises(type(exc)):
            canonical_json(payload)
        return
    assert canonical_json(payload) == expected


# What verify ships for a row that publishes nothing: its id and deleted_at, every other
# projected column null (pub.source_projection).
def _shipped_deleted(table_columns: tuple[str, ...], row_id: int) -> dict[str, object]:
    return {**dict.fromkeys(table_columns), "id": row_id, "deleted_at": "2026-01-01T00:00:00+00:00"}


QUESTION_COLUMNS = tuple(question())
TOPIC_COLUMNS = ("id", "name", "exam_round_size", "deleted_at")


@pytest.mark.parametrize("row_id", [2**53, 2**60, -(2**63), 2**63 - 1])
def test_deleted_rows_beyond_the_json_safe_range_are_tombstones(row_id: int) -> None:
    """The JSON-safe range is a payload rule: a row that publishes no payload breaks none,
    whatever its id, and none of its other values are read."""
    (t,) = items_of("study_topic", _shipped_deleted(TOPIC_COLUMNS, row_id))
    assert (t.kind, t.source_id, t.deleted) == ("topic", row_id, True)
    q, e = items_of("study_question", _shipped_deleted(QUESTION_COLUMNS, row_id))
    assert (q.source_id, q.deleted, e.source_id, e.deleted) == (row_id, True, row_id, True)
    deleted_with_bad_values = question(id=row_id, deleted_at=NOW, choices={"a": 1}, topic_id=2**60)
    assert all(i.deleted for i in items_of("study_question", deleted_with_bad_values))


@pytest.mark.parametrize("row_id", [2**53, -(2**53), 2**60, -(2**63), 2**63 - 1])
def test_live_rows_beyond_the_json_safe_range_break_the_rules(row_id: int) -> None:
    with pytest.raises(PayloadRuleError, match="JSON-safe range"):
        items_of(
            "study_topic", {"id": row_id, "name": "t", "exam_round_size": None, "deleted_at": None}
        )
    with pytest.raises(PayloadRuleError, match="JSON-safe range"):
        items_of("study_question", question(id=row_id, explanation_status="draft"))


def test_an_explanation_that_is_not_ready_is_never_read() -> None:
    """verify ships no explanation that is not ready: the reference does not need it."""
    _q, e = items_of("study_question", question(explanation_status="draft", explanation=None))
    assert e.deleted
    _q, e = items_of("study_question", question(explanation_status="draft", explanation=object()))
    assert e.deleted


@pytest.mark.parametrize("row_id", [True, 1.0, "1", None])
def test_an_id_must_be_an_integer_even_for_a_tombstone(row_id: object) -> None:
    with pytest.raises(PayloadRuleError, match="must be an integer"):
        items_of(
            "study_topic", {"id": row_id, "name": None, "exam_round_size": None, "deleted_at": NOW}
        )
