"""The source registry: its shape, and the check `pubctl migrate` makes with it."""

from __future__ import annotations

from typing import Any

from pubctl import sources
from pubctl.sources import QUESTIONS, SOURCES, TOPICS, problems


def test_every_kind_has_exactly_one_source() -> None:
    assert sources.KINDS == ("topic", "question", "explanation")
    assert len(set(sources.KINDS)) == len(sources.KINDS)
    assert {kind: s.table for kind, s in sources.BY_KIND.items()} == {
        "topic": "study_topic",
        "question": "study_question",
        "explanation": "study_question",
    }
    assert [s.main_kind for s in SOURCES] == ["topic", "question"]
    assert sources.BY_TARGET == {"topics": TOPICS, "questions": QUESTIONS}
    assert sources.BY_TABLE == {"study_topic": TOPICS, "study_question": QUESTIONS}


def test_every_source_has_a_key_and_liveness() -> None:
    for source in SOURCES:
        names = [c.name for c in source.columns]
        assert names[0] == "id" and "deleted_at" in names
        assert len(set(names)) == len(names)
        assert all(column.types for column in source.columns)


def _catalog(**overrides: Any) -> list[dict[str, Any]]:
    """Catalog rows (as the source_columns query returns them) of fit tables."""
    rows = []
    for source in SOURCES:
        for column in source.columns:
            row = {
                "table_name": source.table,
                "column_name": column.name,
                "type_name": column.types[-1],
                "is_primary_key": column.name == "id",
                "deferrable_key": False,
                "relkind": "r",
                "has_children": False,
            }
            key = f"{source.table}.{column.name}"
            row.update(overrides.get(key, {}))
            if key not in overrides.get("drop", ()):
                rows.append(row)
    return rows


def test_fit_tables_have_no_problems() -> None:
    assert problems(_catalog(), "public") == []


def test_each_problem_is_one_line_naming_the_object() -> None:
    assert problems(_catalog(drop=("study_question.body",)), "app") == [
        "column app.study_question.body is missing"
    ]
    assert problems(
        _catalog(**{"study_topic.exam_round_size": {"type_name": "bigint"}}), "app"
    ) == ["column app.study_topic.exam_round_size is bigint, expected smallint or integer"]
    assert problems(_catalog(**{"study_topic.id": {"is_primary_key": False}}), "app") == [
        "column app.study_topic.id is not the primary key"
    ]
    deferrable = problems(_catalog(**{"study_topic.id": {"deferrable_key": True}}), "app")
    assert len(deferrable) == 1 and "DEFERRABLE" in deferrable[0]
    partitioned = problems(
        _catalog(**{f"study_question.{c.name}": {"relkind": "p"} for c in QUESTIONS.columns}),
        "app",
    )
    assert len(partitioned) == 1 and "partitioned" in partitioned[0]
    children = problems(
        _catalog(**{f"study_topic.{c.name}": {"has_children": True} for c in TOPICS.columns}),
        "app",
    )
    assert len(children) == 1 and "inheritance children" in children[0]


def test_a_missing_table_is_one_line() -> None:
    rows = [r for r in _catalog() if r["table_name"] != "study_topic"]
    assert problems(rows, "public") == ["table public.study_topic is missing"]
