"""The SQL projection equals the Python reference byte for byte (property-based)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from pubctl.projection import (
    MAX_SAFE_INTEGER,
    canonical_json,
    items_of,
    payload_hash,
)

from support.db import Database

# Postgres text cannot hold NUL; everything else is fair game, emoji, quotes,
# backslashes, control characters, combining marks and right-to-left text included.
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
tricky = st.sampled_from(
    [
        '"',
        "\\",
        "\u2028",
        "\x7f",
        "\x1f",
        "e\u0301",
        "\u05e9\u05dc\u05d5\u05dd",
        "\U0001f600",
        "</script>",
    ]
)
strings = st.one_of(texts, tricky, st.lists(st.one_of(texts, tricky)).map("".join))
int32 = st.integers(-(2**31), 2**31 - 1)
ids = st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
deleted = st.one_of(st.none(), st.just(datetime(2026, 1, 1, tzinfo=timezone.utc)))

QUESTION_SQL = """
SELECT pub.question_canonical(%(id)s, %(topic_id)s, %(exam_name)s, %(exam_round)s, %(number)s,
                              %(body)s, %(choices)s, %(answer)s, %(deleted_at)s)::text AS q,
       pub.explanation_canonical(%(id)s, %(explanation)s, %(explanation_status)s,
                                 %(deleted_at)s)::text AS e
"""
TOPIC_SQL = (
    "SELECT pub.topic_canonical(%(id)s, %(name)s, %(exam_round_size)s, %(deleted_at)s)::text"
)
HASH_SQL = "SELECT pub.payload_hash(%s)"


@pytest.fixture
def conn(pub_db: Database) -> Any:
    with pub_db.connect() as connection:
        yield connection


def _check(
    conn: psycopg.Connection, canonical: str | None, expected: dict[str, Any] | None
) -> None:
    if expected is None:
        assert canonical is None
        return
    assert canonical is not None
    assert canonical.encode() == canonical_json(expected)
    (sql_hash,) = conn.execute(HASH_SQL, (canonical,)).fetchone()
    assert sql_hash == payload_hash(expected) == hashlib.sha256(canonical.encode()).hexdigest()
    (as_jsonb,) = conn.execute("SELECT %s::jsonb", (canonical,)).fetchone()
    assert as_jsonb == expected


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    row=st.fixed_dictionaries(
        {
            "id": ids,
            "topic_id": ids,
            "exam_name": st.one_of(st.none(), strings),
            "exam_round": st.one_of(st.none(), int32),
            "number": st.one_of(st.none(), int32),
            "body": strings,
            "choices": st.lists(strings, max_size=6),
            "answer": st.one_of(st.none(), int32),
            "explanation": st.one_of(st.none(), strings),
            "explanation_status": st.one_of(st.sampled_from(["ready", "draft", "review"]), strings),
            "deleted_at": deleted,
        }
    )
)
def test_question_parity(conn: psycopg.Connection, row: dict[str, Any]) -> None:
    q_sql, e_sql = conn.execute(QUESTION_SQL, {**row, "choices": Jsonb(row["choices"])}).fetchone()
    q_ref, e_ref = items_of("study_question", row)
    _check(conn, q_sql, q_ref.payload)
    _check(conn, e_sql, e_ref.payload)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    row=st.fixed_dictionaries(
        {
            "id": ids,
            "name": strings,
            "exam_round_size": st.one_of(st.none(), int32),
            "deleted_at": deleted,
        }
    )
)
def test_topic_parity(conn: psycopg.Connection, row: dict[str, Any]) -> None:
    (t_sql,) = conn.execute(TOPIC_SQL, row).fetchone()
    (t_ref,) = items_of("study_topic", row)
    _check(conn, t_sql, t_ref.payload)


def test_tombstone_hash_is_hash_of_empty_object(conn: psycopg.Connection) -> None:
    assert conn.execute(HASH_SQL, ("{}",)).fetchone() == (hashlib.sha256(b"{}").hexdigest(),)


def test_one_megabyte_body(conn: psycopg.Connection) -> None:
    row = {
        "id": 1,
        "topic_id": 2,
        "exam_name": None,
        "exam_round": None,
        "number": None,
        "body": '\u00e9"\\\n' * 262_144,
        "choices": ["x"],
        "answer": None,
        "explanation": None,
        "explanation_status": "draft",
        "deleted_at": None,
    }
    q_sql, _e = conn.execute(QUESTION_SQL, {**row, "choices": Jsonb(row["choices"])}).fetchone()
    _check(conn, q_sql, items_of("study_question", row)[0].payload)


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"choices": Jsonb("a")}, "choices must be a JSON array of strings"),
        ({"choices": Jsonb(["a", 1])}, "choices must be a JSON array of strings"),
        ({"choices": Jsonb({"a": "b"})}, "choices must be a JSON array of strings"),
        ({"choices": None}, "choices must be a JSON array of strings"),
        ({"id": MAX_SAFE_INTEGER + 1}, "within"),
        ({"topic_id": -MAX_SAFE_INTEGER - 1}, "within"),
    ],
)
def test_payload_rule_violations_raise_pb001(
    conn: psycopg.Connection, changes: dict[str, Any], rule: str
) -> None:
    row = {
        "id": 5,
        "topic_id": 2,
        "exam_name": None,
        "exam_round": None,
        "number": None,
        "body": "b",
        "choices": Jsonb(["x"]),
        "answer": None,
        "explanation": None,
        "explanation_status": "ready",
        "deleted_at": None,
        **changes,
    }
    with pytest.raises(psycopg.Error) as info:
        conn.execute(QUESTION_SQL, row)
    assert info.value.sqlstate == "PB001"
    assert rule in str(info.value)
    assert info.value.diag.message_hint


def test_projection_ignores_a_hostile_search_path(conn: psycopg.Connection) -> None:
    """A function named like a builtin in an earlier schema is never called."""
    conn.execute(
        """
        CREATE SCHEMA evil;
        CREATE FUNCTION evil.to_json(anyelement) RETURNS json
            LANGUAGE sql AS $$ SELECT '"pwned"'::json $$;
        CREATE FUNCTION evil.sha256(bytea) RETURNS bytea
            LANGUAGE sql AS $$ SELECT '\\x00'::bytea $$;
        SET search_path = evil, pg_catalog, public;
        """
    )
    (t,) = conn.execute(
        TOPIC_SQL, {"id": 1, "name": "n", "exam_round_size": 1, "deleted_at": None}
    ).fetchone()
    assert t == '{"exam_round_size":1,"name":"n","topic_id":1}'
    assert conn.execute(HASH_SQL, ("{}",)).fetchone() == (hashlib.sha256(b"{}").hexdigest(),)


def test_projection_functions_are_inlined(conn: psycopg.Connection) -> None:
    plan = conn.execute(
        "EXPLAIN VERBOSE SELECT pub.topic_canonical(g, 'x', 1, NULL) FROM generate_series(1, 2) g"
    ).fetchall()
    text = "\n".join(line for (line,) in plan)
    assert "topic_canonical" not in text, text
