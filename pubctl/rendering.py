"""The SQL derived from the definition (:mod:`pubctl.sources`), one object at a time.

:func:`render` turns a :class:`~pubctl.sources.Definition` into the list of database
objects that depend on it: each kind's payload row type, liveness and projection
functions and feed index; each source's shape check, capture functions and triggers;
the functions that tell backfill, verify and the checks which sources, kinds and
columns exist; and ``pub.feed`` with a branch per kind. ``sql/schema/25_kinds.sql``
and ``sql/schema/55_kinds_attach.sql`` are its output (a test holds them equal), and
``make revision`` freezes the objects that changed into a migration
(:mod:`pubctl.revision_sql`). The capture functions follow the measured design that the
header of ``sql/schema/40_capture.sql`` explains; the templates below only repeat it
per kind.

This module writes SQL text and nothing else: the reference projection
(:mod:`pubctl.projection`) shares none of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from pubctl.sources import (
    ID_TYPES,
    INT_TYPES,
    JSON_STRING_ARRAY,
    TEXT_TYPES,
    TIMESTAMP_TYPES,
    Column,
    Definition,
    Field,
    Kind,
    Source,
)

# The two parts: objects other schema files use (before pub.outbox), and those that
# need the tables (after pub.content).
DEFINITIONS = "definitions"
ATTACHMENTS = "attachments"


@dataclass(frozen=True)
class Rendered:
    """One database object rendered from the definition."""

    part: str  # DEFINITIONS or ATTACHMENTS
    identity: str  # "function pub.topic_canonical(bigint, text, integer, timestamptz)"
    sql: str  # what creates it (functions and triggers: CREATE OR REPLACE)
    drop: str  # what removes it

    @property
    def replaceable(self) -> bool:
        """Whether ``sql`` replaces the object in place: functions (of the same
        signature) and triggers; types and indexes are dropped and created."""
        return not self.identity.startswith(("type ", "index "))


def render(definition: Definition) -> list[Rendered]:
    """Every object derived from ``definition``, in creation order."""
    objects: list[Rendered] = []
    for source in definition.sources:
        for kind in source.publishes:
            objects += _kind_objects(source, kind)
        objects.append(_shape_check(source))
    objects += _dispatch(definition)
    for source in definition.sources:
        objects += _captures(source)
    for source in definition.sources:
        objects += _triggers(source)
    for kind_name in definition.kinds:
        objects.append(_feed_index(kind_name))
    objects.append(_feed(definition))
    objects.append(_capture_owner(definition))
    objects.append(_shape_check_all())
    return objects


def file_text(objects: list[Rendered], part: str) -> str:
    """One schema file: the objects of ``part``, each under a marker line that names it
    and says how to drop it (``make revision`` reads them back)."""
    head = (
        "-- Rendered from the definition in pubctl/sources.py by pubctl/rendering.py: do not\n"
        "-- edit; change the definition and run `make revision` (docs/operations.md,\n"
        '-- "Changing a payload"). Each object follows a marker line naming it.\n\n'
        "SET LOCAL search_path = pg_catalog, pg_temp;\n"
    )
    body = "".join(
        f"\n-- object: {o.identity}\n-- drop: {o.drop}\n{o.sql}\n"
        for o in objects
        if o.part == part
    )
    return head + body


def parse_file(text: str, part: str) -> list[Rendered]:
    """The objects of a file :func:`file_text` wrote."""
    objects = []
    for chunk in text.split("\n-- object: ")[1:]:
        identity, drop_line, sql = chunk.split("\n", 2)
        objects.append(
            Rendered(part, identity, sql.rstrip("\n"), drop_line.removeprefix("-- drop: "))
        )
    return objects


# -- Types --------------------------------------------------------------------------


def _param_type(column: Column) -> str:
    """The SQL type a column is passed to pubctl's functions as."""
    types = set(column.types)
    if types <= set(ID_TYPES):
        return "integer" if types <= set(INT_TYPES) else "bigint"
    if types <= set(TEXT_TYPES):
        return "text"
    if types <= set(TIMESTAMP_TYPES):
        return "timestamptz"
    if column.types == JSON_STRING_ARRAY:
        return "jsonb"
    raise ValueError(f"column {column.name}: no SQL form for types {column.types}")


def _payload_type(column: Column) -> str:
    """The payload row type's attribute type for a field reading ``column``."""
    param = _param_type(column)
    if param == "jsonb":
        return "text[]"
    if param == "timestamptz":
        raise ValueError(f"column {column.name}: timestamps are not published")
    return param


def _regtypes(types: tuple[str, ...]) -> str:
    if len(types) == 1:
        return f"'{types[0]}'::regtype"
    return f"ANY ('{{{','.join(types)}}}'::regtype[])"


# -- Kinds: payload type, liveness, projection, feed index ----------------------------


