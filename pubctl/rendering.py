"""The SQL derived from the definition (:mod:`pubctl.sources`), one object at a time.

:func:`render` turns a :class:`~pubctl.sources.Definition` into the list of database
objects that depend on it: each kind's payload row type, liveness and projection
functions and feed index; each source's shape check, capture functions and triggers;
the functions that tell backfill, verify and the checks which sources, kinds and
columns exist; and ``pub.feed`` with a branch per kind. ``sql/schema/25_kinds.sql``
and ``sql/schema/75_kinds_attach.sql`` are its output (a test holds them equal), and
``make revision`` freezes the objects that changed into a migration
(:mod:`pubctl.revision_sql`). The capture functions and triggers are rendered in
:mod:`pubctl.rendering_capture`. Where a payload is built: :func:`_kind_objects` (the
row type and ``pub.<kind>_canonical``).

This module writes SQL text and nothing else: the reference projection
(:mod:`pubctl.projection`) shares none of it.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    from pubctl.rendering_capture import capture_owner, captures, shape_check_all, triggers

    objects: list[Rendered] = []
    for source in definition.sources:
        for kind in source.publishes:
            objects += _kind_objects(source, kind)
        objects.append(_shape_check(source))
    objects += _dispatch(definition)
    for source in definition.sources:
        objects += captures(source)
    for source in definition.sources:
        objects += triggers(source)
    for kind_name in definition.kinds:
        objects.append(_feed_index(kind_name))
    objects += _list_checks(definition)
    objects.append(_feed(definition))
    objects.append(capture_owner(definition))
    objects.append(shape_check_all())
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


def _live_condition(kind: Kind, prefix: str = "") -> str:
    """SQL that is true while an item of ``kind`` is live, over its liveness columns by
    pubctl's names (parameters, or ``r.`` over a select list), prefixed."""
    parts = [f"{prefix}{c} IS NULL" for c in kind.live_when_null]
    parts += [
        f"{prefix}{c} IS NOT DISTINCT FROM {_quote(value)}" for c, value in kind.live_when_equal
    ]
    return " AND ".join(parts)


def liveness_columns(source: Source, kind: Kind) -> list[Column]:
    """The kind's liveness columns, in the table's column order."""
    return [c for c in source.columns if c.name in kind.liveness_columns]


def canonical_params(source: Source, kind: Kind) -> list[tuple[str, Column]]:
    """The projection function's parameters: each field (named by its key), then the
    liveness columns no field reads, in the table's column order."""
    params = [(f.key, source.column(f.column)) for f in kind.fields]
    read = {f.column for f in kind.fields}
    params += [(c.name, c) for c in liveness_columns(source, kind) if c.name not in read]
    return params


def _canonical_call(source: Source, kind: Kind, prefix: str) -> str:
    args = ", ".join(f"{prefix}{column.name}" for _, column in canonical_params(source, kind))
    return f"pub.{kind.name}_canonical({args})"


def _kind_objects(source: Source, kind: Kind) -> list[Rendered]:
    """Where a kind's payload is built: its row type (the keys in RFC 8785 order), its
    liveness and its projection, ``pub.<kind>_canonical`` (NULL for a tombstone, the
    payload-rule error PB001 for a row that breaks the rules)."""
    fields = sorted(kind.fields, key=lambda f: f.key)
    attributes = ", ".join(f"{f.key} {_payload_type(source.column(f.column))}" for f in fields)
    payload_type = Rendered(
        DEFINITIONS,
        f"type pub.{kind.name}_payload",
        "-- The payload's keys in RFC 8785 order (sorted), printed by row_to_json.\n"
        f"CREATE TYPE pub.{kind.name}_payload AS ({attributes});",
        f"DROP TYPE pub.{kind.name}_payload;",
    )

    live_columns = liveness_columns(source, kind)
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
        f"DROP FUNCTION pub.{kind.name}_is_live({live_types});",
    )

    params = canonical_params(source, kind)
    param_of = {column.name: name for name, column in params}
    key_param = param_of[source.key.name]
    # bigint fields must hold integers RFC 8785 carries exactly (smaller types always do).
    big = [f for f in kind.fields if _param_type(source.column(f.column)) == "bigint"]
    safe_integers = (
        f"        WHEN NOT ({' AND '.join(f'pub.is_json_safe_integer({f.key})' for f in big)})\n"
        f"            THEN pub.payload_rule_violation('{kind.name}', {key_param}, "
        f"'{' and '.join(f.column for f in big)} must be within +-(2^53-1)')::json\n"
        if big
        else ""
    )
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
        + safe_integers
        + f"        ELSE pg_catalog.row_to_json(ROW({values})::pub.{kind.name}_payload)\n"
        "    END;\n"
        "END;",
        f"DROP FUNCTION pub.{kind.name}_canonical({signature});",
    )
    return [payload_type, is_live, canonical]


