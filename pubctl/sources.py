"""The sources: the application's tables pubctl publishes from, and what each publishes.

This is the one place that knows, on the Python side, which tables exist, which kinds
each publishes, which columns the projection reads (with the types it accepts) and the
name a backfill uses for it. The SQL side holds the same columns in
``pub.source_columns`` (``sql/schema/20_projection.sql``; a test holds the two equal).
Adding a kind or a projected column also touches the SQL projection and capture, the
Python reference projection and a migration: docs/operations.md, "Changing a payload",
lists every place.

Liveness is each row's own: a row is live while ``deleted_at`` is NULL; a question's
explanation is live while the question is and ``explanation_status`` is 'ready'.

It also holds the check ``pubctl migrate`` makes before installing anything
(:func:`problems`); once installed, the database makes the same check itself
(``pub.source_shape_problems``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ID_TYPES = ("smallint", "integer", "bigint")
INT_TYPES = ("smallint", "integer")
TEXT_TYPES = ("text", "character varying")
TIMESTAMP_TYPES = ("timestamp with time zone", "timestamp without time zone")


@dataclass(frozen=True)
class Column:
    """A projected column and the types the projection accepts for it."""

    name: str
    types: tuple[str, ...]


@dataclass(frozen=True)
class Source:
    """One of the application's tables."""

    table: str
    target: str  # its name on the command line: `pubctl backfill topics`
    kinds: tuple[str, ...]  # the items each row publishes
    columns: tuple[Column, ...]

    @property
    def main_kind(self) -> str:
        """The kind named after the row itself (a question row's question)."""
        return self.kinds[0]


TOPICS = Source(
    table="study_topic",
    target="topics",
    kinds=("topic",),
    columns=(
        Column("id", ID_TYPES),
        Column("name", TEXT_TYPES),
        Column("exam_round_size", INT_TYPES),
        Column("deleted_at", TIMESTAMP_TYPES),
    ),
)
QUESTIONS = Source(
    table="study_question",
    target="questions",
    kinds=("question", "explanation"),
    columns=(
        Column("id", ID_TYPES),
        Column("topic_id", ID_TYPES),
        Column("exam_name", TEXT_TYPES),
        Column("exam_round", INT_TYPES),
        Column("number", INT_TYPES),
        Column("body", TEXT_TYPES),
        Column("choices", ("jsonb",)),
        Column("answer", INT_TYPES),
        Column("explanation", TEXT_TYPES),
        Column("explanation_status", TEXT_TYPES),
        Column("deleted_at", TIMESTAMP_TYPES),
    ),
)

SOURCES = (TOPICS, QUESTIONS)
KINDS = tuple(kind for source in SOURCES for kind in source.kinds)
BY_TABLE = {source.table: source for source in SOURCES}
BY_TARGET = {source.target: source for source in SOURCES}
BY_KIND = {kind: source for source in SOURCES for kind in source.kinds}


def problems(rows: list[dict[str, Any]], schema: str) -> list[str]:
    """Everything missing or wrong in the application's tables, one line each, from the
    catalog rows of the ``source_columns`` query. An empty list means the tables are fit
    for pubctl's triggers."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        found.setdefault(str(row["table_name"]), {})[str(row["column_name"])] = row
    lines: list[str] = []
    for source in SOURCES:
        table = source.table
        if table not in found:
            lines.append(f"table {schema}.{table} is missing")
            continue
        columns = found[table]
        for column in source.columns:
            if column.name not in columns:
                lines.append(f"column {schema}.{table}.{column.name} is missing")
                continue
            type_name = str(columns[column.name]["type_name"])
            if type_name not in column.types:
                lines.append(
                    f"column {schema}.{table}.{column.name} is {type_name}, expected "
                    + " or ".join(column.types)
                )
        key = columns.get("id")
        if key is not None and not key["is_primary_key"]:
            lines.append(f"column {schema}.{table}.id is not the primary key")
        elif key is not None and key["deferrable_key"]:
            lines.append(
                f"the primary key of {schema}.{table} is DEFERRABLE: one statement could swap "
                "two ids, which row-by-row capture cannot publish correctly"
            )
        any_column = next(iter(columns.values()))
        if any_column["relkind"] == "p":
            lines.append(
                f"{schema}.{table} is partitioned: writes to a partition itself would bypass "
                "capture"
            )
        if any_column.get("parents"):
            what = "a partition of" if any_column.get("is_partition") else "an inheritance child of"
            lines.append(
                f"{schema}.{table} is {what} {any_column['parents']}: writes through it would "
                "bypass capture"
            )
        if any_column["relkind"] != "p" and any_column["has_children"]:
            lines.append(
                f"{schema}.{table} has inheritance children: writes to them would bypass capture"
            )
    return lines