def _live_condition(kind: Kind, name_of: dict[str, str] | None = None, prefix: str = "") -> str:
    """SQL that is true while an item of ``kind`` is live, over the liveness columns
    (named through ``name_of``, prefixed: ``OLD.``, ``r.``)."""
    name_of = name_of or {}
    parts = [f"{prefix}{name_of.get(c, c)} IS NULL" for c in kind.live_when_null]
    parts += [
        f"{prefix}{name_of.get(c, c)} IS NOT DISTINCT FROM '{value}'"
        for c, value in kind.live_when_equal
    ]
    return " AND ".join(parts)


def _liveness_columns(source: Source, kind: Kind) -> list[Column]:
    """The kind's liveness columns, in the table's column order."""
    return [c for c in source.columns if c.name in kind.liveness_columns]


def _is_live_call(source: Source, kind: Kind, prefix: str) -> str:
    args = ", ".join(f"{prefix}{c.name}" for c in _liveness_columns(source, kind))
    return f"pub.{kind.name}_is_live({args})"


def _canonical_params(source: Source, kind: Kind) -> list[tuple[str, Column]]:
    """The projection function's parameters: each field (named by its key), then the
    liveness columns no field reads, in the table's column order."""
    params = [(f.key, source.column(f.column)) for f in kind.fields]
    read = {f.column for f in kind.fields}
    params += [(c.name, c) for c in _liveness_columns(source, kind) if c.name not in read]
    return params


def _canonical_call(source: Source, kind: Kind, prefix: str) -> str:
    args = ", ".join(f"{prefix}{column.name}" for _, column in _canonical_params(source, kind))
    return f"pub.{kind.name}_canonical({args})"


def _kind_objects(source: Source, kind: Kind) -> list[Rendered]:
    fields = sorted(kind.fields, key=lambda f: f.key)
    attributes = ", ".join(f"{f.key} {_payload_type(source.column(f.column))}" for f in fields)
    payload_type = Rendered(
        DEFINITIONS,
        f"type pub.{kind.name}_payload",
        "-- The payload's keys in RFC 8785 order (sorted), printed by row_to_json.\n"
        f"CREATE TYPE pub.{kind.name}_payload AS ({attributes});",
        f"DROP TYPE pub.{kind.name}_payload CASCADE;",
    )

    live_columns = _liveness_columns(source, kind)
    live_params = ", ".join(f"{c.name} {_param_type(c)}" for c in live_columns)
    live_types = ", ".join(_param_type(c) for c in live_columns)
    is_live = Rendered(
        DEFINITIONS,
        f"function pub.{kind.name}_is_live({live_types})",
        f"CREATE OR REPLACE FUNCTION pub.{kind.name}_is_live({live_params}) RETURNS boolean\n"
        "    LANGUAGE sql STABLE PARALLEL SAFE\n"
        "BEGIN ATOMIC\n"
        f"    SELECT {_live_condition(kind)};\n"
        "END;",
        f"DROP FUNCTION pub.{kind.name}_is_live({live_types}) CASCADE;",
    )

    params = _canonical_params(source, kind)
    param_of = {column.name: name for name, column in params}
    key_param = param_of[source.key.name]
    big = [f for f in kind.fields if _param_type(source.column(f.column)) == "bigint"]
    checks = [
        f"WHEN NOT ({' AND '.join(f'pub.is_json_safe_integer({f.key})' for f in big)})\n"
        f"            THEN pub.payload_rule_violation('{kind.name}', {key_param}, "
        f"'{' and '.join(f.column for f in big)} must be within +-(2^53-1)')::json"
    ]
    values = ", ".join(_payload_value(source, kind, f, key_param) for f in fields)
    signature = ", ".join(_param_type(column) for _, column in params)
    canonical = Rendered(
        DEFINITIONS,
        f"function pub.{kind.name}_canonical({signature})",
        f"CREATE OR REPLACE FUNCTION pub.{kind.name}_canonical(\n    "
        + ", ".join(f"{name} {_param_type(column)}" for name, column in params)
        + "\n) RETURNS json\n"
        "    LANGUAGE sql STABLE PARALLEL SAFE\n"
        "BEGIN ATOMIC\n"
        "    SELECT CASE\n"
        f"        WHEN NOT {_is_live_call_params(source, kind, param_of)} THEN NULL\n"
        + "".join(f"        {check}\n" for check in checks if big)
        + f"        ELSE pg_catalog.row_to_json(ROW({values})::pub.{kind.name}_payload)\n"
        "    END;\n"
        "END;",
        f"DROP FUNCTION pub.{kind.name}_canonical({signature}) CASCADE;",
    )
    return [payload_type, is_live, canonical]


