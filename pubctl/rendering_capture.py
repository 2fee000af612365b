"""The capture functions and triggers rendered for each source (see
:mod:`pubctl.rendering`): the measured design that the header of
``sql/schema/40_capture.sql`` explains, repeated per source and kind. An INSERT and a
DELETE statement trigger over the transition table (one INSERT ... SELECT per kind), an
UPDATE row trigger whose WHEN clause lists every projected column, and the closing
statements every rendering ends with.
"""

from __future__ import annotations

from itertools import combinations

from pubctl.rendering import (
    ATTACHMENTS,
    DEFINITIONS,
    Rendered,
    canonical_params,
    liveness_columns,
    shape_call,
)
from pubctl.sources import Definition, Kind, Source

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
        f"('{k.name}', {_call_on(source, k, 'is_live', 'r.')})" for k in source.publishes
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
    WHERE {shape_call(source, "new_rows")};
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
        columns = [c.name for c in liveness_columns(source, kind)]
    else:
        columns = [column.name for _, column in canonical_params(source, kind)]
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
      AND {shape_call(source, "old_rows")};
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
       AND previous ~ '^[a-z_][a-z0-9_]*:-?[0-9]+:[0-9]+(,[0-9]+)*$' THEN
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


def captures(source: Source) -> list[Rendered]:
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


TRUNCATE = "pub_refuse_truncate"


def triggers(source: Source) -> list[Rendered]:
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
            f"SELECT pub.detach_capture_trigger('{table}', '{name}');"
            # Detached only when the source goes: its backfill history goes with it.
            + (
                f" DELETE FROM pub.backfill_runs WHERE source = '{table}';"
                if name == TRUNCATE
                else ""
            ),
        )
        for name, text in definitions.items()
    ]


def capture_owner(definition: Definition) -> Rendered:
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


def shape_check_all() -> Rendered:
    """Every source has the columns the capture just installed reads: a migration that
    renders capture for a column the table does not have (renamed since, say) fails
    here, and nothing of it stays."""
    return Rendered(
        ATTACHMENTS,
        "shape check",
        "SELECT pub.require_source(s) FROM unnest(pub.source_tables()) AS s;",
        "SELECT 1;",
    )
