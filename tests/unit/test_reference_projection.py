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
    payload_hash,
    question_items,
    topic_items,
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
    (item,) = topic_items({"id": 1, "name": "Anatomy", "exam_round_size": None, "deleted_at": None})
    assert canonical_json(item.published_payload) == (
        b'{"exam_round_size":null,"name":"Anatomy","topic_id":1}'
    )
    assert item.payload_hash == hashlib.sha256(canonical_json(item.published_payload)).hexdigest()


def test_question_and_explanation() -> None:
    q, e = question_items(question())
    assert q.kind == "question" and q.source_id == 7
    assert canonical_json(q.published_payload) == (
        b'{"answer":1,"body":"Which?","choices":["a","b"],"exam_name":"Spring",'
        b'"exam_round":2,"number":5,"question_id":7,"topic_id":3}'
    )
    assert e.payload == {"question_id": 7, "explanation": "Because"}


def test_ready_explanation_with_null_text_is_live() -> None:
    _q, e = question_items(question(explanation=None))
    assert e.payload == {"question_id": 7, "explanation": None}


@pytest.mark.parametrize("status", ["draft", "review", "READY", ""])
def test_explanation_not_ready_is_a_tombstone(status: str) -> None:
    _q, e = question_items(question(explanation_status=status))
    assert e.deleted and e.published_payload == {}


def test_soft_deleted_rows_are_tombstones() -> None:
    q, e = question_items(question(deleted_at=NOW))
    assert q.deleted and e.deleted
    (t,) = topic_items({"id": 1, "name": "x", "exam_round_size": 3, "deleted_at": NOW})
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
        question_items(question(**overrides))


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
