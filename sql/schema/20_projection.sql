-- The projection: what each source row publishes, as RFC 8785 canonical JSON text.
--
-- This is the one source of truth inside the database; triggers, backfill and verify
-- all call these functions. Each returns the item's payload as json holding its RFC 8785
-- canonical text, or NULL when the item is not live (a tombstone). The payload columns
-- hold that text itself (json keeps its input byte for byte), and the hash
-- (pub.payload_hash, at the end of this file) is computed over that same text, so the
-- two can never disagree and a reader can check one against the other.
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

-- Each kind's payload as a row type whose attributes are the payload's keys in RFC 8785
-- order (sorted: the keys are ASCII). row_to_json prints such a row in exactly RFC 8785
-- form: keys in attribute order, no whitespace, strings escaped as RFC 8785 escapes
-- them, integers as digits, NULL as null, text[] as an array of strings. It builds
-- the json value directly, so nothing parses it again (a cast of text to json would
-- check its syntax: a third of the projection's cost).
CREATE TYPE pub.topic_payload AS (exam_round_size integer, name text, topic_id bigint);

CREATE TYPE pub.question_payload AS (
    answer integer, body text, choices text[], exam_name text, exam_round integer,
    number integer, question_id bigint, topic_id bigint
);

CREATE TYPE pub.explanation_payload AS (explanation text, question_id bigint);

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

-- Liveness, each row's own (a deleted topic does not tombstone its questions).
CREATE FUNCTION pub.topic_is_live(deleted_at timestamptz) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT deleted_at IS NULL;
END;

CREATE FUNCTION pub.question_is_live(deleted_at timestamptz) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT deleted_at IS NULL;
END;

-- The explanation is live while its question is live and explanation_status is
-- 'ready' (a ready explanation with NULL text publishes "explanation": null).
CREATE FUNCTION pub.explanation_is_live(deleted_at timestamptz, explanation_status text)
    RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT pub.question_is_live(deleted_at) AND explanation_status IS NOT DISTINCT FROM 'ready';
END;

CREATE FUNCTION pub.topic_canonical(
    topic_id bigint, name text, exam_round_size integer, deleted_at timestamptz
) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN NOT pub.topic_is_live(deleted_at) THEN NULL
        WHEN NOT pub.is_json_safe_integer(topic_id)
            THEN pub.payload_rule_violation('topic', topic_id, 'id must be within +-(2^53-1)')::json
        ELSE pg_catalog.row_to_json(ROW(exam_round_size, name, topic_id)::pub.topic_payload)
    END;
END;

CREATE FUNCTION pub.question_canonical(
    question_id bigint, topic_id bigint, exam_name text, exam_round integer,
    number integer, body text, choices jsonb, answer integer, deleted_at timestamptz
) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN NOT pub.question_is_live(deleted_at) THEN NULL
        WHEN NOT (pub.is_json_safe_integer(question_id) AND pub.is_json_safe_integer(topic_id))
            THEN pub.payload_rule_violation('question', question_id,
                                            'id and topic_id must be within +-(2^53-1)')::json
        ELSE pg_catalog.row_to_json(ROW(
            answer, body,
            -- Checked and converted in one evaluation: the rule error only when NULL.
            COALESCE(pub.string_array_items(choices),
                     pub.payload_rule_violation('question', question_id,
                                                'choices must be a JSON array of strings')::text[]),
            exam_name, exam_round, number, question_id, topic_id)::pub.question_payload)
    END;
END;

CREATE FUNCTION pub.explanation_canonical(
    question_id bigint, explanation text, explanation_status text, deleted_at timestamptz
) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN NOT pub.explanation_is_live(deleted_at, explanation_status) THEN NULL
        WHEN NOT pub.is_json_safe_integer(question_id)
            THEN pub.payload_rule_violation('explanation', question_id,
                                            'id must be within +-(2^53-1)')::json
        ELSE pg_catalog.row_to_json(ROW(explanation, question_id)::pub.explanation_payload)
    END;
END;

-- The one place the payload hash is defined: lowercase hex SHA-256 of the UTF-8
-- bytes of the canonical text.
CREATE FUNCTION pub.payload_hash(canonical text) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(canonical, 'UTF8')), 'hex');
END;

-- The shape of the application's tables that the projection relies on: the column
-- types each projected column may have. `pubctl migrate` refuses anything else, and
-- capture, backfill and verify check it again when they run, because a table owner
-- can rename a column and add another of the same name and any type later. A type of
-- the owner's making could carry an implicit cast or an operator, which would then run
-- inside capture with the capture functions' rights; built-in types carry only
-- built-in casts and operators. (pubctl.sources.SOURCES is the same registry in Python;
-- a test holds the two equal.)
CREATE FUNCTION pub.source_columns(source text)
    RETURNS TABLE (column_name text, allowed_types regtype[])
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT v.column_name, v.allowed_types
    FROM (VALUES
        ('study_topic', 'id', '{smallint,integer,bigint}'::regtype[]),
        ('study_topic', 'name', '{text,character varying}'::regtype[]),
        ('study_topic', 'exam_round_size', '{smallint,integer}'::regtype[]),
        ('study_topic', 'deleted_at', '{timestamp with time zone,timestamp without time zone}'::regtype[]),
        ('study_question', 'id', '{smallint,integer,bigint}'::regtype[]),
        ('study_question', 'topic_id', '{smallint,integer,bigint}'::regtype[]),
        ('study_question', 'exam_name', '{text,character varying}'::regtype[]),
        ('study_question', 'exam_round', '{smallint,integer}'::regtype[]),
        ('study_question', 'number', '{smallint,integer}'::regtype[]),
        ('study_question', 'body', '{text,character varying}'::regtype[]),
        ('study_question', 'choices', '{jsonb}'::regtype[]),
        ('study_question', 'answer', '{smallint,integer}'::regtype[]),
        ('study_question', 'explanation', '{text,character varying}'::regtype[]),
        ('study_question', 'explanation_status', '{text,character varying}'::regtype[]),
        ('study_question', 'deleted_at', '{timestamp with time zone,timestamp without time zone}'::regtype[])
    ) AS v(source, column_name, allowed_types)
    WHERE v.source = source_columns.source;
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