def _is_live_call_params(source: Source, kind: Kind, param_of: dict[str, str]) -> str:
    args = ", ".join(param_of[c.name] for c in liveness_columns(source, kind))
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


def _list_checks(definition: Definition) -> list[Rendered]:
    """The CHECK constraints that hold pub's tables to the defined kinds and sources, as
    literal lists: a constraint calling a function costs every single-row INSERT of the
    outbox (the UPDATE capture's) a plan of that function, about 9 us a row."""

    def listed(values: list[str]) -> str:
        return ", ".join(_quote(v) for v in values)

    kinds = listed(list(definition.kinds))
    tables = [s.table for s in definition.sources]
    checks = [
        ("outbox", "outbox_kind_check", f"kind IN ({kinds})"),
        ("content", "content_kind_check", f"kind IN ({kinds})"),
        ("backfill_runs", "backfill_runs_source_check", f"source IN ({listed(tables)})"),
        (
            "leases",
            "leases_name_check",
            f"name IN ({listed(['worker', *(f'backfill:{t}' for t in tables)])})",
        ),
    ]
    return [
        Rendered(
            ATTACHMENTS,
            f"constraint {name} on pub.{table}",
            f"ALTER TABLE pub.{table} DROP CONSTRAINT IF EXISTS {name},\n"
            f"    ADD CONSTRAINT {name} CHECK ({check});",
            f"ALTER TABLE pub.{table} DROP CONSTRAINT {name};",
        )
        for table, name, check in checks
    ]


def _feed_index(kind_name: str) -> Rendered:
    name = f"content_{kind_name}_rev_idx"
    return Rendered(
        ATTACHMENTS,
        f"index pub.{name}",
        f"CREATE INDEX {name} ON pub.content (rev) WHERE kind = '{kind_name}';",
        # Dropped only when the kind goes: its published items go with it.
        f"SELECT pub.forget_kind('{kind_name}'); DROP INDEX pub.{name};",
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


def shape_call(source: Source, rows: str) -> str:
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


def _case(definition: Definition, value_of: dict[str, str]) -> str:
    whens = "".join(
        f"        WHEN '{source.table}' THEN {value_of[source.table]}\n"
        for source in definition.sources
    )
    return f"    SELECT CASE source\n{whens}    END;"


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
        f"({n}, '{s.table}', '{c.column_name}', '{{{','.join(c.types)}}}'::regtype[])"
        for s in sources
        for n, c in enumerate(s.columns, 1)
    )
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
            "    ) AS v(position, source, column_name, allowed_types)\n"
            "    WHERE v.source = source_columns.source\n"
            "    ORDER BY v.position;  -- the definition's order (pubctl.rename.installed)\n"
            "END;",
            "DROP FUNCTION pub.source_columns(text);",
        ),
        _function(
            "source_kinds",
            "source text",
            "text[]",
            _case(definition, {s.table: f"'{{{','.join(s.kinds)}}}'::text[]" for s in sources}),
            "IMMUTABLE",
        ),
        _function(
            "source_select_list",
            "source text",
            "text",
            _case(definition, {s.table: _quote(_select_list(s)) for s in sources}),
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
            ),
            "IMMUTABLE",
        ),
        _function(
            "source_row_data_sql",
            "source text",
            "text",
            _case(definition, {s.table: _quote(_row_data(s)) for s in sources}),
            "IMMUTABLE",
        ),
        _function(
            "source_tables",
            "",
            "text[]",
            f"    SELECT '{{{','.join(s.table for s in sources)}}}'::text[];",
            "IMMUTABLE",
        ),
    ]


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