def _is_live_call_params(source: Source, kind: Kind, param_of: dict[str, str]) -> str:
    args = ", ".join(param_of[c.name] for c in _liveness_columns(source, kind))
    return f"pub.{kind.name}_is_live({args})"


def _payload_value(source: Source, kind: Kind, field: Field, key_param: str) -> str:
    """A field's value in the payload row, with its rule checked in the same evaluation
    (the rule error only when the value is unfit)."""
    column = source.column(field.column)
    if column.types == JSON_STRING_ARRAY:
        return (
            f"COALESCE(pub.string_array_items({field.key}), pub.payload_rule_violation("
            f"'{kind.name}', {key_param}, '{field.key} must be a JSON array of strings')::text[])"
        )
    if not field.nullable:
        return (
            f"COALESCE({field.key}, pub.payload_rule_violation('{kind.name}', {key_param}, "
            f"'{field.key} must not be null')::{_payload_type(column)})"
        )
    return field.key


def _feed_index(kind_name: str) -> Rendered:
    name = f"content_{kind_name}_rev_idx"
    return Rendered(
        ATTACHMENTS,
        f"index pub.{name}",
        f"CREATE INDEX {name} ON pub.content (rev) WHERE kind = '{kind_name}';",
        f"DROP INDEX pub.{name};",
    )


# -- Sources: shape check -------------------------------------------------------------


def _shape_check(source: Source) -> Rendered:
    """The type check capture makes before it reads any column (40_capture.sql says why:
    inlinable, the allowed types fold into constants)."""
    signature = ", ".join("regtype" for _ in source.columns)
    tests = "\n             AND ".join(f"{c.name} = {_regtypes(c.types)}" for c in source.columns)
    return Rendered(
        DEFINITIONS,
        f"function pub.require_{source.main_kind}_shape({signature})",
        f"CREATE OR REPLACE FUNCTION pub.require_{source.main_kind}_shape(\n    "
        + ", ".join(f"{c.name} regtype" for c in source.columns)
        + "\n) RETURNS boolean\n"
        "    LANGUAGE sql STABLE PARALLEL SAFE\n"
        "BEGIN ATOMIC\n"
        "    SELECT CASE\n"
        f"        WHEN {tests}\n"
        "            THEN true\n"
        f"        ELSE pub.source_shape_violation('{source.table}')\n"
        "    END;\n"
        "END;",
        f"DROP FUNCTION pub.require_{source.main_kind}_shape({signature});",
    )


def _shape_call(source: Source, rows: str) -> str:
    """The shape check over the first row of a transition table."""
    types = ", ".join(f"pg_typeof(t.{c.column_name})" for c in source.columns)
    return (
        f"(SELECT pub.require_{source.main_kind}_shape({types})\n"
        f"           FROM {rows} AS t LIMIT 1) IS NOT FALSE"
    )


# -- Dispatch: what backfill, verify and the checks ask by source name ----------------


def _function(name: str, params: str, returns: str, body: str, volatility: str) -> Rendered:
    types = ", ".join(p.split()[1] for p in params.split(", ")) if params else ""
    return Rendered(
        DEFINITIONS,
        f"function pub.{name}({types})",
        f"CREATE OR REPLACE FUNCTION pub.{name}({params}) RETURNS {returns}\n"
        f"    LANGUAGE sql {volatility} PARALLEL SAFE\n"
        "BEGIN ATOMIC\n"
        f"{body}\n"
        "END;",
        f"DROP FUNCTION pub.{name}({types});",
    )


def _case(definition: Definition, value_of: dict[str, str], cast: str) -> str:
    whens = "".join(
        f"        WHEN '{source.table}' THEN {value_of[source.table]}\n"
        for source in definition.sources
    )
    return f"    SELECT CASE source\n{whens}    END{cast};"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _select_list(source: Source) -> str:
    return ", ".join(
        f"r.{c.column_name}" + (f" AS {c.name}" if c.column else "") for c in source.columns
    )


def _items_sql(source: Source) -> str:
    """A SELECT of (kind, source_id, canonical) over relation %1$I (source columns)."""
    branches = [
        f"SELECT '{kind.name}'::text AS kind, r.{source.key.name}::bigint AS source_id,\n"
        f"                   {_canonical_call(source, kind, 'r.')} AS canonical\n"
        "            FROM %1$I AS r"
        for kind in source.publishes
    ]
    return "\n            UNION ALL\n            ".join(branches)