-- The checks capture makes on every statement (statement triggers) or row (the UPDATE
-- trigger), before it reads any projected column: the types of the columns it is
-- about to read, as pg_typeof gives them, which costs no catalog access. True, or the
-- shape error. Inlinable SQL (each parameter used once): the allowed types fold into
-- constants, and the UPDATE trigger pays no function call per row, which would cost
-- about as much as the rest of its work.
CREATE FUNCTION pub.require_topic_shape(
    id regtype, name regtype, exam_round_size regtype, deleted_at regtype
) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN id = ANY ('{smallint,integer,bigint}'::regtype[])
             AND name = ANY ('{text,character varying}'::regtype[])
             AND exam_round_size = ANY ('{smallint,integer}'::regtype[])
             AND deleted_at = ANY ('{timestamp with time zone,timestamp without time zone}'::regtype[])
            THEN true
        ELSE pub.source_shape_violation('study_topic')
    END;
END;

CREATE FUNCTION pub.require_question_shape(
    id regtype, topic_id regtype, exam_name regtype, exam_round regtype, number regtype,
    body regtype, choices regtype, answer regtype, explanation regtype,
    explanation_status regtype, deleted_at regtype
) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN id = ANY ('{smallint,integer,bigint}'::regtype[])
             AND topic_id = ANY ('{smallint,integer,bigint}'::regtype[])
             AND exam_name = ANY ('{text,character varying}'::regtype[])
             AND exam_round = ANY ('{smallint,integer}'::regtype[])
             AND number = ANY ('{smallint,integer}'::regtype[])
             AND body = ANY ('{text,character varying}'::regtype[])
             AND choices = 'jsonb'::regtype
             AND answer = ANY ('{smallint,integer}'::regtype[])
             AND explanation = ANY ('{text,character varying}'::regtype[])
             AND explanation_status = ANY ('{text,character varying}'::regtype[])
             AND deleted_at = ANY ('{timestamp with time zone,timestamp without time zone}'::regtype[])
            THEN true
        ELSE pub.source_shape_violation('study_question')
    END;
END;

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
            USING ERRCODE = 'PB003', DETAIL = 'Sources are study_topic and study_question.',
                  HINT = 'Pass study_topic or study_question (pubctl''s commands check '
                         'their options before they call it).';
    END IF;
    IF EXISTS (SELECT FROM pub.source_column_problems(source)) THEN
        PERFORM pub.source_shape_violation(source);
    END IF;
    RETURN kinds;
END;
$$;

-- The one place that knows which kinds a source row publishes and through which
-- projection function: a SELECT of (kind, source_id, canonical) over the rows of
-- `relation` (a name the caller's dynamic SQL defines, holding the source's columns).
-- Backfill and verify both build their queries from it.
CREATE FUNCTION pub.source_items_sql(source text, relation text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE source
        WHEN 'study_topic' THEN pg_catalog.format($q$
            SELECT 'topic'::text AS kind, r.id::bigint AS source_id,
                   pub.topic_canonical(r.id, r.name, r.exam_round_size, r.deleted_at) AS canonical
            FROM %1$I AS r$q$, relation)
        WHEN 'study_question' THEN pg_catalog.format($q$
            SELECT 'question'::text AS kind, r.id::bigint AS source_id,
                   pub.question_canonical(r.id, r.topic_id, r.exam_name, r.exam_round, r.number,
                                          r.body, r.choices, r.answer, r.deleted_at) AS canonical
            FROM %1$I AS r
            UNION ALL
            SELECT 'explanation'::text, r.id::bigint,
                   pub.explanation_canonical(r.id, r.explanation, r.explanation_status,
                                             r.deleted_at)
            FROM %1$I AS r$q$, relation)
    END;
END;

-- The projected columns of a source as a select list over alias `r` ("r.id, r.name,
-- ..."): what backfill and verify read, and nothing more (an extra column of any type
-- is the application's business, and pubctl never touches its value).
CREATE FUNCTION pub.source_select_list(source text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT pg_catalog.string_agg(pg_catalog.format('r.%I', c.column_name), ', ')
    FROM pub.source_columns(source) AS c;
END;

-- The kinds a source publishes.
CREATE FUNCTION pub.source_kinds(source text) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE source
        WHEN 'study_topic' THEN '{topic}'::text[]
        WHEN 'study_question' THEN '{question,explanation}'::text[]
    END;
END;
