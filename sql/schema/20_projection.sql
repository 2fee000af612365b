-- The projection: what each source row publishes, as RFC 8785 canonical JSON text.
--
-- Each kind's projection, pub.<kind>_canonical, is rendered from the definition in
-- pubctl/sources.py (into 25_kinds.sql, with the kind's row type pub.<kind>_payload and
-- its liveness, pub.<kind>_is_live); this file holds what they all use, and the checks
-- of the source tables' shape. Triggers, backfill and verify all call them. Each
-- returns the item's payload as json holding its RFC 8785 canonical text, or NULL when
-- the item is not live (a tombstone). The payload columns hold that text itself (json
-- keeps its input byte for byte), and the hash (pub.payload_hash, below) is computed
-- over that same text, so the two can never disagree and a reader can check one
-- against the other.
--
-- Why a row type per kind printed by row_to_json: the keys of each kind are fixed and
-- ASCII, so their RFC 8785 order (sorted) is known in advance and is the attribute
-- order; row_to_json escapes strings exactly as RFC 8785 does (\" \\ \b \f \n \r \t,
-- other control characters as \u00xx lowercase, everything else literal), prints
-- integers as digits (RFC 8785's form for integers within +-(2^53-1)), NULL as null, and
-- builds the json value in one call. Concatenating to_json pieces and casting the text
-- to json measured 1.5x slower (the cast checks the syntax again); a generic recursive
-- canonicaliser in SQL about 45x.
--
-- Why these are LANGUAGE sql STABLE functions with a BEGIN ATOMIC body and no SET
-- search_path: the planner inlines them into the calling query (no call overhead per
-- row; a SET clause prevents inlining and measured 2.4x slower), and a BEGIN ATOMIC
-- body is parsed when the function is created, with every name resolved then, so the
-- caller's search_path cannot change what they call. They are created with
-- search_path = pg_catalog, pg_temp. STABLE, not IMMUTABLE: row_to_json is STABLE, and an
-- IMMUTABLE function whose body is not is never inlined.

SET LOCAL search_path = pg_catalog, pg_temp;

-- Integers RFC 8785 can carry exactly (IEEE double): beyond them a number would be
-- published as a different number, so such rows are refused instead.
CREATE FUNCTION pub.is_json_safe_integer(value bigint) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT value IS NULL OR value BETWEEN -9007199254740991 AND 9007199254740991;
END;

-- A JSON array of strings as text[]; NULL when it is anything else.
CREATE TYPE pub.string_list AS (items text[]);

CREATE FUNCTION pub.string_array_items(value jsonb) RETURNS text[]
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        -- strict: a lax JSON path would unwrap nested arrays and let [["a"]] through.
        WHEN pg_catalog.jsonb_typeof(value) = 'array'
             AND NOT pg_catalog.jsonb_path_exists(value, 'strict $[*] ? (@.type() != "string")')
        -- jsonb_populate_record turns the array into text[] without a subquery per row.
        THEN (pg_catalog.jsonb_populate_record(
                  NULL::pub.string_list, pg_catalog.jsonb_build_object('items', value))).items
    END;
END;

-- Raises the payload-rule error (SQLSTATE PB001). Declared STABLE so that the
-- projection functions calling it stay inlinable; it is only reached for a bad row.
CREATE FUNCTION pub.payload_rule_violation(kind text, source_id bigint, rule text)
    RETURNS text
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'pubctl: % % breaks the payload rules: %', kind, source_id, rule
        USING ERRCODE = 'PB001',
              DETAIL = format('kind=%s source_id=%s rule=%s', kind, source_id, rule),
              HINT = 'Fix the row: the write is refused rather than published wrong.';
END;
$$;

-- The one place the payload hash is defined: lowercase hex SHA-256 of the UTF-8
-- bytes of the canonical text.
CREATE FUNCTION pub.payload_hash(canonical text) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(canonical, 'UTF8')), 'hex');
END;

-- What stops the projection from reading a source table safely, one line each, read
-- from the catalog: a missing table or column, or a projected column of another type.
CREATE FUNCTION pub.source_column_problems(source text) RETURNS SETOF text
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    app name := (SELECT s.app_schema FROM pub.settings AS s);
    rel oid := (SELECT c.oid FROM pg_catalog.pg_class AS c
                JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
                WHERE n.nspname = app AND c.relname = source AND c.relkind IN ('r', 'p'));