def _row_data(source: Source) -> str:
    """What verify ships of a row to the reference projection: the key and the liveness
    columns of the row's own kind always; another kind's liveness text (at most 64
    characters) while the row's own kind is live; a field's column while an item
    reading it is live. Nothing a row does not publish is read or shipped."""
    main = source.publishes[0]
    values = []
    for column in source.columns:
        if column.name == source.key.name or column.name in main.liveness_columns:
            value = f"r.{column.name}"
        elif any(column.name in k.liveness_columns for k in source.publishes):
            value = (
                f"CASE WHEN {_live_condition(main, prefix='r.')} THEN left(r.{column.name}, 64) END"
            )
        else:
            readers = [k for k in source.publishes if column.name in {f.column for f in k.fields}]
            live = " OR ".join(f"({_live_condition(k, prefix='r.')})" for k in readers) or "false"
            value = f"CASE WHEN {live} THEN r.{column.name} END"
        values.append(f"'{column.name}', {value}")
    return ", ".join(values)


def _dispatch(definition: Definition) -> list[Rendered]:
    sources = definition.sources
    columns = ",\n        ".join(
        f"('{s.table}', '{c.column_name}', '{{{','.join(c.types)}}}'::regtype[])"
        for s in sources
        for c in s.columns
    )
    kinds = ", ".join(f"'{k}'" for k in definition.kinds)
    return [
        Rendered(
            DEFINITIONS,
            "function pub.source_columns(text)",
            "CREATE OR REPLACE FUNCTION pub.source_columns(source text)\n"
            "    RETURNS TABLE (column_name text, allowed_types regtype[])\n"
            "    LANGUAGE sql IMMUTABLE PARALLEL SAFE\n"
            "BEGIN ATOMIC\n"
            "    SELECT v.column_name, v.allowed_types\n"
            f"    FROM (VALUES\n        {columns}\n"
            "    ) AS v(source, column_name, allowed_types)\n"
            "    WHERE v.source = source_columns.source;\n"
            "END;",
            "DROP FUNCTION pub.source_columns(text);",
        ),
        _function(
            "source_kinds",
            "source text",
            "text[]",
            _case(
                definition,
                {s.table: f"'{{{','.join(s.kinds)}}}'::text[]" for s in sources},
                "",
            ),
            "IMMUTABLE",
        ),
        _function(
            "source_select_list",
            "source text",
            "text",
            _case(definition, {s.table: _quote(_select_list(s)) for s in sources}, ""),
            "IMMUTABLE",
        ),
        _function(
            "source_items_sql",
            "source text, relation text",
            "text",
            _case(
                definition,
                {
                    s.table: f"pg_catalog.format($q$\n            {_items_sql(s)}$q$, relation)"
                    for s in sources
                },
                "",
            ),
            "IMMUTABLE",
        ),
        _function(
            "source_row_data_sql",
            "source text",
            "text",
            _case(definition, {s.table: _quote(_row_data(s)) for s in sources}, ""),
            "IMMUTABLE",
        ),
        _function(
            "source_tables",
            "",
            "text[]",
            f"    SELECT '{{{','.join(s.table for s in sources)}}}'::text[];",
            "IMMUTABLE",
        ),
        _function(
            "is_kind",
            "kind text",
            "boolean",
            f"    SELECT kind IN ({kinds});",
            "IMMUTABLE",
        ),
    ]


# -- Capture ------------------------------------------------------------------------

_PREAMBLE = """\
    IF NOT pub.publishing_enabled() AND pub.unpublished_write_allowed() THEN
        RETURN NULL;
    END IF;
    IF pg_trigger_depth() > 1 THEN
        -- Run by another trigger: later UPDATE captures read the current state.
        PERFORM set_config('pubctl.nested_capture_in', pg_current_xact_id()::text, true);
    END IF;"""


def _capture_function(name: str, declare: str, body: str) -> Rendered:
    return Rendered(
        DEFINITIONS,
        f"function pub.{name}()",
        f"CREATE OR REPLACE FUNCTION pub.{name}() RETURNS trigger\n"
        "    LANGUAGE plpgsql SECURITY DEFINER\n"
        "    SET search_path = pg_catalog, pg_temp\n"
        "AS $$\n" + (f"DECLARE\n{declare}\n" if declare else "") + f"BEGIN\n{body}\nEND;\n$$;\n\n"
        f"REVOKE ALL ON FUNCTION pub.{name}() FROM PUBLIC;",
        f"DROP FUNCTION pub.{name}();",
    )


def _current_items_call(source: Source, rows: str) -> str:
    """The current state of the live items of a transition table's rows."""
    kinds = ",\n                                   ".join(
        f"('{k.name}', {_is_live_call(source, k, 'r.')})" for k in source.publishes
    )
    return f"""\
        SELECT array_agg(i.kind), array_agg(i.source_id) INTO kinds, ids
        FROM {rows} AS r
        CROSS JOIN LATERAL (VALUES {kinds}) AS k(kind, live),
             LATERAL (SELECT k.kind, r.{source.key.column_name}::bigint) AS i(kind, source_id)
        WHERE k.live;
        IF cardinality(pub.capture_current_items(TG_TABLE_NAME, kinds, ids)) > 0 THEN
            PERFORM pub.notify_outbox();
        END IF;
        RETURN NULL;"""


