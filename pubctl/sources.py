"""The definition of what pubctl publishes: the application's tables, the kinds each
row publishes, and each kind's payload. Everything else is derived from it.

A kind is defined here once. From this definition:

* :mod:`pubctl.rendering` renders the SQL that capture, backfill, verify and the shape
  checks run (the payload row types, the projection and liveness functions, the
  capture triggers, the feed's per-kind branches), which ``make revision`` freezes into
  a migration; a test holds the head schema equal to the rendering;
* the reference projection (:mod:`pubctl.projection`) reads the same fields and rules
  and implements them on its own, in Python;
* the CLI, ``serve`` and ``verify`` take their kind and target names from it.

Adding a kind or a field, or renaming a projected column: docs/operations.md,
"Changing a payload".

It also holds the check ``pubctl migrate`` makes before installing anything
(:func:`problems`); once installed, the database makes the same check itself
(``pub.source_shape_problems``).
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass, replace
from typing import Any

ID_TYPES = ("smallint", "integer", "bigint")
INT_TYPES = ("smallint", "integer")
TEXT_TYPES = ("text", "character varying")
TIMESTAMP_TYPES = ("timestamp with time zone", "timestamp without time zone")
JSON_STRING_ARRAY = ("jsonb",)
MAX_KIND_NAME = 40

# Names the rendered SQL writes as they are: lowercase, no quoting needed, not a word
# PostgreSQL reserves (it would need quotes as a column or parameter name).
_PLAIN = re.compile(r"[a-z_][a-z0-9_]{0,62}")
RESERVED = frozenset(
    """all analyse analyze and any array as asc asymmetric authorization binary both
    case cast check collate collation column concurrently constraint create cross
    current_catalog current_date current_role current_schema current_time
    current_timestamp current_user default deferrable desc distinct do else end
    except false fetch for foreign freeze from full grant group having ilike in
    initially inner intersect into is isnull join lateral leading left like limit
    localtime localtimestamp natural not notnull null offset on only or order outer
    overlaps placing primary references returning right select session_user similar
    some symmetric table tablesample then to trailing true union unique user using
    variadic verbose when where window with""".split()  # noqa: SIM905
)


def plain_name(name: str) -> bool:
    """Whether ``name`` can stand in SQL unquoted: what every name of a definition is."""
    return bool(_PLAIN.fullmatch(name)) and name not in RESERVED


def _require_plain(*names: str) -> None:
    for name in names:
        if not plain_name(name):
            raise ValueError(
                f"{name!r}: names in the definition are lowercase letters, digits and _, "
                "at most 63 characters, not a reserved word"
            )


@dataclass(frozen=True)
class Column:
    """A column the projection reads, and the types it accepts for it.

    ``name`` is what pubctl calls it (in its SQL and in the rows verify reads);
    ``column`` is its name in the table when that differs (after a rename)."""

    name: str
    types: tuple[str, ...]
    column: str = ""

    def __post_init__(self) -> None:
        _require_plain(self.name, self.column_name)

    @property
    def column_name(self) -> str:
        return self.column or self.name

    @property
    def is_text(self) -> bool:
        return set(self.types) <= set(TEXT_TYPES)


@dataclass(frozen=True)
class Field:
    """One key of a kind's payload and the column it publishes.

    The column's types decide the JSON value: an integer column an integer (a bigint
    one must hold a JSON-safe integer, within +-(2^53-1)), a text column a string, a
    jsonb column an array of strings. ``nullable``: whether NULL publishes ``null``
    (otherwise the row breaks the payload rules); a string array is never null."""

    key: str
    column: str
    nullable: bool = True

    def __post_init__(self) -> None:
        _require_plain(self.key, self.column)


@dataclass(frozen=True)
class Kind:
    """An item kind: its payload fields and when a row's item of it is live.

    Live while every column of ``live_when_null`` is NULL and every (column, text) of
    ``live_when_equal`` holds that text; otherwise the item is a tombstone."""

    name: str
    fields: tuple[Field, ...]
    live_when_null: tuple[str, ...] = ("deleted_at",)
    live_when_equal: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        _require_plain(self.name, *self.liveness_columns)
        if len(self.name) > MAX_KIND_NAME:
            # pub.capture_<kind>_insert, content_<kind>_rev_idx, ... stay within 63.
            raise ValueError(f"kind {self.name!r}: at most {MAX_KIND_NAME} characters")

    @property
    def liveness_columns(self) -> tuple[str, ...]:
        return self.live_when_null + tuple(column for column, _ in self.live_when_equal)


@dataclass(frozen=True)
class Source:
    """One of the application's tables and the kinds each of its rows publishes."""

    table: str
    target: str  # its name on the command line: `pubctl backfill topics`
    columns: tuple[Column, ...]  # the key first
    publishes: tuple[Kind, ...]  # the first is the row's own kind

    def __post_init__(self) -> None:
        _require_plain(self.table)
        names = [c.name for c in self.columns]
        read = {f.column for k in self.publishes for f in k.fields}
        read |= {c for k in self.publishes for c in k.liveness_columns}
        if len(set(names)) != len(names) or not read <= set(names):
            raise ValueError(f"{self.table}: every column a kind reads is listed once")

    @property
    def key(self) -> Column:
        """The key: an integer primary key, every item's source_id."""
        return self.columns[0]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(kind.name for kind in self.publishes)

    @property
    def main_kind(self) -> str:
        """The kind named after the row itself (a question row's question)."""
        return self.kinds[0]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def renamed(self, name: str, column: str) -> Source:
        """This source with projected column ``name`` read from table column ``column``."""
        columns = tuple(
            replace(c, column="" if column == c.name else column) if c.name == name else c
            for c in self.columns
        )
        return replace(self, columns=columns)