BEGIN
    IF rel IS NULL THEN
        RETURN NEXT format('table %I.%I is missing', app, source);
        RETURN;
    END IF;
    RETURN QUERY
        SELECT CASE
                   WHEN a.atttypid IS NULL
                       THEN format('column %I.%I.%I is missing', app, source, s.column_name)
                   ELSE format('column %I.%I.%I is %s, expected %s', app, source,
                               s.column_name, a.atttypid::regtype,
                               array_to_string(s.allowed_types, ' or '))
               END
        FROM pub.source_columns(source) AS s
        LEFT JOIN pg_catalog.pg_attribute AS a
               ON a.attrelid = rel AND a.attname = s.column_name AND a.attnum > 0
              AND NOT a.attisdropped
        WHERE a.atttypid IS NULL OR NOT a.atttypid::regtype = ANY (s.allowed_types);
END;
$$;

-- Everything wrong with the shape of one source table for capture, one line each: the
-- column problems above, a primary key that is not exactly (id) or is DEFERRABLE (one
-- statement could then swap two ids, and row-by-row capture would tombstone an id that
-- still exists), and writes that bypass the table's triggers: partitions and
-- inheritance children (rows written there), an inheritance parent or a partitioned
-- table above it (a DELETE, UPDATE or INSERT through the parent fires the parent's
-- statement triggers, not the child's).
CREATE FUNCTION pub.source_shape_problems(source text) RETURNS SETOF text
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    app name := (SELECT s.app_schema FROM pub.settings AS s);
    rel oid := (SELECT c.oid FROM pg_catalog.pg_class AS c
                JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
                WHERE n.nspname = app AND c.relname = source AND c.relkind IN ('r', 'p'));
BEGIN
    RETURN QUERY SELECT p FROM pub.source_column_problems(source) AS p;
    IF rel IS NULL THEN
        RETURN;
    END IF;
    IF NOT EXISTS (
        SELECT FROM pg_catalog.pg_constraint AS k
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
        WHERE k.conrelid = rel AND k.contype = 'p' AND cardinality(k.conkey) = 1
          AND a.attname = 'id'
    ) THEN
        RETURN NEXT format('column %I.%I.id is not the primary key', app, source);
    ELSIF EXISTS (SELECT FROM pg_catalog.pg_constraint AS k
                  WHERE k.conrelid = rel AND k.contype = 'p' AND k.condeferrable) THEN
        RETURN NEXT format('the primary key of %I.%I is DEFERRABLE', app, source);
    END IF;
    IF (SELECT c.relkind FROM pg_catalog.pg_class AS c WHERE c.oid = rel) = 'p' THEN
        RETURN NEXT format('%I.%I is partitioned (writes to a partition itself would bypass capture)',
                           app, source);
    ELSIF EXISTS (SELECT FROM pg_catalog.pg_inherits AS i WHERE i.inhparent = rel) THEN
        RETURN NEXT format('%I.%I has inheritance children (writes to them would bypass capture)',
                           app, source);
    END IF;
    RETURN QUERY
        SELECT format('%I.%I is %s %s (writes through it would bypass capture)', app, source,
                      CASE WHEN c.relispartition THEN 'a partition of'
                           ELSE 'an inheritance child of' END,
                      i.inhparent::regclass)
        FROM pg_catalog.pg_inherits AS i
        JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
        WHERE i.inhrelid = rel
        ORDER BY i.inhseqno;
END;
$$;

-- Raises the shape error (SQLSTATE PB004). Reached only when a check fails.
CREATE FUNCTION pub.source_shape_violation(source text) RETURNS boolean
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'pubctl: %.% no longer has the shape pubctl projects',
            (SELECT s.app_schema FROM pub.settings AS s), source
        USING ERRCODE = 'PB004',
              DETAIL = COALESCE((SELECT string_agg(p, '; ')
                                 FROM pub.source_column_problems(source) AS p),
                                'a projected column has a type capture does not accept'),
              HINT = 'Restore the column types pubctl expects (docs/operations.md, "What '
                     'pubctl needs of the application''s tables"); nothing was written.';
END;
$$;

-- What backfill and verify check before each page: the source is one pubctl knows
-- (PB003), and its projected columns have types the projection accepts, read from the
-- catalog (PB004). Returns the kinds the source publishes. Only the columns: the key,
-- partitions and inheritance are `pubctl migrate`'s and pub.capture_problems' checks.
CREATE FUNCTION pub.require_source(source text) RETURNS text[]
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kinds text[] := pub.source_kinds(source);
BEGIN
    IF kinds IS NULL THEN
        RAISE EXCEPTION 'pubctl: unknown source %', source
            USING ERRCODE = 'PB003',
                  DETAIL = format('Sources are %s.', array_to_string(pub.source_tables(), ', ')),
                  HINT = 'Pass one of them (pubctl''s commands check their options before '
                         'they call it).';
    END IF;
    IF EXISTS (SELECT FROM pub.source_column_problems(source)) THEN
        PERFORM pub.source_shape_violation(source);
    END IF;
    RETURN kinds;
END;
$$;