def _renamed(source: Source) -> dict[str, str]:
    """Column names to read a transition table's or NEW's columns by."""
    return {c.name: c.column_name for c in source.columns}


def _insert_capture(source: Source) -> Rendered:
    names = _renamed(source)
    inserts = []
    for kind in source.publishes:
        live = _call_on(source, kind, "is_live", "r.")
        canonical = _call_on(source, kind, "canonical", "r.")
        inserts.append(f"""\
    INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
    SELECT '{kind.name}', i.source_id, pub.outbox_payload(i.canonical),
           pub.outbox_payload_hash(i.canonical), pub.schema_version(), false
    FROM (SELECT r.{names[source.key.name]}::bigint, {canonical}
          FROM new_rows AS r
          WHERE {live}
          OFFSET 0) AS i(source_id, canonical)
    WHERE {_shape_call(source, "new_rows")};
    enqueued := enqueued OR FOUND;""")
    body = f"""\
{_PREAMBLE}
    -- Has this transaction updated or deleted rows of this table (or can it not tell:
    -- without track_counts the counters stay at 0)? Then a row of this statement may
    -- have changed since the transition table recorded it (40_capture.sql). Built-in
    -- calls in the IF itself: a SQL function here would cost an executor start per
    -- statement, a tenth of a single-row INSERT's time.
    IF current_setting('track_counts') <> 'on'
       OR pg_stat_get_xact_tuples_updated(TG_RELID)
          + pg_stat_get_xact_tuples_deleted(TG_RELID) > 0 THEN
        -- Rows may have changed since they were inserted: their current state. The
        -- columns' types are checked before any is read (as on the fast path).
        PERFORM pub.require_source(TG_TABLE_NAME);
{_current_items_call(source, "new_rows")}
    END IF;
    -- One INSERT per kind; a row inserted already deleted was never published.
{chr(10).join(inserts)}
    IF enqueued THEN
        PERFORM pub.notify_outbox();
    END IF;
    RETURN NULL;"""
    declare = "    enqueued boolean := false;\n    kinds text[];\n    ids bigint[];"
    return _capture_function(f"capture_{source.main_kind}_insert", declare, body)


def _call_on(source: Source, kind: Kind, what: str, prefix: str) -> str:
    """A call of a kind's liveness or projection function on a row's columns."""
    names = _renamed(source)
    if what == "is_live":
        columns = [c.name for c in _liveness_columns(source, kind)]
    else:
        columns = [column.name for _, column in _canonical_params(source, kind)]
    args = ", ".join(f"{prefix}{names[c]}" for c in columns)
    return f"pub.{kind.name}_{what}({args})"


def _delete_capture(source: Source) -> Rendered:
    names = _renamed(source)
    if len(source.publishes) == 1:
        kinds_from = ""
        kind_value = f"'{source.main_kind}'"
        live = _call_on(source, source.publishes[0], "is_live", "r.")
    else:
        kinds_from = (
            "\n    CROSS JOIN (VALUES "
            + ", ".join(f"('{k.name}')" for k in source.publishes)
            + ") AS k(kind)"
        )
        kind_value = "k.kind"
        whens = "".join(
            f"              WHEN '{k.name}' THEN {_call_on(source, k, 'is_live', 'r.')}\n"
            for k in source.publishes
        )
        live = f"CASE k.kind\n{whens}          END"
    body = f"""\
{_PREAMBLE}
    -- Has this transaction inserted or updated rows of this table (or can it not tell)?
    -- Then an id this statement deleted may hold another row by now (40_capture.sql).
    IF current_setting('track_counts') <> 'on'
       OR pg_stat_get_xact_tuples_inserted(TG_RELID)
          + pg_stat_get_xact_tuples_updated(TG_RELID) > 0 THEN
        -- An id may hold another row by now (moved or inserted there): its current state.
        -- The columns' types are checked before any is read (as on the fast path).
        PERFORM pub.require_source(TG_TABLE_NAME);
{_current_items_call(source, "old_rows")}
    END IF;
    -- Only items that were live need a tombstone: a row that stays deleted adds nothing.
    INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
    SELECT {kind_value}, r.{names[source.key.name]}, pub.outbox_payload(NULL),
           pub.outbox_payload_hash(NULL), pub.schema_version(), true
    FROM old_rows AS r{kinds_from}
    WHERE {live}
      AND {_shape_call(source, "old_rows")};
    IF FOUND THEN
        PERFORM pub.notify_outbox();
    END IF;
    RETURN NULL;"""
    return _capture_function(
        f"capture_{source.main_kind}_delete", "    kinds text[];\n    ids bigint[];", body
    )