TOPICS = Source(
    table="study_topic",
    target="topics",
    columns=(
        Column("id", ID_TYPES),
        Column("name", TEXT_TYPES),
        Column("exam_round_size", INT_TYPES),
        Column("deleted_at", TIMESTAMP_TYPES),
    ),
    publishes=(
        Kind(
            "topic",
            fields=(
                Field("topic_id", "id"),
                Field("name", "name"),
                Field("exam_round_size", "exam_round_size"),
            ),
        ),
    ),
)
QUESTIONS = Source(
    table="study_question",
    target="questions",
    columns=(
        Column("id", ID_TYPES),
        Column("topic_id", ID_TYPES),
        Column("exam_name", TEXT_TYPES),
        Column("exam_round", INT_TYPES),
        Column("number", INT_TYPES),
        Column("body", TEXT_TYPES),
        Column("choices", JSON_STRING_ARRAY),
        Column("answer", INT_TYPES),
        Column("explanation", TEXT_TYPES),
        Column("explanation_status", TEXT_TYPES),
        Column("deleted_at", TIMESTAMP_TYPES),
    ),
    publishes=(
        Kind(
            "question",
            fields=(
                Field("question_id", "id"),
                Field("topic_id", "topic_id"),
                Field("exam_name", "exam_name"),
                Field("exam_round", "exam_round"),
                Field("number", "number"),
                Field("body", "body"),
                Field("choices", "choices", nullable=False),
                Field("answer", "answer"),
            ),
        ),
        # A ready explanation with NULL text publishes "explanation": null.
        Kind(
            "explanation",
            fields=(Field("question_id", "id"), Field("explanation", "explanation")),
            live_when_equal=(("explanation_status", "ready"),),
        ),
    ),
)


@dataclass(frozen=True)
class Definition:
    """Every source pubctl publishes from, in the order they are installed."""

    sources: tuple[Source, ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(kind for source in self.sources for kind in source.kinds)

    def by_table(self) -> dict[str, Source]:
        return {source.table: source for source in self.sources}

    def renamed(self, table: str, name: str, column: str) -> Definition:
        """This definition with ``table``'s projected column ``name`` read from ``column``."""
        return Definition(
            tuple(s.renamed(name, column) if s.table == table else s for s in self.sources)
        )


STUDY = Definition((TOPICS, QUESTIONS))


def _load() -> Definition:
    """The definition in use: ``STUDY``, or the ``module:attribute`` that
    PUBCTL_DEFINITION names (a deployment's own kinds, or a test's)."""
    named = os.environ.get("PUBCTL_DEFINITION", "")
    if not named:
        return STUDY
    module, _, attribute = named.partition(":")
    try:
        found = getattr(importlib.import_module(module), attribute or "DEFINITION", None)
    except (ImportError, ValueError) as exc:  # ValueError: a definition that breaks its rules
        found = exc
    if not isinstance(found, Definition):
        # Read at import, before any command's error handling: one line, exit 1.
        raise SystemExit(
            f"pubctl: PUBCTL_DEFINITION={named} does not name a pubctl.sources.Definition "
            f"({found!r}); give module:attribute, with the module on the Python path"
        )
    return found


DEFINITION = _load()
SOURCES = DEFINITION.sources
KINDS = DEFINITION.kinds
BY_TABLE = DEFINITION.by_table()
BY_TARGET = {source.target: source for source in SOURCES}
BY_KIND = {kind: source for source in SOURCES for kind in source.kinds}


def problems(
    rows: list[dict[str, Any]], schema: str, definition: Definition | None = None
) -> list[str]:
    """Everything missing or wrong in the application's tables, one line each, from the
    catalog rows of the ``source_columns`` query, for ``definition`` (the one in use by
    default). An empty list means the tables are fit for pubctl's triggers."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        found.setdefault(str(row["table_name"]), {})[str(row["column_name"])] = row
    lines: list[str] = []
    for source in (definition or DEFINITION).sources:
        table = source.table
        if table not in found:
            lines.append(f"table {schema}.{table} is missing")
            continue
        columns = found[table]
        for column in source.columns:
            if column.column_name not in columns:
                lines.append(f"column {schema}.{table}.{column.column_name} is missing")
                continue
            type_name = str(columns[column.column_name]["type_name"])
            if type_name not in column.types:
                lines.append(
                    f"column {schema}.{table}.{column.column_name} is {type_name}, expected "
                    + " or ".join(column.types)
                )
        key = columns.get(source.key.column_name)
        if key is not None and not key["is_primary_key"]:
            lines.append(f"column {schema}.{table}.{source.key.column_name} is not the primary key")
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
