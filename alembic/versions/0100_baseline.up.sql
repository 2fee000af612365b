-- Revision 0100 (frozen): the baseline of pubctl 0.1.0, the whole schema in one step.
-- A copy of sql/schema/*.sql as it was at the release, in that order. Schema pub itself
-- is created before the first revision runs, because Alembic's version table lives in
-- it; the application's schema comes from the setting pubctl.app_schema, which each
-- run sets from `pubctl migrate --app-schema`.

-- ===== 10_settings.sql =====

-- Schema pub, its settings, and the publishing switch.
--
-- sql/schema/*.sql, run in name order, is the whole current schema of pubctl as the
-- newest migration leaves it. It is for reading and for the test that proves the
-- migrations build exactly this (tests/migration/test_schema_matches.py); installs
-- always go through `pubctl migrate`, whose revisions carry frozen copies of this SQL.

REVOKE ALL ON SCHEMA pub FROM PUBLIC;

SET LOCAL search_path = pg_catalog, pg_temp;

CREATE FUNCTION pub.unknown_lock(name text) RETURNS bigint
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'pubctl: unknown advisory lock %', name
        USING ERRCODE = 'PB003', DETAIL = 'pub.lock_key knows every lock pubctl takes.',
              HINT = 'Add the lock to pub.lock_key (in a migration) before taking it.';
END;
$$;

-- The advisory locks pubctl takes, by name. The keys are "pubctl" in ASCII followed by
-- a number, unlikely to collide with an application's own. (The migration lock, taken
-- before schema pub exists, is the one key defined elsewhere: sql/queries.sql.)
CREATE FUNCTION pub.lock_key(name text) RETURNS bigint
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN CASE name
        WHEN 'applier' THEN 8103491283817594882                 -- one apply batch at a time
        WHEN 'worker' THEN 8103491283817594883                  -- held shared by every worker
        WHEN 'backfill:study_topic' THEN 8103491283817594884    -- one backfill per table
        WHEN 'backfill:study_question' THEN 8103491283817594885
        WHEN 'unpublished_writers' THEN 8103491283817594886     -- wrote while publishing was off
        -- A NULL key would make every pg_advisory_* call a silent no-op.
        ELSE pub.unknown_lock(name)
    END;
END;
$$;

-- The sessions holding (or waiting for) one of those locks in this database.
CREATE FUNCTION pub.lock_holders(name text)
    RETURNS TABLE (pid integer, mode text, granted boolean)
    LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT l.pid, l.mode, l.granted
    FROM pg_catalog.pg_locks AS l
    WHERE l.locktype = 'advisory'
      AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d
                        WHERE d.datname = pg_catalog.current_database())
      AND l.classid = (pub.lock_key(lock_holders.name) >> 32)::oid
      AND l.objid = (pub.lock_key(lock_holders.name) & 4294967295)::oid
      AND l.objsubid = 1;
END;

-- Every change of the publishing switch takes the next value: a transaction can tell
-- whether the switch moved since its snapshot, since a sequence is not versioned.
CREATE SEQUENCE pub.publishing_epoch AS bigint;

-- Settings (one row): whether writes are published, and where the application's
-- tables live.
CREATE TABLE pub.settings (
    -- A single row: the primary key can only be true.
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    publishing_enabled boolean NOT NULL DEFAULT true,
    app_schema         name NOT NULL DEFAULT 'public',
    changed_at         timestamptz NOT NULL DEFAULT now(),
    publishing_epoch   bigint NOT NULL DEFAULT pg_catalog.nextval('pub.publishing_epoch')
);

COMMENT ON TABLE pub.settings IS
    'pubctl settings (one row): whether writes to the application tables are published, and the schema holding those tables.';

-- The application's schema is chosen once, at install (`pubctl migrate --app-schema`).
INSERT INTO pub.settings (app_schema)
VALUES (COALESCE(NULLIF(pg_catalog.current_setting('pubctl.app_schema', true), ''), 'public'));

-- Whether writes are published, as this statement's snapshot sees it.
CREATE FUNCTION pub.publishing_enabled() RETURNS boolean
    LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT COALESCE((SELECT s.publishing_enabled FROM pub.settings s), true);
END;

-- Switch publishing on or off (`pubctl enable` / `pubctl disable`); returns the epoch
-- of the change.
CREATE FUNCTION pub.set_publishing(enabled boolean) RETURNS bigint
    LANGUAGE sql VOLATILE
BEGIN ATOMIC
    UPDATE pub.settings
    SET publishing_enabled = set_publishing.enabled,
        publishing_epoch = pg_catalog.nextval('pub.publishing_epoch'),
        changed_at = pg_catalog.now()
    RETURNING publishing_epoch;
END;

-- Called by capture when its snapshot says publishing is off, before it skips a write.
--
-- The write is skipped only if the switch has not moved since that snapshot (a
-- REPEATABLE READ transaction that began before `pubctl enable` keeps seeing "off"
-- for the rest of its life; it must publish instead: extra outbox rows are harmless,
-- missing ones are lost changes). The transaction is then marked, with a shared
-- advisory lock held until it ends, as one that wrote without publishing:
-- `pubctl enable` and the first page of a backfill wait for every such transaction,
-- so a backfill always sees their writes. The mark is taken before the epoch is read:
-- an `enable` that commits after the read finds the mark and waits for it.
CREATE FUNCTION pub.unpublished_write_allowed() RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    seen bigint;
    latest bigint;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(pub.lock_key('unpublished_writers'));
    SELECT s.publishing_epoch INTO seen FROM pub.settings AS s;
    SELECT e.last_value INTO latest FROM pub.publishing_epoch AS e;
    RETURN seen IS NOT DISTINCT FROM latest;
END;
$$;

REVOKE ALL ON FUNCTION pub.set_publishing(boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.unpublished_write_allowed() FROM PUBLIC;

-- ===== 20_projection.sql =====

-- The projection: what each source row publishes, as RFC 8785 canonical JSON text.
--
-- This is the one source of truth inside the database; triggers, backfill and verify
-- all call these functions. Each returns the canonical text of the item's payload, or
-- NULL when the item is not live (a tombstone). The payload column is that text cast
-- to jsonb, and the hash (pub.payload_hash, at the end of this file) is computed over
-- that same text, so the two can never disagree.
--
-- Why the text is built by concatenation per kind: the keys of each kind are fixed
-- and ASCII, so their RFC 8785 order is known in advance; strings are escaped by
-- to_json(text), whose escaping is exactly RFC 8785's (\" \\ \b \f \n \r \t, other
-- control characters as \u00xx lowercase, everything else literal); integers print
-- as digits, which is RFC 8785's form for integers within +-(2^53-1). A generic
-- recursive canonicaliser in SQL measured about 45x slower.
--
-- Why these are LANGUAGE sql STABLE functions with a BEGIN ATOMIC body and no SET
-- search_path: the planner inlines them into the calling query (no call overhead per
-- row; a SET clause prevents inlining and measured 2.4x slower), and a BEGIN ATOMIC
-- body is parsed when the function is created, with every name resolved then, so the
-- caller's search_path cannot change what they call. They are created with
-- search_path = pg_catalog, pg_temp. STABLE, not IMMUTABLE: to_json is STABLE, and an
-- IMMUTABLE function whose body is not is never inlined.

SET LOCAL search_path = pg_catalog, pg_temp;

-- JSON text of a nullable string / integer.
CREATE FUNCTION pub.json_string(value text) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT COALESCE(pg_catalog.to_json(value)::text, 'null');
END;

CREATE FUNCTION pub.json_integer(value bigint) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT COALESCE(value::text, 'null');
END;

-- Integers RFC 8785 can carry exactly (IEEE double): beyond them a number would be
-- published as a different number, so such rows are refused instead.
CREATE FUNCTION pub.is_json_safe_integer(value bigint) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT value IS NULL OR value BETWEEN -9007199254740991 AND 9007199254740991;
END;

-- A JSON array of strings, as canonical text; NULL when it is anything else.
CREATE TYPE pub.string_list AS (items text[]);

CREATE FUNCTION pub.json_string_array(value jsonb) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        -- strict: a lax JSON path would unwrap nested arrays and let [["a"]] through.
        WHEN pg_catalog.jsonb_typeof(value) = 'array'
             AND NOT pg_catalog.jsonb_path_exists(value, 'strict $[*] ? (@.type() != "string")')
        -- jsonb_populate_record turns the array into text[] without a subquery per
        -- row; to_json(text[]) prints it compact, each element escaped like to_json(text).
        THEN pg_catalog.to_json(
                 (pg_catalog.jsonb_populate_record(
                      NULL::pub.string_list,
                      pg_catalog.jsonb_build_object('items', value))).items)::text
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
) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN NOT pub.topic_is_live(deleted_at) THEN NULL
        WHEN NOT pub.is_json_safe_integer(topic_id)
            THEN pub.payload_rule_violation('topic', topic_id, 'id must be within +-(2^53-1)')
        ELSE '{"exam_round_size":' || pub.json_integer(exam_round_size)
            || ',"name":' || pub.json_string(name)
            || ',"topic_id":' || pub.json_integer(topic_id)
            || '}'
    END;
END;

CREATE FUNCTION pub.question_canonical(
    question_id bigint, topic_id bigint, exam_name text, exam_round integer,
    number integer, body text, choices jsonb, answer integer, deleted_at timestamptz
) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN NOT pub.question_is_live(deleted_at) THEN NULL
        WHEN NOT (pub.is_json_safe_integer(question_id) AND pub.is_json_safe_integer(topic_id))
            THEN pub.payload_rule_violation('question', question_id,
                                            'id and topic_id must be within +-(2^53-1)')
        ELSE '{"answer":' || pub.json_integer(answer)
            || ',"body":' || pub.json_string(body)
            -- Checked and printed in one evaluation: the rule error only when NULL.
            || ',"choices":' || COALESCE(
                   pub.json_string_array(choices),
                   pub.payload_rule_violation('question', question_id,
                                              'choices must be a JSON array of strings'))
            || ',"exam_name":' || pub.json_string(exam_name)
            || ',"exam_round":' || pub.json_integer(exam_round)
            || ',"number":' || pub.json_integer(number)
            || ',"question_id":' || pub.json_integer(question_id)
            || ',"topic_id":' || pub.json_integer(topic_id)
            || '}'
    END;
END;

CREATE FUNCTION pub.explanation_canonical(
    question_id bigint, explanation text, explanation_status text, deleted_at timestamptz
) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN NOT pub.explanation_is_live(deleted_at, explanation_status) THEN NULL
        WHEN NOT pub.is_json_safe_integer(question_id)
            THEN pub.payload_rule_violation('explanation', question_id,
                                            'id must be within +-(2^53-1)')
        ELSE '{"explanation":' || pub.json_string(explanation)
            || ',"question_id":' || pub.json_integer(question_id)
            || '}'
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
-- still exists), and writes that bypass the table's statement triggers (partitions,
-- inheritance children).
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

-- ===== 30_outbox.sql =====

-- The outbox: what the triggers and the backfill produce and the applier consumes.
--
-- Insert-only: producers insert, the applier deletes what it consumed, nobody
-- updates a row. Its columns suit Debezium's Outbox Event Router as they are
-- (id, kind for routing, source_id as key, payload).

SET LOCAL search_path = pg_catalog, pg_temp;

CREATE TABLE pub.outbox (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('topic', 'question', 'explanation')),
    source_id      bigint NOT NULL,
    payload        jsonb NOT NULL,
    payload_hash   text NOT NULL,
    schema_version integer NOT NULL,
    deleted        boolean NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE pub.outbox IS
    'Item changes waiting for the applier, oldest first by id. Written only by pubctl''s triggers and backfill.';

-- How an item becomes outbox columns, in one place: payload and hash both come from
-- the same canonical text, and a NULL canonical text is a tombstone ({} and deleted).
-- Inlinable SQL functions, so the triggers' set-based INSERTs pay no call per row.
CREATE FUNCTION pub.outbox_payload(canonical text) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT COALESCE(canonical, '{}')::jsonb;
END;

CREATE FUNCTION pub.outbox_payload_hash(canonical text) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT pub.payload_hash(COALESCE(canonical, '{}'));
END;

-- The payload schema version the projection functions produce.
CREATE FUNCTION pub.schema_version() RETURNS integer
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT 1;
END;

-- Wakes `pubctl worker`. Postgres folds identical notifications of one transaction,
-- so a transaction wakes the worker once however many statements it ran.
CREATE FUNCTION pub.notify_outbox() RETURNS void
    LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT pg_catalog.pg_notify('pubctl_outbox', '');
END;

REVOKE ALL ON FUNCTION pub.notify_outbox() FROM PUBLIC;

-- ===== 40_capture.sql =====

-- Capture: the triggers on the application's tables that put item changes into the
-- outbox, in the writer's own transaction.
--
-- Why this mix of trigger kinds (measured, see BENCHMARKS.md):
-- * INSERT and DELETE: statement triggers with transition tables. One INSERT into
--   the outbox per statement amortises the per-row cost of bulk imports.
-- * UPDATE: a row trigger with a WHEN clause. Postgres evaluates WHEN without calling
--   the function, so an UPDATE that touches no projected column (updated_at, ...)
--   costs almost nothing. A statement trigger would need OLD and NEW transition
--   tables, whose capture alone costs a no-op UPDATE of every row about 17% and whose
--   join about 50% more, because Postgres fills them for every updated row.
-- * TRUNCATE fires no row triggers, so it is refused while publishing is on.
--
-- Who runs this code. The functions are SECURITY DEFINER, so that the application's
-- role needs no privilege on schema pub to be published and cannot write the outbox
-- itself. Their owner is the NOLOGIN role pubctl_capture when `pubctl migrate` could
-- create it (superuser or CREATEROLE), holding only what capture needs; otherwise the
-- role that ran the migration. Everything they evaluate is built in: before reading a
-- projected column they check its type (pub.require_*_shape), because a table owner
-- who swapped in a column of a type of their own making, with an implicit cast or an
-- operator, would otherwise have that code run with these functions' rights. They
-- compare columns, never old payloads, to decide what changed: a row that broke the
-- payload rules before pubctl was installed can still be fixed by an UPDATE.

SET LOCAL search_path = pg_catalog, pg_temp;

-- The triggers pubctl attached, as pg_get_triggerdef printed them then: status and
-- verify report a trigger that is missing, disabled, replica-only or defined otherwise
-- (another function, timing, level, event, WHEN clause or column).
CREATE TABLE pub.capture_triggers (
    table_name   name NOT NULL,
    trigger_name name NOT NULL,
    definition   text NOT NULL,
    PRIMARY KEY (table_name, trigger_name)
);

COMMENT ON TABLE pub.capture_triggers IS
    'The triggers pubctl attached to the application''s tables, as defined when attached; status and verify compare the catalog with them.';

-- The statement triggers write one INSERT ... SELECT per kind from the transition
-- table. Each SELECT filters on liveness and computes the canonical text in a
-- subquery kept apart by OFFSET 0, so that the text is built once per row although
-- both the payload and the hash use it. (One INSERT per statement through a LATERAL
-- VALUES list of kinds measured 1.45x slower on a 100k-row insert.) The shape check is
-- a one-time filter over the first row of the transition table: it runs before the
-- subquery reads any column, and costs no catalog access.

CREATE FUNCTION pub.capture_topic_insert() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pub.publishing_enabled() AND pub.unpublished_write_allowed() THEN
        RETURN NULL;
    END IF;
    -- A row inserted already deleted was never published: nothing to tombstone.
    INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
    SELECT 'topic', i.source_id, pub.outbox_payload(i.canonical),
           pub.outbox_payload_hash(i.canonical), pub.schema_version(), false
    FROM (SELECT r.id::bigint,
                 pub.topic_canonical(r.id, r.name, r.exam_round_size, r.deleted_at)
          FROM new_rows AS r
          WHERE pub.topic_is_live(r.deleted_at)
          OFFSET 0) AS i(source_id, canonical)
    WHERE (SELECT pub.require_topic_shape(pg_typeof(t.id), pg_typeof(t.name),
                                          pg_typeof(t.exam_round_size), pg_typeof(t.deleted_at))
           FROM new_rows AS t LIMIT 1) IS NOT FALSE;
    IF FOUND THEN
        PERFORM pub.notify_outbox();
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION pub.capture_question_insert() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    enqueued boolean;
BEGIN
    IF NOT pub.publishing_enabled() AND pub.unpublished_write_allowed() THEN
        RETURN NULL;
    END IF;
    INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
    SELECT 'question', i.source_id, pub.outbox_payload(i.canonical),
           pub.outbox_payload_hash(i.canonical), pub.schema_version(), false
    FROM (SELECT r.id::bigint,
                 pub.question_canonical(r.id, r.topic_id, r.exam_name, r.exam_round, r.number,
                                        r.body, r.choices, r.answer, r.deleted_at)
          FROM new_rows AS r
          WHERE pub.question_is_live(r.deleted_at)
          OFFSET 0) AS i(source_id, canonical)
    WHERE (SELECT pub.require_question_shape(
                      pg_typeof(t.id), pg_typeof(t.topic_id), pg_typeof(t.exam_name),
                      pg_typeof(t.exam_round), pg_typeof(t.number), pg_typeof(t.body),
                      pg_typeof(t.choices), pg_typeof(t.answer), pg_typeof(t.explanation),
                      pg_typeof(t.explanation_status), pg_typeof(t.deleted_at))
           FROM new_rows AS t LIMIT 1) IS NOT FALSE;
    enqueued := FOUND;
    INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
    SELECT 'explanation', i.source_id, pub.outbox_payload(i.canonical),
           pub.outbox_payload_hash(i.canonical), pub.schema_version(), false
    FROM (SELECT r.id::bigint,
                 pub.explanation_canonical(r.id, r.explanation, r.explanation_status,
                                           r.deleted_at)
          FROM new_rows AS r
          WHERE pub.explanation_is_live(r.deleted_at, r.explanation_status)
          OFFSET 0) AS i(source_id, canonical)
    WHERE (SELECT pub.require_question_shape(
                      pg_typeof(t.id), pg_typeof(t.topic_id), pg_typeof(t.exam_name),
                      pg_typeof(t.exam_round), pg_typeof(t.number), pg_typeof(t.body),
                      pg_typeof(t.choices), pg_typeof(t.answer), pg_typeof(t.explanation),
                      pg_typeof(t.explanation_status), pg_typeof(t.deleted_at))
           FROM new_rows AS t LIMIT 1) IS NOT FALSE;
    IF enqueued OR FOUND THEN
        PERFORM pub.notify_outbox();
    END IF;
    RETURN NULL;
END;
$$;

-- Only items that were live need a tombstone: a row that stays deleted adds nothing.
CREATE FUNCTION pub.capture_topic_delete() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pub.publishing_enabled() AND pub.unpublished_write_allowed() THEN
        RETURN NULL;
    END IF;
    INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
    SELECT 'topic', r.id, pub.outbox_payload(NULL), pub.outbox_payload_hash(NULL),
           pub.schema_version(), true
    FROM old_rows AS r
    WHERE pub.topic_is_live(r.deleted_at)
      AND (SELECT pub.require_topic_shape(pg_typeof(t.id), pg_typeof(t.name),
                                          pg_typeof(t.exam_round_size), pg_typeof(t.deleted_at))
           FROM old_rows AS t LIMIT 1) IS NOT FALSE;
    IF FOUND THEN
        PERFORM pub.notify_outbox();
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION pub.capture_question_delete() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pub.publishing_enabled() AND pub.unpublished_write_allowed() THEN
        RETURN NULL;
    END IF;
    INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
    SELECT k.kind, r.id, pub.outbox_payload(NULL), pub.outbox_payload_hash(NULL),
           pub.schema_version(), true
    FROM old_rows AS r
    CROSS JOIN (VALUES ('question'), ('explanation')) AS k(kind)
    WHERE CASE k.kind
              WHEN 'question' THEN pub.question_is_live(r.deleted_at)
              ELSE pub.explanation_is_live(r.deleted_at, r.explanation_status)
          END
      AND (SELECT pub.require_question_shape(
                      pg_typeof(t.id), pg_typeof(t.topic_id), pg_typeof(t.exam_name),
                      pg_typeof(t.exam_round), pg_typeof(t.number), pg_typeof(t.body),
                      pg_typeof(t.choices), pg_typeof(t.answer), pg_typeof(t.explanation),
                      pg_typeof(t.explanation_status), pg_typeof(t.deleted_at))
           FROM old_rows AS t LIMIT 1) IS NOT FALSE;
    IF FOUND THEN
        PERFORM pub.notify_outbox();
    END IF;
    RETURN NULL;
END;
$$;

-- The UPDATE triggers run once per changed row, so every query they run costs per row
-- (about 20 us each: a query's plan state is rebuilt on every execution). They build
-- the canonical texts in PL/pgSQL expressions, whose state lives for the transaction,
-- and write a row's items with one INSERT ... VALUES.
--
-- * The publishing switch is read once per transaction: pubctl.publishing_on_in holds
--   the id of the transaction that found it on. A writer can set that setting to
--   anything; believing it only ever makes capture write (a transaction that began
--   while publishing was on keeps publishing until it ends, which is harmless), never
--   skip: "off" is always read from the table, and goes through
--   pub.unpublished_write_allowed.
-- * An ORM that saves one object several times in a transaction updates the same row
--   again and again; only its last state needs publishing. pubctl.last_enqueued (SET
--   LOCAL: gone at commit or rollback, undone by a rolled-back savepoint) names the row
--   the previous captured UPDATE of this transaction wrote and the outbox ids it got,
--   and an UPDATE of that same row removes them first. A writer can set this one to
--   anything too, so it only says where to look: a row is removed only if it belongs
--   to an item this UPDATE writes and was written by this very transaction (its xmin is
--   this transaction's id), rows nobody else has seen. A forged setting removes nothing
--   else; at worst an item keeps an extra row, which the applier's churn rule makes
--   harmless. The setting also tells that this transaction has already woken the
--   applier (one notification per row would be a query per row).

CREATE FUNCTION pub.capture_topic_update() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Before any column is read (pub.require_topic_shape); OLD has NEW's row type.
    shape_ok constant boolean := pub.require_topic_shape(
        pg_typeof(NEW.id), pg_typeof(NEW.name), pg_typeof(NEW.exam_round_size),
        pg_typeof(NEW.deleted_at));
    was_live constant boolean := pub.topic_is_live(OLD.deleted_at);
    is_live constant boolean := pub.topic_is_live(NEW.deleted_at);
    same_id constant boolean := OLD.id IS NOT DISTINCT FROM NEW.id;
    topic_text text;
    previous text := current_setting('pubctl.last_enqueued', true);
    -- Outbox ids, taken here so that the next UPDATE of this row knows them exactly.
    first_id bigint;
    second_id bigint;
    noted text;
BEGIN
    IF same_id AND NOT (was_live IS DISTINCT FROM is_live
                        OR (is_live AND ((OLD.name COLLATE "C"), OLD.exam_round_size)
                                        IS DISTINCT FROM ((NEW.name COLLATE "C"),
                                                          NEW.exam_round_size))) THEN
        RETURN NULL;  -- nothing published changed (deleted_at moved, say)
    END IF;
    IF NOT same_id AND NOT was_live AND NOT is_live THEN
        RETURN NULL;  -- a key change of a row deleted before and after
    END IF;
    IF current_setting('pubctl.publishing_on_in', true)
       IS DISTINCT FROM pg_current_xact_id()::text THEN
        IF NOT pub.publishing_enabled() AND pub.unpublished_write_allowed() THEN
            RETURN NULL;
        END IF;
        noted := set_config('pubctl.publishing_on_in', pg_current_xact_id()::text, true);
    END IF;
    IF starts_with(previous, 'topic:' || OLD.id || ':')
       AND previous ~ '^[a-z]+:-?[0-9]+:[0-9]+(,[0-9]+)*$' THEN
        -- Superseded: this transaction's own rows of the items written below.
        DELETE FROM pub.outbox AS o
        WHERE o.id = ANY (string_to_array(split_part(previous, ':', 3), ',')::bigint[])
          AND o.kind = 'topic'
          AND ((o.source_id = NEW.id AND (same_id OR is_live))
               OR (NOT same_id AND o.source_id = OLD.id AND was_live))
          AND o.xmin = pg_current_xact_id()::xid;
    END IF;
    first_id := nextval('pub.outbox_id_seq');
    IF is_live THEN
        topic_text := pub.topic_canonical(NEW.id, NEW.name, NEW.exam_round_size, NEW.deleted_at);
    END IF;
    IF same_id OR NOT was_live THEN
        -- The item itself: its new payload, or its tombstone.
        INSERT INTO pub.outbox
            (id, kind, source_id, payload, payload_hash, schema_version, deleted)
        OVERRIDING SYSTEM VALUE
        VALUES (first_id, 'topic', NEW.id, pub.outbox_payload(topic_text),
                pub.outbox_payload_hash(topic_text), pub.schema_version(), topic_text IS NULL);
    ELSIF NOT is_live THEN
        -- A new id is a new item: the old one ends (the new one was never live).
        INSERT INTO pub.outbox
            (id, kind, source_id, payload, payload_hash, schema_version, deleted)
        OVERRIDING SYSTEM VALUE
        VALUES (first_id, 'topic', OLD.id, pub.outbox_payload(NULL),
                pub.outbox_payload_hash(NULL), pub.schema_version(), true);
    ELSE
        -- A new id is a new item: the old one ends, the new one begins.
        second_id := nextval('pub.outbox_id_seq');
        INSERT INTO pub.outbox
            (id, kind, source_id, payload, payload_hash, schema_version, deleted)
        OVERRIDING SYSTEM VALUE
        VALUES (first_id, 'topic', OLD.id, pub.outbox_payload(NULL),
                pub.outbox_payload_hash(NULL), pub.schema_version(), true),
               (second_id, 'topic', NEW.id, pub.outbox_payload(topic_text),
                pub.outbox_payload_hash(topic_text), pub.schema_version(), false);
    END IF;
    IF COALESCE(previous, '') = '' THEN
        PERFORM pub.notify_outbox();
    END IF;
    noted := set_config('pubctl.last_enqueued',
        concat_ws(',', 'topic:' || NEW.id || ':' || first_id, second_id), true);
    RETURN NULL;
END;
$$;

CREATE FUNCTION pub.capture_question_update() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Before any column is read (pub.require_question_shape); OLD has NEW's row type.
    shape_ok constant boolean := pub.require_question_shape(
        pg_typeof(NEW.id), pg_typeof(NEW.topic_id), pg_typeof(NEW.exam_name),
        pg_typeof(NEW.exam_round), pg_typeof(NEW.number), pg_typeof(NEW.body),
        pg_typeof(NEW.choices), pg_typeof(NEW.answer), pg_typeof(NEW.explanation),
        pg_typeof(NEW.explanation_status), pg_typeof(NEW.deleted_at));
    question_was_live constant boolean := pub.question_is_live(OLD.deleted_at);
    question_is_live constant boolean := pub.question_is_live(NEW.deleted_at);
    explanation_was_live constant boolean :=
        pub.explanation_is_live(OLD.deleted_at, OLD.explanation_status);
    explanation_is_live constant boolean :=
        pub.explanation_is_live(NEW.deleted_at, NEW.explanation_status);
    same_id constant boolean := OLD.id IS NOT DISTINCT FROM NEW.id;
    -- The new id's items to write: a live item whose payload or liveness changed (all of
    -- them after a key change), and, under the same id, items that stopped being live.
    question_changes constant boolean :=
        (question_is_live
         AND (NOT same_id OR NOT question_was_live
              OR (OLD.topic_id, (OLD.exam_name COLLATE "C"), OLD.exam_round, OLD.number,
                  (OLD.body COLLATE "C"), OLD.choices, OLD.answer)
                 IS DISTINCT FROM (NEW.topic_id, (NEW.exam_name COLLATE "C"), NEW.exam_round,
                                   NEW.number, (NEW.body COLLATE "C"), NEW.choices, NEW.answer)))
        OR (same_id AND question_was_live AND NOT question_is_live);
    explanation_changes constant boolean :=
        (explanation_is_live
         AND (NOT same_id OR NOT explanation_was_live
              OR (OLD.explanation COLLATE "C") IS DISTINCT FROM (NEW.explanation COLLATE "C")))
        OR (same_id AND explanation_was_live AND NOT explanation_is_live);
    question_text text;
    explanation_text text;
    previous text := current_setting('pubctl.last_enqueued', true);
    -- Outbox ids, taken here so that the next UPDATE of this row knows them exactly.
    ids bigint[];
    noted text;
BEGIN
    IF NOT (question_changes OR explanation_changes)
       AND (same_id OR NOT (question_was_live OR explanation_was_live)) THEN
        RETURN NULL;  -- nothing published changed
    END IF;
    IF current_setting('pubctl.publishing_on_in', true)
       IS DISTINCT FROM pg_current_xact_id()::text THEN
        IF NOT pub.publishing_enabled() AND pub.unpublished_write_allowed() THEN
            RETURN NULL;
        END IF;
        noted := set_config('pubctl.publishing_on_in', pg_current_xact_id()::text, true);
    END IF;
    IF starts_with(previous, 'question:' || OLD.id || ':')
       AND previous ~ '^[a-z]+:-?[0-9]+:[0-9]+(,[0-9]+)*$' THEN
        -- Superseded: this transaction's own rows of the items written below.
        DELETE FROM pub.outbox AS o
        WHERE o.id = ANY (string_to_array(split_part(previous, ':', 3), ',')::bigint[])
          AND ((o.source_id = NEW.id
                AND ((o.kind = 'question' AND question_changes)
                     OR (o.kind = 'explanation' AND explanation_changes)))
               OR (NOT same_id AND o.source_id = OLD.id
                   AND ((o.kind = 'question' AND question_was_live)
                        OR (o.kind = 'explanation' AND explanation_was_live))))
          AND o.xmin = pg_current_xact_id()::xid;
    END IF;
    IF question_changes THEN
        question_text := pub.question_canonical(
            NEW.id, NEW.topic_id, NEW.exam_name, NEW.exam_round, NEW.number,
            NEW.body, NEW.choices, NEW.answer, NEW.deleted_at);
    END IF;
    IF explanation_changes THEN
        explanation_text := pub.explanation_canonical(
            NEW.id, NEW.explanation, NEW.explanation_status, NEW.deleted_at);
    END IF;
    IF NOT same_id THEN
        -- A new id is a new item: the old one ends, the new one begins. Rare: the
        -- general form, ids in outbox order.
        WITH wanted AS (
            SELECT i.n, i.kind, i.source_id, i.canonical
            FROM (VALUES (1, 'question', OLD.id::bigint, NULL::text, question_was_live),
                         (2, 'explanation', OLD.id::bigint, NULL::text, explanation_was_live),
                         (3, 'question', NEW.id::bigint, question_text, question_changes),
                         (4, 'explanation', NEW.id::bigint, explanation_text,
                          explanation_changes))
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
    ELSIF question_changes AND explanation_changes THEN
        ids := ARRAY[nextval('pub.outbox_id_seq'), nextval('pub.outbox_id_seq')];
        INSERT INTO pub.outbox
            (id, kind, source_id, payload, payload_hash, schema_version, deleted)
        OVERRIDING SYSTEM VALUE
        VALUES (ids[1], 'question', NEW.id, pub.outbox_payload(question_text),
                pub.outbox_payload_hash(question_text), pub.schema_version(),
                question_text IS NULL),
               (ids[2], 'explanation', NEW.id, pub.outbox_payload(explanation_text),
                pub.outbox_payload_hash(explanation_text), pub.schema_version(),
                explanation_text IS NULL);
    ELSIF question_changes THEN
        ids := ARRAY[nextval('pub.outbox_id_seq')];
        INSERT INTO pub.outbox
            (id, kind, source_id, payload, payload_hash, schema_version, deleted)
        OVERRIDING SYSTEM VALUE
        VALUES (ids[1], 'question', NEW.id, pub.outbox_payload(question_text),
                pub.outbox_payload_hash(question_text), pub.schema_version(),
                question_text IS NULL);
    ELSE
        ids := ARRAY[nextval('pub.outbox_id_seq')];
        INSERT INTO pub.outbox
            (id, kind, source_id, payload, payload_hash, schema_version, deleted)
        OVERRIDING SYSTEM VALUE
        VALUES (ids[1], 'explanation', NEW.id, pub.outbox_payload(explanation_text),
                pub.outbox_payload_hash(explanation_text), pub.schema_version(),
                explanation_text IS NULL);
    END IF;
    IF COALESCE(previous, '') = '' THEN
        PERFORM pub.notify_outbox();
    END IF;
    noted := set_config('pubctl.last_enqueued',
        'question:' || NEW.id || ':' || array_to_string(ids, ','), true);
    RETURN NULL;
END;
$$;

-- TRUNCATE fires no row triggers: refused while publishing is on, also for a
-- transaction whose snapshot still says "off" after `pubctl enable` (see
-- pub.unpublished_write_allowed, which also makes enable wait for the truncation).
CREATE FUNCTION pub.refuse_truncate() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pub.publishing_enabled() OR NOT pub.unpublished_write_allowed() THEN
        RAISE EXCEPTION 'pubctl: TRUNCATE of %.% is refused while publishing is on',
                TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'PB002',
                  DETAIL = 'TRUNCATE fires no row triggers: the published copy would keep '
                           'every truncated row.',
                  HINT = 'Soft-delete the rows (set deleted_at) or DELETE them; or run '
                         '`pubctl disable`, TRUNCATE, `pubctl enable`, `pubctl backfill all`.';
    END IF;
    RETURN NULL;
END;
$$;

REVOKE ALL ON FUNCTION pub.capture_topic_insert() FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.capture_question_insert() FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.capture_topic_delete() FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.capture_question_delete() FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.capture_topic_update() FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.capture_question_update() FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.refuse_truncate() FROM PUBLIC;

-- Everything that would make capture miss writes without failing them, one row each,
-- for `pubctl status` and `pubctl verify` (one query for both):
-- * publishing switched off;
-- * one of our triggers missing, disabled, replica-only, or no longer as attached;
-- * a source table whose shape no longer fits (pub.source_shape_problems);
-- * session_replication_role = replica set for a role or for the database (ALTER
--   ROLE / ALTER DATABASE ... SET), or in the calling session: no trigger fires there;
-- * capture functions that run as a role able to log in or as a superuser.
CREATE FUNCTION pub.capture_problems() RETURNS TABLE (subject text, problem text)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    app name := (SELECT s.app_schema FROM pub.settings AS s);
BEGIN
    IF NOT (SELECT s.publishing_enabled FROM pub.settings AS s) THEN
        RETURN QUERY SELECT 'publishing'::text, 'publishing is switched off'::text;
    END IF;

    RETURN QUERY
    SELECT format('%s.%s', e.table_name, e.trigger_name),
           CASE
               WHEN t.oid IS NULL THEN 'missing'
               WHEN t.tgenabled = 'D' THEN 'disabled'
               WHEN t.tgenabled = 'R' THEN 'fires only under session_replication_role = replica'
               ELSE 'defined otherwise than pubctl attached it: ' || pg_get_triggerdef(t.oid)
           END
    FROM pub.capture_triggers AS e
    LEFT JOIN pg_catalog.pg_class AS c
           ON c.relname = e.table_name
          AND c.relnamespace = (SELECT n.oid FROM pg_catalog.pg_namespace AS n
                                WHERE n.nspname = app)
    LEFT JOIN pg_catalog.pg_trigger AS t ON t.tgrelid = c.oid AND t.tgname = e.trigger_name
    WHERE t.oid IS NULL OR t.tgenabled IN ('D', 'R')
       OR pg_get_triggerdef(t.oid) <> e.definition
    ORDER BY 1;

    RETURN QUERY
    SELECT s.source, p
    FROM (VALUES ('study_topic'), ('study_question')) AS s(source),
         LATERAL pub.source_shape_problems(s.source) AS p;

    RETURN QUERY
    SELECT CASE
               WHEN d.setrole = 0 THEN format('database %s', current_database())
               WHEN d.setdatabase = 0 THEN format('role %s', d.setrole::regrole)
               ELSE format('role %s in database %s', d.setrole::regrole, current_database())
           END,
           'session_replication_role = replica is set: its writes fire no trigger'
    FROM pg_catalog.pg_db_role_setting AS d
    WHERE d.setdatabase IN (0, (SELECT b.oid FROM pg_catalog.pg_database AS b
                                WHERE b.datname = current_database()))
      AND EXISTS (SELECT FROM unnest(d.setconfig) AS c
                  WHERE lower(replace(c, ' ', '')) IN ('session_replication_role=replica',
                                                       'session_replication_role=''replica'''))
    ORDER BY 1;

    IF current_setting('session_replication_role') = 'replica' THEN
        RETURN QUERY SELECT 'this session'::text,
            'session_replication_role = replica: its writes fire no trigger'::text;
    END IF;

    RETURN QUERY
    SELECT format('capture functions'),
           format('run as role %s, which %s', r.rolname,
                  CASE WHEN r.rolsuper THEN 'is a superuser' ELSE 'can log in' END)
    FROM pg_catalog.pg_proc AS f
    JOIN pg_catalog.pg_roles AS r ON r.oid = f.proowner
    WHERE f.oid = 'pub.capture_topic_insert()'::regprocedure
      AND r.rolname = 'pubctl_capture' AND (r.rolcanlogin OR r.rolsuper);
END;
$$;

-- Attach the triggers to the application's tables, in the schema recorded at install,
-- and record their definitions. The WHEN clauses list every projected column (and
-- liveness, not the deleted_at timestamp itself): an UPDATE that changes none of them
-- never calls the function. Text columns compare in the "C" collation, byte for byte:
-- under a nondeterministic collation 'Anatomy' and 'anatomy' would compare equal, and
-- the change would never be published.
DO $attach$
DECLARE
    app name := (SELECT s.app_schema FROM pub.settings s);
BEGIN
    EXECUTE format($sql$
        CREATE TRIGGER pub_capture_insert AFTER INSERT ON %1$I.study_topic
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION pub.capture_topic_insert();
        CREATE TRIGGER pub_capture_update AFTER UPDATE ON %1$I.study_topic
            FOR EACH ROW
            WHEN ((OLD.id, OLD.name COLLATE "C", OLD.exam_round_size, OLD.deleted_at IS NULL)
                  IS DISTINCT FROM
                  (NEW.id, NEW.name COLLATE "C", NEW.exam_round_size, NEW.deleted_at IS NULL))
            EXECUTE FUNCTION pub.capture_topic_update();
        CREATE TRIGGER pub_capture_delete AFTER DELETE ON %1$I.study_topic
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION pub.capture_topic_delete();
        CREATE TRIGGER pub_refuse_truncate BEFORE TRUNCATE ON %1$I.study_topic
            FOR EACH STATEMENT EXECUTE FUNCTION pub.refuse_truncate();

        CREATE TRIGGER pub_capture_insert AFTER INSERT ON %1$I.study_question
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION pub.capture_question_insert();
        CREATE TRIGGER pub_capture_update AFTER UPDATE ON %1$I.study_question
            FOR EACH ROW
            WHEN ((OLD.id, OLD.topic_id, OLD.exam_name COLLATE "C", OLD.exam_round, OLD.number,
                   OLD.body COLLATE "C", OLD.choices, OLD.answer, OLD.explanation COLLATE "C",
                   OLD.explanation_status COLLATE "C", OLD.deleted_at IS NULL)
                  IS DISTINCT FROM
                  (NEW.id, NEW.topic_id, NEW.exam_name COLLATE "C", NEW.exam_round, NEW.number,
                   NEW.body COLLATE "C", NEW.choices, NEW.answer, NEW.explanation COLLATE "C",
                   NEW.explanation_status COLLATE "C", NEW.deleted_at IS NULL))
            EXECUTE FUNCTION pub.capture_question_update();
        CREATE TRIGGER pub_capture_delete AFTER DELETE ON %1$I.study_question
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION pub.capture_question_delete();
        CREATE TRIGGER pub_refuse_truncate BEFORE TRUNCATE ON %1$I.study_question
            FOR EACH STATEMENT EXECUTE FUNCTION pub.refuse_truncate();
    $sql$, app);
    INSERT INTO pub.capture_triggers (table_name, trigger_name, definition)
    SELECT c.relname, t.tgname, pg_catalog.pg_get_triggerdef(t.oid)
    FROM pg_catalog.pg_trigger AS t
    JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    WHERE n.nspname = app AND c.relname IN ('study_topic', 'study_question')
      AND t.tgname IN ('pub_capture_insert', 'pub_capture_update', 'pub_capture_delete',
                       'pub_refuse_truncate');
END;
$attach$;

-- Hand the capture functions to the NOLOGIN role pubctl_capture, holding exactly what
-- capture needs, when this role may create it (superuser or CREATEROLE) or already
-- belongs to it; otherwise they stay with this role. An existing pubctl_capture that
-- can log in, or has any right beyond NOLOGIN, is refused: someone could act as it.
DO $owner$
DECLARE
    me record;
    capture record;
BEGIN
    SELECT r.* INTO me FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user;
    SELECT r.* INTO capture FROM pg_catalog.pg_roles AS r WHERE r.rolname = 'pubctl_capture';
    IF capture IS NULL THEN
        IF NOT (me.rolsuper OR me.rolcreaterole) THEN
            RETURN;  -- capture runs as this role
        END IF;
        BEGIN
            CREATE ROLE pubctl_capture NOLOGIN NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- another database's migration created it meanwhile
        END;
        SELECT r.* INTO capture FROM pg_catalog.pg_roles AS r WHERE r.rolname = 'pubctl_capture';
    END IF;
    IF capture.rolcanlogin OR capture.rolsuper OR capture.rolcreaterole OR capture.rolcreatedb
       OR capture.rolreplication OR capture.rolbypassrls THEN
        RAISE EXCEPTION 'pubctl: role pubctl_capture exists and is not safe to run capture as'
            USING ERRCODE = 'PB005',
                  DETAIL = 'It can log in or holds rights beyond NOLOGIN: whoever can act as '
                           'it could write the outbox.',
                  HINT = 'ALTER ROLE pubctl_capture NOLOGIN NOSUPERUSER NOCREATEROLE '
                         'NOCREATEDB NOREPLICATION NOBYPASSRLS, or drop it, then migrate again.';
    END IF;
    IF NOT pg_catalog.pg_has_role(current_user, 'pubctl_capture', 'MEMBER') THEN
        IF NOT me.rolcreaterole THEN
            RETURN;  -- not ours to use: capture runs as this role
        END IF;
        GRANT pubctl_capture TO CURRENT_USER;
    END IF;
    GRANT USAGE ON SCHEMA pub TO pubctl_capture;
    GRANT SELECT, INSERT, DELETE ON pub.outbox TO pubctl_capture;
    GRANT SELECT ON pub.settings TO pubctl_capture;
    GRANT SELECT ON SEQUENCE pub.publishing_epoch TO pubctl_capture;
    GRANT USAGE ON SEQUENCE pub.outbox_id_seq TO pubctl_capture;
    GRANT EXECUTE ON FUNCTION pub.unpublished_write_allowed(), pub.notify_outbox()
        TO pubctl_capture;
    ALTER FUNCTION pub.capture_topic_insert() OWNER TO pubctl_capture;
    ALTER FUNCTION pub.capture_question_insert() OWNER TO pubctl_capture;
    ALTER FUNCTION pub.capture_topic_delete() OWNER TO pubctl_capture;
    ALTER FUNCTION pub.capture_question_delete() OWNER TO pubctl_capture;
    ALTER FUNCTION pub.capture_topic_update() OWNER TO pubctl_capture;
    ALTER FUNCTION pub.capture_question_update() OWNER TO pubctl_capture;
    ALTER FUNCTION pub.refuse_truncate() OWNER TO pubctl_capture;
END;
$owner$;

-- ===== 50_apply.sql =====

-- The published state and the applier that moves the outbox into it.
--
-- One applier at a time: apply_batch takes a transaction-level advisory lock, so
-- revs are handed out by one transaction at a time and become visible all at once,
-- in increasing order, when it commits. A feed reader asking for rev > cursor can
-- therefore never see rev n+1 while rev n is still invisible: no rev is skipped
-- because a transaction committed late. (Postgres makes a commit visible before it
-- releases the transaction's locks, so the next applier already sees it.)
--
-- Per item, outbox ids follow commit order: two writes of one row are serialised by
-- the row lock, so the later one gets the larger outbox id. Taking the newest outbox
-- row per item therefore never goes back to an older payload.

SET LOCAL search_path = pg_catalog, pg_temp;

CREATE TABLE pub.content (
    kind           text NOT NULL CHECK (kind IN ('topic', 'question', 'explanation')),
    source_id      bigint NOT NULL,
    pub_id         uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    rev            bigint NOT NULL UNIQUE,
    payload        jsonb NOT NULL,
    payload_hash   text NOT NULL,
    schema_version integer NOT NULL,
    deleted        boolean NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (kind, source_id)
);

COMMENT ON TABLE pub.content IS
    'The published state: one row per item, its newest payload or tombstone and the rev of its last real change. Read it through pub.feed().';

-- A feed filtered by kind reads its kinds' ranges of these (see pub.feed).
CREATE INDEX content_topic_rev_idx ON pub.content (rev) WHERE kind = 'topic';
CREATE INDEX content_question_rev_idx ON pub.content (rev) WHERE kind = 'question';
CREATE INDEX content_explanation_rev_idx ON pub.content (rev) WHERE kind = 'explanation';

-- The one counter revs come from, across all kinds. A row, not a sequence: it is
-- transactional, so a failed batch leaves no gap, and updating it is one more
-- guarantee that two batches never interleave.
--
-- feed_id is the identity of the published state, born with it: a viewer whose saved
-- feed_id differs knows its cursor belongs to a published state that no longer
-- exists, and starts again from rev 0.
CREATE TABLE pub.rev_counter (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_rev  bigint NOT NULL DEFAULT 0,
    feed_id   uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid()
);

INSERT INTO pub.rev_counter DEFAULT VALUES;

-- The churn decision lives here, in one statement: take up to max_rows outbox rows
-- in id order, keep the newest per item, and write only items whose
-- (payload_hash, deleted) differs from what is published. A tombstone for an item
-- that was never published is dropped. Consumed outbox rows are deleted in the same
-- transaction, so a crash at any point either applies a batch whole or not at all.
-- A batch that published something notifies 'pubctl_published' (payload: the new last
-- rev), delivered when it commits: what `pubctl serve`'s long-polls wait for.
CREATE FUNCTION pub.apply_batch(
    max_rows integer,
    OUT consumed bigint, OUT changed bigint, OUT unchanged bigint, OUT dropped bigint
)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF max_rows IS NULL OR max_rows < 1 THEN
        RAISE EXCEPTION 'pubctl: batch size must be a positive integer, got %', max_rows
            USING ERRCODE = 'PB003',
                  DETAIL = 'apply_batch consumes at most max_rows outbox rows per call.',
                  HINT = 'Pass a batch size of 1 or more.';
    END IF;
    -- One applier at a time.
    PERFORM pg_advisory_xact_lock(pub.lock_key('applier'));

    WITH consumed_rows AS (
        DELETE FROM pub.outbox AS o
        WHERE o.id IN (SELECT b.id FROM pub.outbox AS b ORDER BY b.id LIMIT max_rows)
        RETURNING o.*
    ), newest AS (
        SELECT DISTINCT ON (c.kind, c.source_id)
               c.*, count(*) OVER (PARTITION BY c.kind, c.source_id) AS outbox_rows
        FROM consumed_rows AS c
        ORDER BY c.kind, c.source_id, c.id DESC
    ), judged AS (
        SELECT n.*,
               CASE
                   WHEN p.kind IS NULL AND n.deleted THEN 'dropped'
                   WHEN (p.payload_hash, p.deleted) = (n.payload_hash, n.deleted) THEN 'unchanged'
                   ELSE 'changed'
               END AS verdict
        FROM newest AS n
        LEFT JOIN pub.content AS p ON (p.kind, p.source_id) = (n.kind, n.source_id)
    ), bump AS (
        UPDATE pub.rev_counter AS r
        SET last_rev = r.last_rev + (SELECT count(*) FROM judged WHERE verdict = 'changed')
        WHERE EXISTS (SELECT FROM judged WHERE verdict = 'changed')
        RETURNING r.last_rev - (SELECT count(*) FROM judged WHERE verdict = 'changed') AS first_rev
    ), restamped AS (
        -- Same payload under a newer schema_version (a projection change that left this
        -- item's payload as it was): record the version, but it is no change for readers.
        UPDATE pub.content AS p
        SET schema_version = j.schema_version
        FROM judged AS j
        WHERE j.verdict = 'unchanged' AND (p.kind, p.source_id) = (j.kind, j.source_id)
          AND p.schema_version <> j.schema_version
        RETURNING 1
    ), published AS (
        -- Revs follow outbox order, so the feed shows changes in the order they were made.
        INSERT INTO pub.content AS p
            (kind, source_id, rev, payload, payload_hash, schema_version, deleted, updated_at)
        SELECT j.kind, j.source_id,
               (SELECT first_rev FROM bump) + row_number() OVER (ORDER BY j.id),
               j.payload, j.payload_hash, j.schema_version, j.deleted, now()
        FROM judged AS j
        WHERE j.verdict = 'changed'
        ON CONFLICT (kind, source_id) DO UPDATE
            SET rev = EXCLUDED.rev,
                payload = EXCLUDED.payload,
                payload_hash = EXCLUDED.payload_hash,
                schema_version = EXCLUDED.schema_version,
                deleted = EXCLUDED.deleted,
                updated_at = EXCLUDED.updated_at
        RETURNING 1
    )
    SELECT COALESCE(sum(j.outbox_rows), 0),
           count(*) FILTER (WHERE j.verdict = 'changed'),
           count(*) FILTER (WHERE j.verdict = 'unchanged'),
           count(*) FILTER (WHERE j.verdict = 'dropped')
    INTO consumed, changed, unchanged, dropped
    FROM judged AS j;

    IF changed > 0 THEN
        PERFORM pg_notify('pubctl_published', (SELECT r.last_rev::text FROM pub.rev_counter AS r));
    END IF;
END;
$$;

REVOKE ALL ON FUNCTION pub.apply_batch(integer) FROM PUBLIC;

-- The feed: item changes in rev order, for viewers. SECURITY DEFINER so that a
-- reader role needs nothing but USAGE on schema pub and EXECUTE on this function.
--
-- Filtered by kind, it reads index ranges: one range of each wanted kind's partial rev
-- index, merged by rev, so a page of a rare kind never walks the revs of the others.
-- (With one (kind, rev) index the planner preferred the rev index plus a filter for
-- kinds its statistics call common, which walks every other kind's revs when the
-- recent ones are of another kind; a partial index is always cheaper than that filter.
-- Each row is in exactly one of them: the applier writes no more index entries.)
-- Without kinds it is one range of the rev index. Each branch is switched on or
-- off by the parameters alone (a one-time filter), so one plan serves every call. The
-- three kinds are the ones pub.content's CHECK constraint allows.
CREATE FUNCTION pub.feed(after_rev bigint, max_rows integer DEFAULT 1000, kinds text[] DEFAULT NULL)
    RETURNS TABLE (
        rev bigint, kind text, pub_id uuid, source_id bigint, payload jsonb,
        payload_hash text, schema_version integer, deleted boolean
    )
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT f.rev, f.kind, f.pub_id, f.source_id, f.payload, f.payload_hash,
           f.schema_version, f.deleted
    FROM (
        (SELECT c.* FROM pub.content AS c
         WHERE feed.kinds IS NULL AND c.rev > COALESCE(feed.after_rev, 0)
         ORDER BY c.rev LIMIT GREATEST(COALESCE(feed.max_rows, 1000), 0))
        UNION ALL
        (SELECT c.* FROM pub.content AS c
         WHERE 'topic' = ANY (feed.kinds) AND c.kind = 'topic'
           AND c.rev > COALESCE(feed.after_rev, 0)
         ORDER BY c.rev LIMIT GREATEST(COALESCE(feed.max_rows, 1000), 0))
        UNION ALL
        (SELECT c.* FROM pub.content AS c
         WHERE 'question' = ANY (feed.kinds) AND c.kind = 'question'
           AND c.rev > COALESCE(feed.after_rev, 0)
         ORDER BY c.rev LIMIT GREATEST(COALESCE(feed.max_rows, 1000), 0))
        UNION ALL
        (SELECT c.* FROM pub.content AS c
         WHERE 'explanation' = ANY (feed.kinds) AND c.kind = 'explanation'
           AND c.rev > COALESCE(feed.after_rev, 0)
         ORDER BY c.rev LIMIT GREATEST(COALESCE(feed.max_rows, 1000), 0))
    ) AS f
    ORDER BY f.rev
    LIMIT GREATEST(COALESCE(feed.max_rows, 1000), 0);
END;

REVOKE ALL ON FUNCTION pub.feed(bigint, integer, text[]) FROM PUBLIC;

-- The identity of the published state (see pub.rev_counter), for feed readers.
CREATE FUNCTION pub.feed_id() RETURNS uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT r.feed_id FROM pub.rev_counter AS r;
END;

REVOKE ALL ON FUNCTION pub.feed_id() FROM PUBLIC;

-- What a health check needs, for a role that may read the feed and nothing else:
-- the migration revision (compared with the revision the reader's code expects), the
-- feed identity and the last rev. Read-only; plpgsql so that it may name
-- pub.alembic_version, which Alembic creates, not this file.
CREATE FUNCTION pub.health(OUT revision text, OUT feed_id uuid, OUT last_rev bigint)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT v.version_num INTO revision FROM pub.alembic_version AS v;
    SELECT r.feed_id, r.last_rev INTO feed_id, last_rev FROM pub.rev_counter AS r;
END;
$$;

REVOKE ALL ON FUNCTION pub.health() FROM PUBLIC;

-- ===== 60_backfill.sql =====

-- Backfill: publishing rows that existed before capture (or changed while it was off).
--
-- One page is one call, one short transaction: it reads the next source rows by
-- keyset (id > after_id), enqueues their items through the same projection functions
-- the triggers use, and records its progress in pub.backfill_runs in the same
-- transaction, so a crash resumes exactly after the last committed page.
--
-- Safe beside live writes: the page reads its rows FOR SHARE. A writer already
-- updating one of them makes the page wait and then read the writer's version; a
-- writer coming later waits for the page to commit, so its outbox row gets the
-- larger id. Either way the newest outbox row of the item carries its newest payload.
-- (FOR KEY SHARE would not do: it does not conflict with an ordinary UPDATE.)

SET LOCAL search_path = pg_catalog, pg_temp;

CREATE TABLE pub.backfill_runs (
    source     text PRIMARY KEY CHECK (source IN ('study_topic', 'study_question')),
    after_id   bigint NOT NULL,              -- where the run started
    last_id    bigint NOT NULL,              -- the last source id of the last committed page
    rows_done  bigint NOT NULL DEFAULT 0,    -- source rows read so far
    enqueued   bigint NOT NULL DEFAULT 0,    -- outbox rows written so far
    state      text NOT NULL CHECK (state IN ('running', 'stopped', 'finished')),
    started_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE pub.backfill_runs IS
    'Progress of the latest backfill per source table, committed with each page: `pubctl backfill --resume` continues from last_id.';

-- One page of a backfill, in one transaction (READ COMMITTED, which the page checks):
--
-- 1. Its bounds come from an unlocked keyset read: the ids of the next page_size rows
--    after after_id. The page covers (after_id, upper], upper being the last of those
--    ids, or no bound at all when fewer rows remain (the last page owns every id after
--    after_id).
-- 2. It reads the rows in exactly that range FOR SHARE (at most page_size of them) and
--    enqueues, through the same projection the triggers use:
--    * every live item's payload (the applier drops what is already published: churn 0);
--    * a tombstone for every item published live whose row is deleted or not ready;
--    * with include_deleted, a tombstone for every non-live item of the page.
--    A writer already updating one of the rows makes the page wait and read its
--    version; a later writer waits for the page to commit, so its outbox row gets the
--    larger id. A row whose id a concurrent UPDATE moves out of the range is left to
--    the page that covers its new id: the range, its tombstones and the checkpoint
--    (last_id) never follow an id a concurrent write produced. (FOR KEY SHARE would not
--    do: it does not conflict with an ordinary UPDATE.)
-- 3. Items published live whose source row is gone (deleted while publishing was off)
--    get tombstones too, in the range the page covered. Absence cannot be locked row by
--    row: a transaction inserting that id could commit after the page read and before
--    it, with a smaller outbox id. So the page looks for such items first (leaving out
--    those whose newest outbox row is already a tombstone); if there are any, it takes
--    a SHARE lock on the source table before it locks any row (so it can deadlock with
--    no writer), waiting at most 2 seconds for the writers in flight and then holding
--    new ones until it commits, and tombstones them with a snapshot no writer can be
--    behind. Such items exist only after changes capture did not see, so this lock is
--    rare: a deletion capture saw has its tombstone in the outbox already.
--
-- With dry_run nothing is written or locked; the counts say what would be. last_id is
-- the checkpoint, the last id the page covered (the next page starts after it);
-- finished says this was the last page.
CREATE FUNCTION pub.backfill_page(
    source text, after_id bigint, page_size integer, include_deleted boolean, dry_run boolean,
    OUT rows_read integer, OUT last_id bigint, OUT enqueued integer, OUT finished boolean
)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    -- Row-level security policies would hide rows from the backfill (and run the table
    -- owner's code as this role): with it off, a policy makes the page fail instead.
    SET row_security = off
AS $$
DECLARE
    app name := (SELECT s.app_schema FROM pub.settings s);
    kinds text[];
    upper_id bigint;
    last_locked bigint;
    gone_sql text;
    gone integer;
BEGIN
    IF page_size IS NULL OR page_size < 1 THEN
        RAISE EXCEPTION 'pubctl: page size must be a positive integer, got %', page_size
            USING ERRCODE = 'PB003', DETAIL = 'backfill_page reads at most page_size rows.',
                  HINT = 'Pass a page size of 1 or more.';
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'pubctl: a backfill page must run at READ COMMITTED, not %',
                current_setting('transaction_isolation')
            USING ERRCODE = 'PB006',
                  DETAIL = 'The page locks its rows and reads their newest versions; a '
                           'snapshot older than the locks would enqueue stale payloads.',
                  HINT = 'Run the page in a READ COMMITTED transaction (pubctl does).';
    END IF;
    kinds := pub.require_source(source);

    -- 1. The page's bounds, unlocked.
    EXECUTE format(
        'SELECT count(*)::integer, max(p.id)::bigint FROM '
        '(SELECT r.id FROM %I.%I AS r WHERE r.id > $1 ORDER BY r.id LIMIT $2) AS p',
        app, source)
    INTO rows_read, upper_id
    USING after_id, page_size;
    finished := rows_read < page_size;
    IF finished THEN
        upper_id := NULL;
    END IF;

    -- Published live, source row gone, no tombstone on its way.
    gone_sql := format($q$
        SELECT c.kind, c.source_id
        FROM pub.content AS c
        WHERE c.kind = ANY ($1) AND NOT c.deleted
          AND c.source_id > $2 AND ($3::bigint IS NULL OR c.source_id <= $3)
          AND NOT EXISTS (SELECT FROM %1$I.%2$I AS r WHERE r.id = c.source_id)
          AND COALESCE((SELECT o.deleted FROM pub.outbox AS o
                        WHERE o.kind = c.kind AND o.source_id = c.source_id
                        ORDER BY o.id DESC LIMIT 1), false) = false
    $q$, app, source);
    EXECUTE format('SELECT count(*)::integer FROM (%s) AS g', gone_sql)
    INTO gone USING kinds, after_id, upper_id;
    IF gone > 0 AND NOT dry_run THEN
        PERFORM set_config('lock_timeout', '2s', true);
        EXECUTE format('LOCK TABLE %I.%I IN SHARE MODE', app, source);
    END IF;

    -- 2. The rows of exactly that range, locked; their items.
    EXECUTE format($q$
        WITH page AS MATERIALIZED (
            SELECT %3$s
            FROM %1$I.%2$I AS r
            WHERE r.id > $1 AND ($2::bigint IS NULL OR r.id <= $2)
            ORDER BY r.id
            LIMIT $3
            FOR SHARE
        ), items AS MATERIALIZED (%4$s
        ), wanted AS MATERIALIZED (
            SELECT i.kind, i.source_id, i.canonical
            FROM items AS i
            WHERE i.canonical IS NOT NULL
               OR $4
               OR EXISTS (SELECT FROM pub.content AS c
                          WHERE (c.kind, c.source_id) = (i.kind, i.source_id) AND NOT c.deleted)
        ), written AS (
            INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
            SELECT w.kind, w.source_id, pub.outbox_payload(w.canonical),
                   pub.outbox_payload_hash(w.canonical), pub.schema_version(), w.canonical IS NULL
            FROM wanted AS w
            WHERE NOT $5
            RETURNING 1
        )
        SELECT (SELECT count(*)::integer FROM page), (SELECT max(p.id)::bigint FROM page AS p),
               (SELECT count(*)::integer FROM wanted)
    $q$, app, source, pub.source_select_list(source), pub.source_items_sql(source, 'page'))
    INTO rows_read, last_locked, enqueued
    USING after_id, upper_id, page_size, include_deleted, dry_run;
    IF rows_read = page_size THEN
        -- A full page ends at its last row: rows that arrived in the range since step 1
        -- are the next page's.
        upper_id := last_locked;
        finished := false;
    END IF;
    last_id := COALESCE(upper_id, last_locked, after_id);

    -- 3. Under the table lock, with a snapshot taken after it: tombstone them.
    IF gone > 0 AND NOT dry_run THEN
        EXECUTE format($q$
            WITH written AS (
                INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
                SELECT g.kind, g.source_id, pub.outbox_payload(NULL), pub.outbox_payload_hash(NULL),
                       pub.schema_version(), true
                FROM (%s) AS g
                RETURNING 1
            )
            SELECT count(*)::integer FROM written
        $q$, gone_sql)
        INTO gone USING kinds, after_id, upper_id;
    END IF;
    enqueued := enqueued + gone;

    IF NOT dry_run THEN
        UPDATE pub.backfill_runs AS r
        SET last_id = backfill_page.last_id,
            rows_done = r.rows_done + backfill_page.rows_read,
            enqueued = r.enqueued + backfill_page.enqueued,
            updated_at = now()
        WHERE r.source = backfill_page.source;
        IF backfill_page.enqueued > 0 THEN
            PERFORM pub.notify_outbox();
        END IF;
    END IF;
END;
$$;

REVOKE ALL ON FUNCTION pub.backfill_page(text, bigint, integer, boolean, boolean) FROM PUBLIC;

-- ===== 70_verify.sql =====

-- Verify: what is published against what the source says, set-based, by id range.
--
-- For one source table and one range of ids (lo, hi] (hi NULL: no upper bound) it
-- projects the source rows with the same functions the triggers use, joins them with
-- pub.content over the same range, and returns one row per item that differs:
--   missing   the source has a live item, nothing live is published
--   orphaned  something live is published, the source row is deleted, not ready or gone
--   stale     both live, but the published payload or hash is not the source's
--   old_schema published under an older schema_version than the projection's
-- with pending = true when an outbox row for the item is still waiting to be applied
-- (the difference may be explained by it). detail names the differing payload keys.
-- The hash of each stored payload and the SQL projection itself are checked in
-- Python against the independent reference (pubctl/verify.py). Capture itself is
-- checked by pub.capture_problems (sql/schema/40_capture.sql).

SET LOCAL search_path = pg_catalog, pg_temp;

-- Like backfill, verify reads only the projected columns, checks their types first
-- (pub.require_source), and runs with row-level security off: it must see every
-- row, and never run code of the table owner's making as the operator.
CREATE FUNCTION pub.verify_range(source text, lo bigint, hi bigint)
    RETURNS TABLE (kind text, source_id bigint, category text, pending boolean, detail text[])
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    SET row_security = off
AS $$
DECLARE
    app name := (SELECT s.app_schema FROM pub.settings s);
    kinds text[] := pub.require_source(source);
BEGIN

    RETURN QUERY EXECUTE format($q$
        WITH rows AS MATERIALIZED (
            SELECT %3$s FROM %1$I.%2$I AS r WHERE r.id > $1 AND ($2 IS NULL OR r.id <= $2)
        ), expected AS MATERIALIZED (%4$s
        ), published AS (
            SELECT c.* FROM pub.content AS c
            WHERE c.kind = ANY ($3) AND c.source_id > $1 AND ($2 IS NULL OR c.source_id <= $2)
        ), joined AS MATERIALIZED (
            SELECT COALESCE(e.kind, p.kind) AS kind, COALESCE(e.source_id, p.source_id) AS source_id,
                   e.canonical::jsonb AS want, pub.payload_hash(e.canonical) AS want_hash,
                   p.payload AS have, p.payload_hash AS have_hash,
                   COALESCE(NOT p.deleted, false) AS have_live, p.schema_version
            FROM expected AS e
            FULL JOIN published AS p ON (p.kind, p.source_id) = (e.kind, e.source_id)
        ), waiting AS (
            -- Items with outbox rows not applied yet: one scan of the outbox per range.
            SELECT DISTINCT o.kind, o.source_id FROM pub.outbox AS o
            WHERE o.kind = ANY ($3) AND o.source_id > $1 AND ($2 IS NULL OR o.source_id <= $2)
        ), judged AS (
            SELECT j.*,
                   CASE
                       WHEN j.want IS NOT NULL AND NOT j.have_live THEN 'missing'
                       WHEN j.want IS NULL AND j.have_live THEN 'orphaned'
                       WHEN j.want IS NOT NULL
                            AND (j.have_hash <> j.want_hash OR j.have <> j.want) THEN 'stale'
                       -- A tombstone is {} with the hash of {}.
                       WHEN j.want IS NULL AND j.have IS NOT NULL
                            AND (j.have <> '{}' OR j.have_hash <> pub.payload_hash('{}'))
                           THEN 'stale'
                   END AS category
            FROM joined AS j
        )
        SELECT j.kind, j.source_id, j.category, w.kind IS NOT NULL,
               CASE WHEN j.category = 'stale' THEN ARRAY(
                   SELECT COALESCE(a.key, b.key)
                   FROM jsonb_each(j.want) AS a
                   FULL JOIN jsonb_each(j.have) AS b ON b.key = a.key
                   WHERE a.value IS DISTINCT FROM b.value
                   ORDER BY 1)
               END
        FROM judged AS j
        LEFT JOIN waiting AS w ON (w.kind, w.source_id) = (j.kind, j.source_id)
        WHERE j.category IS NOT NULL
        UNION ALL
        SELECT j.kind, j.source_id, 'old_schema', false,
               ARRAY['schema_version ' || j.schema_version]
        FROM joined AS j
        WHERE j.schema_version < pub.schema_version()
    $q$, app, source, pub.source_select_list(source), pub.source_items_sql(source, 'rows'))
    USING lo, hi, kinds;
END;
$$;

REVOKE ALL ON FUNCTION pub.verify_range(text, bigint, bigint) FROM PUBLIC;

-- The upper bound of the next keyset page of a source table: the id of its
-- page_size-th row after after_id, and how many rows the page has.
CREATE FUNCTION pub.source_page_bound(
    source text, after_id bigint, page_size integer, OUT rows_in_page integer, OUT last_id bigint
)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    SET row_security = off
AS $$
BEGIN
    PERFORM pub.require_source(source);
    EXECUTE format(
        'SELECT count(*)::integer, max(id)::bigint FROM '
        '(SELECT t.id FROM %I.%I AS t WHERE t.id > $1 ORDER BY t.id LIMIT $2) AS page',
        (SELECT s.app_schema FROM pub.settings s), source)
    INTO rows_in_page, last_id
    USING after_id, page_size;
END;
$$;

-- The source rows of a range as jsonb (their projected columns only), each with its
-- items' canonical text from the SQL projection and their published hashes: what the
-- Python reference projection and its own RFC 8785 hashes are held against.
CREATE FUNCTION pub.source_projection(source text, lo bigint, hi bigint)
    RETURNS TABLE (source_id bigint, row_data jsonb, canonicals jsonb, published_hashes jsonb)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    SET row_security = off
AS $$
DECLARE
    app name := (SELECT s.app_schema FROM pub.settings s);
    kinds text[] := pub.require_source(source);
BEGIN
    RETURN QUERY EXECUTE format($q$
        WITH rows AS MATERIALIZED (
            SELECT %3$s FROM %1$I.%2$I AS r WHERE r.id > $1 AND ($2 IS NULL OR r.id <= $2)
        ), items AS (%4$s
        ), canonicals AS (
            SELECT i.source_id, jsonb_object_agg(i.kind, i.canonical) AS canonicals
            FROM items AS i GROUP BY i.source_id
        )
        SELECT r.id::bigint, to_jsonb(r), k.canonicals,
               (SELECT jsonb_object_agg(c.kind, c.payload_hash) FROM pub.content AS c
                WHERE c.kind = ANY ($3) AND c.source_id = r.id)
        FROM rows AS r
        JOIN canonicals AS k ON k.source_id = r.id
        ORDER BY r.id
    $q$, app, source, pub.source_select_list(source), pub.source_items_sql(source, 'rows'))
    USING lo, hi, kinds;
END;
$$;

REVOKE ALL ON FUNCTION pub.source_page_bound(text, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.source_projection(text, bigint, bigint) FROM PUBLIC;