def _compared(source: Source, kind: Kind, row: str) -> str:
    """The columns whose change changes a live item's payload (the key aside)."""
    names = _renamed(source)
    parts = []
    for field in kind.fields:
        column = source.column(field.column)
        if column.name == source.key.name:
            continue
        value = f"{row}.{names[column.name]}"
        parts.append(f'({value} COLLATE "C")' if column.is_text else value)
    return "(" + ", ".join(parts) + ")" if len(parts) > 1 else (parts[0] if parts else "NULL")


_OUTBOX_COLUMNS = "(id, kind, source_id, payload, payload_hash, schema_version, deleted)"


def _update_capture(source: Source) -> Rendered:
    names = _renamed(source)
    key = names[source.key.name]
    main = source.main_kind
    shape_args = ", ".join(f"pg_typeof(NEW.{c.column_name})" for c in source.columns)
    declare = [
        f"    -- Before any column is read (pub.require_{main}_shape); OLD has NEW's row type.",
        f"    shape_ok constant boolean := pub.require_{main}_shape({shape_args});",
    ]
    for k in source.publishes:
        declare += [
            f"    {k.name}_was_live constant boolean := {_call_on(source, k, 'is_live', 'OLD.')};",
            f"    {k.name}_is_live constant boolean := {_call_on(source, k, 'is_live', 'NEW.')};",
        ]
    declare.append(f"    same_id constant boolean := OLD.{key} IS NOT DISTINCT FROM NEW.{key};")
    declare.append(
        "    -- The new id's items to write: a live item whose payload or liveness changed (all\n"
        "    -- of them after a key change), and, under the same id, items that stopped being\n"
        "    -- live."
    )
    for k in source.publishes:
        declare.append(
            f"    {k.name}_changes constant boolean :=\n"
            f"        ({k.name}_is_live\n"
            f"         AND (NOT same_id OR NOT {k.name}_was_live\n"
            f"              OR {_compared(source, k, 'OLD')}\n"
            f"                 IS DISTINCT FROM {_compared(source, k, 'NEW')}))\n"
            f"        OR (same_id AND {k.name}_was_live AND NOT {k.name}_is_live);"
        )
    declare += [f"    {k.name}_json json;" for k in source.publishes]
    declare += [
        "    previous text := current_setting('pubctl.last_enqueued', true);",
        "    -- Outbox ids, taken here so that the next UPDATE of this row knows them exactly.",
        "    ids bigint[];",
        "    kinds text[];",
        "    source_ids bigint[];",
        "    noted text;",
    ]
    any_changes = " OR ".join(f"{k.name}_changes" for k in source.publishes)
    any_was_live = " OR ".join(f"{k.name}_was_live" for k in source.publishes)
    superseded = "\n                     OR ".join(
        f"(o.kind = '{k.name}' AND {k.name}_changes)" for k in source.publishes
    )
    superseded_old = "\n                        OR ".join(
        f"(o.kind = '{k.name}' AND {k.name}_was_live)" for k in source.publishes
    )
    wanted = [
        f"({n}, '{k.name}', OLD.{key}::bigint, NULL::json, NOT same_id AND {k.name}_was_live)"
        for n, k in enumerate(source.publishes, 1)
    ]
    wanted += [
        f"({n}, '{k.name}', NEW.{key}::bigint, {k.name}_json, {k.name}_changes)"
        for n, k in enumerate(source.publishes, len(source.publishes) + 1)
    ]
    values = ",\n                     ".join(wanted)
    wanted_items = ",\n                     ".join(
        [
            f"({n}, '{k.name}', OLD.{key}::bigint, NOT same_id AND {k.name}_was_live)"
            for n, k in enumerate(source.publishes, 1)
        ]
        + [
            f"({n}, '{k.name}', NEW.{key}::bigint, {k.name}_changes)"
            for n, k in enumerate(source.publishes, len(source.publishes) + 1)
        ]
    )
    projections = "".join(
        f"    IF {k.name}_changes THEN\n"
        f"        {k.name}_json := {_call_on(source, k, 'canonical', 'NEW.')};\n"
        "    END IF;\n"
        for k in source.publishes
    )
    same_id_branches = []
    for size in range(len(source.publishes), 0, -1):
        for subset in combinations(source.publishes, size):
            condition = " AND ".join(f"{k.name}_changes" for k in subset)
            rows = ",\n               ".join(
                f"(ids[{n}], '{k.name}', NEW.{key}, pub.outbox_payload({k.name}_json),\n"
                f"                pub.outbox_payload_hash({k.name}_json), pub.schema_version(),\n"
                f"                {k.name}_json IS NULL)"
                for n, k in enumerate(subset, 1)
            )
            nextvals = ", ".join("nextval('pub.outbox_id_seq')" for _ in subset)
            same_id_branches.append(
                f"{condition} THEN\n"
                f"        ids := ARRAY[{nextvals}];\n"
                f"        INSERT INTO pub.outbox\n            {_OUTBOX_COLUMNS}\n"
                "        OVERRIDING SYSTEM VALUE\n"
                f"        VALUES {rows};\n"
            )
    branches = "    ELSIF ".join(same_id_branches)
    body = f"""\
    IF NOT ({any_changes})
       AND (same_id OR NOT ({any_was_live})) THEN
        RETURN NULL;  -- nothing published changed
    END IF;
    IF current_setting('pubctl.publishing_on_in', true)
       IS DISTINCT FROM pg_current_xact_id()::text THEN
        IF NOT pub.publishing_enabled() AND pub.unpublished_write_allowed() THEN
            RETURN NULL;
        END IF;
        noted := set_config('pubctl.publishing_on_in', pg_current_xact_id()::text, true);
    END IF;
    IF starts_with(previous, '{main}:' || OLD.{key} || ':')
       AND previous ~ '^[a-z_]+:-?[0-9]+:[0-9]+(,[0-9]+)*$' THEN
        -- Superseded: this transaction's own rows of the items written below.
        DELETE FROM pub.outbox AS o
        WHERE o.id = ANY (string_to_array(split_part(previous, ':', 3), ',')::bigint[])
          AND ((o.source_id = NEW.{key}
                AND ({superseded}))
               OR (NOT same_id AND o.source_id = OLD.{key}
                   AND ({superseded_old})))
          AND o.xmin = pg_current_xact_id()::xid;
    END IF;
    IF pg_trigger_depth() > 1 THEN
        noted := set_config('pubctl.nested_capture_in', pg_current_xact_id()::text, true);
    END IF;
    IF current_setting('pubctl.nested_capture_in', true) = pg_current_xact_id()::text THEN
        -- A statement run by a trigger may have changed the row since: its current state
        -- (40_capture.sql), for the same items as below, in the same order.
        SELECT array_agg(i.kind ORDER BY i.n), array_agg(i.source_id ORDER BY i.n)
        INTO kinds, source_ids
        FROM (VALUES {wanted_items})
             AS i(n, kind, source_id, wanted)
        WHERE i.wanted;
        ids := pub.capture_current_items('{source.table}', kinds, source_ids);
        IF COALESCE(previous, '') = '' THEN
            PERFORM pub.notify_outbox();
        END IF;
        noted := set_config('pubctl.last_enqueued',
            '{main}:' || NEW.{key} || ':' || array_to_string(ids, ','), true);
        RETURN NULL;
    END IF;
{projections}    IF NOT same_id THEN
        -- A new id is a new item: the old one ends, the new one begins. Rare: the
        -- general form, ids in outbox order.
        WITH wanted AS (
            SELECT i.n, i.kind, i.source_id, i.canonical
            FROM (VALUES {values})
                 AS i(n, kind, source_id, canonical, wanted)
            WHERE i.wanted
        ), numbered AS (
            SELECT nextval('pub.outbox_id_seq') AS id, w.*
            FROM (SELECT * FROM wanted ORDER BY n) AS w
        ), inserted AS (
            INSERT INTO pub.outbox
                (id, kind, source_id, payload, payload_hash, schema_version, deleted)
            OVERRIDING SYSTEM VALUE
            SELECT i.id, i.kind, i.source_id, pub.outbox_payload(i.canonical),
                   pub.outbox_payload_hash(i.canonical), pub.schema_version(),
                   i.canonical IS NULL
            FROM numbered AS i
            RETURNING id
        )
        SELECT array_agg(r.id ORDER BY r.id) INTO ids FROM inserted AS r;
    ELSIF {branches}    END IF;
    IF COALESCE(previous, '') = '' THEN
        PERFORM pub.notify_outbox();
    END IF;
    noted := set_config('pubctl.last_enqueued',
        '{main}:' || NEW.{key} || ':' || array_to_string(ids, ','), true);
    RETURN NULL;"""
    return _capture_function(f"capture_{main}_update", "\n".join(declare), body)


def _captures(source: Source) -> list[Rendered]:
    return [_insert_capture(source), _delete_capture(source), _update_capture(source)]


def _watched(source: Source, row: str) -> str:
    """The UPDATE trigger's WHEN list: every projected column (text byte for byte, in
    the "C" collation), liveness NULL tests as such."""
    nulls = {c for k in source.publishes for c in k.live_when_null}
    parts = []
    for column in source.columns:
        value = f"{row}.{column.column_name}"
        if column.name in nulls:
            parts.append(f"{value} IS NULL")
        elif column.is_text:
            parts.append(f'{value} COLLATE "C"')
        else:
            parts.append(value)
    return "(" + ", ".join(parts) + ")"


def _triggers(source: Source) -> list[Rendered]:
    table = source.table
    main = source.main_kind
    definitions = {
        "pub_capture_insert": f"AFTER INSERT ON %I.{table}\n"
        "    REFERENCING NEW TABLE AS new_rows\n"
        f"    FOR EACH STATEMENT EXECUTE FUNCTION pub.capture_{main}_insert()",
        "pub_capture_update": f"AFTER UPDATE ON %I.{table}\n"
        "    FOR EACH ROW\n"
        f"    WHEN ({_watched(source, 'OLD')}\n"
        "          IS DISTINCT FROM\n"
        f"          {_watched(source, 'NEW')})\n"
        f"    EXECUTE FUNCTION pub.capture_{main}_update()",
        "pub_capture_delete": f"AFTER DELETE ON %I.{table}\n"
        "    REFERENCING OLD TABLE AS old_rows\n"
        f"    FOR EACH STATEMENT EXECUTE FUNCTION pub.capture_{main}_delete()",
        "pub_refuse_truncate": f"BEFORE TRUNCATE ON %I.{table}\n"
        "    FOR EACH STATEMENT EXECUTE FUNCTION pub.refuse_truncate()",
    }
    return [
        Rendered(
            ATTACHMENTS,
            f"trigger {name} on {table}",
            f"SELECT pub.attach_capture_trigger('{table}', '{name}', $t$\n"
            f"CREATE OR REPLACE TRIGGER {name} {text}$t$);",
            f"SELECT pub.detach_capture_trigger('{table}', '{name}');",
        )
        for name, text in definitions.items()
    ]


def _capture_owner(definition: Definition) -> Rendered:
    """Who owns what was just created (pub.settle_ownership, 40_capture.sql): the owner
    of schema pub, or pubctl_capture for capture functions where the install uses it."""
    names = [
        f"pub.capture_{s.main_kind}_{event}()"
        for s in definition.sources
        for event in ("insert", "delete", "update")
    ]
    return Rendered(
        ATTACHMENTS,
        "ownership",
        "SELECT pub.settle_ownership(ARRAY[\n    "
        + ",\n    ".join(f"'{n}'" for n in names)
        + "\n]::regprocedure[]);",
        "SELECT 1;",
    )


def _shape_check_all() -> Rendered:
    """Every source has the columns the capture just installed reads: a migration that
    renders capture for a column the table does not have (renamed since, say) fails
    here, and nothing of it stays."""
    return Rendered(
        ATTACHMENTS,
        "shape check",
        "SELECT pub.require_source(s) FROM unnest(pub.source_tables()) AS s;",
        "SELECT 1;",
    )


# -- The feed -----------------------------------------------------------------------


def _feed(definition: Definition) -> Rendered:
    limit = "LIMIT GREATEST(COALESCE(feed.max_rows, 1000), 0)"
    branches = [
        "(SELECT c.* FROM pub.content AS c\n"
        "         WHERE feed.kinds IS NULL AND c.rev > COALESCE(feed.after_rev, 0)\n"
        f"         ORDER BY c.rev {limit})"
    ]
    branches += [
        "(SELECT c.* FROM pub.content AS c\n"
        f"         WHERE '{kind}' = ANY (feed.kinds) AND c.kind = '{kind}'\n"
        "           AND c.rev > COALESCE(feed.after_rev, 0)\n"
        f"         ORDER BY c.rev {limit})"
        for kind in definition.kinds
    ]
    union = "\n        UNION ALL\n        ".join(branches)
    return Rendered(
        ATTACHMENTS,
        "function pub.feed(bigint, integer, text[])",
        "-- The feed: item changes in rev order, for viewers (50_apply.sql says why one\n"
        "-- branch per kind, each reading its kind's partial rev index).\n"
        "CREATE OR REPLACE FUNCTION pub.feed(\n"
        "    after_rev bigint, max_rows integer DEFAULT 1000, kinds text[] DEFAULT NULL\n"
        ")\n"
        "    RETURNS TABLE (\n"
        "        rev bigint, kind text, pub_id uuid, source_id bigint, payload json,\n"
        "        payload_hash text, schema_version integer, deleted boolean\n"
        "    )\n"
        "    LANGUAGE sql STABLE SECURITY DEFINER\n"
        "    SET search_path = pg_catalog, pg_temp\n"
        "BEGIN ATOMIC\n"
        "    SELECT f.rev, f.kind, f.pub_id, f.source_id, f.payload, f.payload_hash,\n"
        "           f.schema_version, f.deleted\n"
        "    FROM (\n"
        f"        {union}\n"
        "    ) AS f\n"
        "    ORDER BY f.rev\n"
        f"    {limit};\n"
        "END;\n\n"
        "REVOKE ALL ON FUNCTION pub.feed(bigint, integer, text[]) FROM PUBLIC;",
        "DROP FUNCTION pub.feed(bigint, integer, text[]);",
    )
