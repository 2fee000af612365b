-- Rendered from the definition in pubctl/sources.py by pubctl/rendering.py: do not
-- edit; change the definition and run `make revision` (docs/operations.md,
-- "Changing a payload"). Each object follows a marker line naming it.

SET LOCAL search_path = pg_catalog, pg_temp;

-- object: type pub.topic_payload
-- drop: DROP TYPE pub.topic_payload;
-- The payload's keys in RFC 8785 order (sorted), printed by row_to_json.
CREATE TYPE pub.topic_payload AS (exam_round_size integer, name text, topic_id bigint);

-- object: function pub.topic_is_live(timestamptz)
-- drop: DROP FUNCTION pub.topic_is_live(timestamptz);
CREATE OR REPLACE FUNCTION pub.topic_is_live(deleted_at timestamptz) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT deleted_at IS NULL;
END;

-- object: function pub.topic_canonical(bigint, text, integer, timestamptz)
-- drop: DROP FUNCTION pub.topic_canonical(bigint, text, integer, timestamptz);
CREATE OR REPLACE FUNCTION pub.topic_canonical(
    topic_id bigint, name text, exam_round_size integer, deleted_at timestamptz
) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN NOT pub.topic_is_live(deleted_at) THEN NULL
        WHEN NOT (pub.is_json_safe_integer(topic_id))
            THEN pub.payload_rule_violation('topic', topic_id, 'id must be within +-(2^53-1)')::json
        ELSE pg_catalog.row_to_json(ROW(exam_round_size, name, topic_id)::pub.topic_payload)
    END;
END;

-- object: function pub.require_topic_shape(regtype, regtype, regtype, regtype)
-- drop: DROP FUNCTION pub.require_topic_shape(regtype, regtype, regtype, regtype);
CREATE OR REPLACE FUNCTION pub.require_topic_shape(
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

-- object: type pub.question_payload
-- drop: DROP TYPE pub.question_payload;
-- The payload's keys in RFC 8785 order (sorted), printed by row_to_json.
CREATE TYPE pub.question_payload AS (answer integer, body text, choices text[], exam_name text, exam_round integer, number integer, question_id bigint, topic_id bigint);

-- object: function pub.question_is_live(timestamptz)
-- drop: DROP FUNCTION pub.question_is_live(timestamptz);
CREATE OR REPLACE FUNCTION pub.question_is_live(deleted_at timestamptz) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT deleted_at IS NULL;
END;

-- object: function pub.question_canonical(bigint, bigint, text, integer, integer, text, jsonb, integer, timestamptz)
-- drop: DROP FUNCTION pub.question_canonical(bigint, bigint, text, integer, integer, text, jsonb, integer, timestamptz);
CREATE OR REPLACE FUNCTION pub.question_canonical(
    question_id bigint, topic_id bigint, exam_name text, exam_round integer, number integer, body text, choices jsonb, answer integer, deleted_at timestamptz
) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN NOT pub.question_is_live(deleted_at) THEN NULL
        WHEN NOT (pub.is_json_safe_integer(question_id) AND pub.is_json_safe_integer(topic_id))
            THEN pub.payload_rule_violation('question', question_id, 'id and topic_id must be within +-(2^53-1)')::json
        ELSE pg_catalog.row_to_json(ROW(answer, body, COALESCE(pub.string_array_items(choices), pub.payload_rule_violation('question', question_id, 'choices must be a JSON array of strings')::text[]), exam_name, exam_round, number, question_id, topic_id)::pub.question_payload)
    END;
END;

-- object: type pub.explanation_payload
-- drop: DROP TYPE pub.explanation_payload;
-- The payload's keys in RFC 8785 order (sorted), printed by row_to_json.
CREATE TYPE pub.explanation_payload AS (explanation text, question_id bigint);

-- object: function pub.explanation_is_live(text, timestamptz)
-- drop: DROP FUNCTION pub.explanation_is_live(text, timestamptz);
CREATE OR REPLACE FUNCTION pub.explanation_is_live(explanation_status text, deleted_at timestamptz) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT deleted_at IS NULL AND explanation_status IS NOT DISTINCT FROM 'ready';
END;

-- object: function pub.explanation_canonical(bigint, text, text, timestamptz)
-- drop: DROP FUNCTION pub.explanation_canonical(bigint, text, text, timestamptz);
CREATE OR REPLACE FUNCTION pub.explanation_canonical(
    question_id bigint, explanation text, explanation_status text, deleted_at timestamptz
) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN NOT pub.explanation_is_live(explanation_status, deleted_at) THEN NULL
        WHEN NOT (pub.is_json_safe_integer(question_id))
            THEN pub.payload_rule_violation('explanation', question_id, 'id must be within +-(2^53-1)')::json
        ELSE pg_catalog.row_to_json(ROW(explanation, question_id)::pub.explanation_payload)
    END;
END;

-- object: function pub.require_question_shape(regtype, regtype, regtype, regtype, regtype, regtype, regtype, regtype, regtype, regtype, regtype)
-- drop: DROP FUNCTION pub.require_question_shape(regtype, regtype, regtype, regtype, regtype, regtype, regtype, regtype, regtype, regtype, regtype);
CREATE OR REPLACE FUNCTION pub.require_question_shape(
    id regtype, topic_id regtype, exam_name regtype, exam_round regtype, number regtype, body regtype, choices regtype, answer regtype, explanation regtype, explanation_status regtype, deleted_at regtype
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

-- object: function pub.source_columns(text)
-- drop: DROP FUNCTION pub.source_columns(text);
CREATE OR REPLACE FUNCTION pub.source_columns(source text)
    RETURNS TABLE (column_name text, allowed_types regtype[])
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT v.column_name, v.allowed_types
    FROM (VALUES
        (1, 'study_topic', 'id', '{smallint,integer,bigint}'::regtype[]),
        (2, 'study_topic', 'name', '{text,character varying}'::regtype[]),
        (3, 'study_topic', 'exam_round_size', '{smallint,integer}'::regtype[]),
        (4, 'study_topic', 'deleted_at', '{timestamp with time zone,timestamp without time zone}'::regtype[]),
        (1, 'study_question', 'id', '{smallint,integer,bigint}'::regtype[]),
        (2, 'study_question', 'topic_id', '{smallint,integer,bigint}'::regtype[]),
        (3, 'study_question', 'exam_name', '{text,character varying}'::regtype[]),
        (4, 'study_question', 'exam_round', '{smallint,integer}'::regtype[]),
        (5, 'study_question', 'number', '{smallint,integer}'::regtype[]),
        (6, 'study_question', 'body', '{text,character varying}'::regtype[]),
        (7, 'study_question', 'choices', '{jsonb}'::regtype[]),
        (8, 'study_question', 'answer', '{smallint,integer}'::regtype[]),
        (9, 'study_question', 'explanation', '{text,character varying}'::regtype[]),
        (10, 'study_question', 'explanation_status', '{text,character varying}'::regtype[]),
        (11, 'study_question', 'deleted_at', '{timestamp with time zone,timestamp without time zone}'::regtype[])
    ) AS v(position, source, column_name, allowed_types)
    WHERE v.source = source_columns.source
    ORDER BY v.position;  -- the definition's order (pubctl.rename.installed)
END;

-- object: function pub.source_kinds(text)
-- drop: DROP FUNCTION pub.source_kinds(text);
CREATE OR REPLACE FUNCTION pub.source_kinds(source text) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE source
        WHEN 'study_topic' THEN '{topic}'::text[]
        WHEN 'study_question' THEN '{question,explanation}'::text[]
    END;
END;

-- object: function pub.source_select_list(text)
-- drop: DROP FUNCTION pub.source_select_list(text);
CREATE OR REPLACE FUNCTION pub.source_select_list(source text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE source
        WHEN 'study_topic' THEN 'r.id, r.name, r.exam_round_size, r.deleted_at'
        WHEN 'study_question' THEN 'r.id, r.topic_id, r.exam_name, r.exam_round, r.number, r.body, r.choices, r.answer, r.explanation, r.explanation_status, r.deleted_at'
    END;
END;

-- object: function pub.source_items_sql(text, text)
-- drop: DROP FUNCTION pub.source_items_sql(text, text);
CREATE OR REPLACE FUNCTION pub.source_items_sql(source text, relation text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE source
        WHEN 'study_topic' THEN pg_catalog.format($q$
            SELECT 'topic'::text AS kind, r.id::bigint AS source_id,
                   pub.topic_canonical(r.id, r.name, r.exam_round_size, r.deleted_at) AS canonical
            FROM %1$I AS r$q$, relation)
        WHEN 'study_question' THEN pg_catalog.format($q$
            SELECT 'question'::text AS kind, r.id::bigint AS source_id,
                   pub.question_canonical(r.id, r.topic_id, r.exam_name, r.exam_round, r.number, r.body, r.choices, r.answer, r.deleted_at) AS canonical
            FROM %1$I AS r
            UNION ALL
            SELECT 'explanation'::text AS kind, r.id::bigint AS source_id,
                   pub.explanation_canonical(r.id, r.explanation, r.explanation_status, r.deleted_at) AS canonical
            FROM %1$I AS r$q$, relation)
    END;
END;

-- object: function pub.source_row_data_sql(text)
-- drop: DROP FUNCTION pub.source_row_data_sql(text);
CREATE OR REPLACE FUNCTION pub.source_row_data_sql(source text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE source
        WHEN 'study_topic' THEN '''id'', r.id, ''name'', CASE WHEN (r.deleted_at IS NULL) THEN r.name END, ''exam_round_size'', CASE WHEN (r.deleted_at IS NULL) THEN r.exam_round_size END, ''deleted_at'', r.deleted_at'
        WHEN 'study_question' THEN '''id'', r.id, ''topic_id'', CASE WHEN (r.deleted_at IS NULL) THEN r.topic_id END, ''exam_name'', CASE WHEN (r.deleted_at IS NULL) THEN r.exam_name END, ''exam_round'', CASE WHEN (r.deleted_at IS NULL) THEN r.exam_round END, ''number'', CASE WHEN (r.deleted_at IS NULL) THEN r.number END, ''body'', CASE WHEN (r.deleted_at IS NULL) THEN r.body END, ''choices'', CASE WHEN (r.deleted_at IS NULL) THEN r.choices END, ''answer'', CASE WHEN (r.deleted_at IS NULL) THEN r.answer END, ''explanation'', CASE WHEN (r.deleted_at IS NULL AND r.explanation_status IS NOT DISTINCT FROM ''ready'') THEN r.explanation END, ''explanation_status'', CASE WHEN r.deleted_at IS NULL THEN left(r.explanation_status, 64) END, ''deleted_at'', r.deleted_at'
    END;
END;

-- object: function pub.source_tables()
-- drop: DROP FUNCTION pub.source_tables();
CREATE OR REPLACE FUNCTION pub.source_tables() RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT '{study_topic,study_question}'::text[];
END;

-- object: function pub.capture_topic_insert()
-- drop: DROP FUNCTION pub.capture_topic_insert();
CREATE OR REPLACE FUNCTION pub.capture_topic_insert() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    enqueued boolean := false;
    kinds text[];
    ids bigint[];
BEGIN
    IF NOT pub.publishing_enabled() AND pub.unpublished_write_allowed() THEN
        RETURN NULL;
    END IF;
    IF pg_trigger_depth() > 1 THEN
        -- Run by another trigger: later UPDATE captures read the current state.
        PERFORM set_config('pubctl.nested_capture_in', pg_current_xact_id()::text, true);
    END IF;
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
        SELECT array_agg(i.kind), array_agg(i.source_id) INTO kinds, ids
        FROM new_rows AS r
        CROSS JOIN LATERAL (VALUES ('topic', pub.topic_is_live(r.deleted_at))) AS k(kind, live),
             LATERAL (SELECT k.kind, r.id::bigint) AS i(kind, source_id)
        WHERE k.live;
        IF cardinality(pub.capture_current_items(TG_TABLE_NAME, kinds, ids)) > 0 THEN
            PERFORM pub.notify_outbox();
        END IF;
        RETURN NULL;
    END IF;
    -- One INSERT per kind; a row inserted already deleted was never published.
    INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
    SELECT 'topic', i.source_id, pub.outbox_payload(i.canonical),
           pub.outbox_payload_hash(i.canonical), pub.schema_version(), false
    FROM (SELECT r.id::bigint, pub.topic_canonical(r.id, r.name, r.exam_round_size, r.deleted_at)
          FROM new_rows AS r
          WHERE pub.topic_is_live(r.deleted_at)
          OFFSET 0) AS i(source_id, canonical)
    WHERE (SELECT pub.require_topic_shape(pg_typeof(t.id), pg_typeof(t.name), pg_typeof(t.exam_round_size), pg_typeof(t.deleted_at))
           FROM new_rows AS t LIMIT 1) IS NOT FALSE;
    enqueued := enqueued OR FOUND;
    IF enqueued THEN
        PERFORM pub.notify_outbox();
    END IF;
    RETURN NULL;
END;
$$;

REVOKE ALL ON FUNCTION pub.capture_topic_insert() FROM PUBLIC;

-- object: function pub.capture_topic_delete()
-- drop: DROP FUNCTION pub.capture_topic_delete();
CREATE OR REPLACE FUNCTION pub.capture_topic_delete() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kinds text[];
    ids bigint[];
BEGIN
    IF NOT pub.publishing_enabled() AND pub.unpublished_write_allowed() THEN
        RETURN NULL;
    END IF;
    IF pg_trigger_depth() > 1 THEN
        -- Run by another trigger: later UPDATE captures read the current state.
        PERFORM set_config('pubctl.nested_capture_in', pg_current_xact_id()::text, true);
    END IF;
    -- Has this transaction inserted or updated rows of this table (or can it not tell)?
    -- Then an id this statement deleted may hold another row by now (40_capture.sql).
    IF current_setting('track_counts') <> 'on'
       OR pg_stat_get_xact_tuples_inserted(TG_RELID)
          + pg_stat_get_xact_tuples_updated(TG_RELID) > 0 THEN
        -- An id may hold another row by now (moved or inserted there): its current state.
        -- The columns' types are checked before any is read (as on the fast path).
        PERFORM pub.require_source(TG_TABLE_NAME);
        SELECT array_agg(i.kind), array_agg(i.source_id) INTO kinds, ids
        FROM old_rows AS r
        CROSS JOIN LATERAL (VALUES ('topic', pub.topic_is_live(r.deleted_at))) AS k(kind, live),
             LATERAL (SELECT k.kind, r.id::bigint) AS i(kind, source_id)
        WHERE k.live;
        IF cardinality(pub.capture_current_items(TG_TABLE_NAME, kinds, ids)) > 0 THEN
            PERFORM pub.notify_outbox();
        END IF;
        RETURN NULL;
    END IF;
    -- Only items that were live need a tombstone: a row that stays deleted adds nothing.
    INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
    SELECT 'topic', r.id, pub.outbox_payload(NULL),
           pub.outbox_payload_hash(NULL), pub.schema_version(), true
    FROM old_rows AS r
    WHERE pub.topic_is_live(r.deleted_at)
      AND (SELECT pub.require_topic_shape(pg_typeof(t.id), pg_typeof(t.name), pg_typeof(t.exam_round_size), pg_typeof(t.deleted_at))
           FROM old_rows AS t LIMIT 1) IS NOT FALSE;
    IF FOUND THEN
        PERFORM pub.notify_outbox();
    END IF;
    RETURN NULL;
END;
$$;

REVOKE ALL ON FUNCTION pub.capture_topic_delete() FROM PUBLIC;

-- object: function pub.capture_topic_update()
-- drop: DROP FUNCTION pub.capture_topic_update();
CREATE OR REPLACE FUNCTION pub.capture_topic_update() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Before any column is read (pub.require_topic_shape); OLD has NEW's row type.
    shape_ok constant boolean := pub.require_topic_shape(pg_typeof(NEW.id), pg_typeof(NEW.name), pg_typeof(NEW.exam_round_size), pg_typeof(NEW.deleted_at));
    topic_was_live constant boolean := pub.topic_is_live(OLD.deleted_at);
    topic_is_live constant boolean := pub.topic_is_live(NEW.deleted_at);
    same_id constant boolean := OLD.id IS NOT DISTINCT FROM NEW.id;
    -- The new id's items to write: a live item whose payload or liveness changed (all
    -- of them after a key change), and, under the same id, items that stopped being
    -- live.
    topic_changes constant boolean :=
        (topic_is_live
         AND (NOT same_id OR NOT topic_was_live
              OR ((OLD.name COLLATE "C"), OLD.exam_round_size)
                 IS DISTINCT FROM ((NEW.name COLLATE "C"), NEW.exam_round_size)))
        OR (same_id AND topic_was_live AND NOT topic_is_live);
    topic_json json;
    previous text := current_setting('pubctl.last_enqueued', true);
    -- Outbox ids, taken here so that the next UPDATE of this row knows them exactly.
    ids bigint[];
    kinds text[];
    source_ids bigint[];
    noted text;
BEGIN
    IF NOT (topic_changes)
       AND (same_id OR NOT (topic_was_live)) THEN
        RETURN NULL;  -- nothing published changed
    END IF;
    IF current_setting('pubctl.publishing_on_in', true)
       IS DISTINCT FROM pg_current_xact_id()::text THEN
        IF NOT pub.publishing_enabled() AND pub.unpublished_write_allowed() THEN
            RETURN NULL;
        END IF;
        noted := set_config('pubctl.publishing_on_in', pg_current_xact_id()::text, true);
    END IF;
    IF starts_with(previous, 'topic:' || OLD.id || ':')
       AND previous ~ '^[a-z_][a-z0-9_]*:-?[0-9]+:[0-9]+(,[0-9]+)*$' THEN
        -- Superseded: this transaction's own rows of the items written below.
        DELETE FROM pub.outbox AS o
        WHERE o.id = ANY (string_to_array(split_part(previous, ':', 3), ',')::bigint[])
          AND ((o.source_id = NEW.id
                AND ((o.kind = 'topic' AND topic_changes)))
               OR (NOT same_id AND o.source_id = OLD.id
                   AND ((o.kind = 'topic' AND topic_was_live))))
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
        FROM (VALUES (1, 'topic', OLD.id::bigint, NOT same_id AND topic_was_live),
                     (2, 'topic', NEW.id::bigint, topic_changes))
             AS i(n, kind, source_id, wanted)
        WHERE i.wanted;
        ids := pub.capture_current_items('study_topic', kinds, source_ids);
        IF COALESCE(previous, '') = '' THEN
            PERFORM pub.notify_outbox();
        END IF;
        noted := set_config('pubctl.last_enqueued',
            'topic:' || NEW.id || ':' || array_to_string(ids, ','), true);
        RETURN NULL;
    END IF;
    IF topic_changes THEN
        topic_json := pub.topic_canonical(NEW.id, NEW.name, NEW.exam_round_size, NEW.deleted_at);
    END IF;
    IF NOT same_id THEN
        -- A new id is a new item: the old one ends, the new one begins. Rare: the
        -- general form, ids in outbox order.
        WITH wanted AS (
            SELECT i.n, i.kind, i.source_id, i.canonical
            FROM (VALUES (1, 'topic', OLD.id::bigint, NULL::json, NOT same_id AND topic_was_live),
                     (2, 'topic', NEW.id::bigint, topic_json, topic_changes))
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
    ELSIF topic_changes THEN
        ids := ARRAY[nextval('pub.outbox_id_seq')];
        INSERT INTO pub.outbox
            (id, kind, source_id, payload, payload_hash, schema_version, deleted)
        OVERRIDING SYSTEM VALUE
        VALUES (ids[1], 'topic', NEW.id, pub.outbox_payload(topic_json),
                pub.outbox_payload_hash(topic_json), pub.schema_version(),
                topic_json IS NULL);
    END IF;
    IF COALESCE(previous, '') = '' THEN
        PERFORM pub.notify_outbox();
    END IF;
    noted := set_config('pubctl.last_enqueued',
        'topic:' || NEW.id || ':' || array_to_string(ids, ','), true);
    RETURN NULL;
END;
$$;

REVOKE ALL ON FUNCTION pub.capture_topic_update() FROM PUBLIC;

-- object: function pub.capture_question_insert()
-- drop: DROP FUNCTION pub.capture_question_insert();
CREATE OR REPLACE FUNCTION pub.capture_question_insert() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    enqueued boolean := false;
    kinds text[];
    ids bigint[];
BEGIN
    IF NOT pub.publishing_enabled() AND pub.unpublished_write_allowed() THEN
        RETURN NULL;
    END IF;
    IF pg_trigger_depth() > 1 THEN
        -- Run by another trigger: later UPDATE captures read the current state.
        PERFORM set_config('pubctl.nested_capture_in', pg_current_xact_id()::text, true);
    END IF;
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
        SELECT array_agg(i.kind), array_agg(i.source_id) INTO kinds, ids
        FROM new_rows AS r
        CROSS JOIN LATERAL (VALUES ('question', pub.question_is_live(r.deleted_at)),
                                   ('explanation', pub.explanation_is_live(r.explanation_status, r.deleted_at))) AS k(kind, live),
             LATERAL (SELECT k.kind, r.id::bigint) AS i(kind, source_id)
        WHERE k.live;
        IF cardinality(pub.capture_current_items(TG_TABLE_NAME, kinds, ids)) > 0 THEN
            PERFORM pub.notify_outbox();
        END IF;
        RETURN NULL;
    END IF;
    -- One INSERT per kind; a row inserted already deleted was never published.
    INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
    SELECT 'question', i.source_id, pub.outbox_payload(i.canonical),
           pub.outbox_payload_hash(i.canonical), pub.schema_version(), false
    FROM (SELECT r.id::bigint, pub.question_canonical(r.id, r.topic_id, r.exam_name, r.exam_round, r.number, r.body, r.choices, r.answer, r.deleted_at)
          FROM new_rows AS r
          WHERE pub.question_is_live(r.deleted_at)
          OFFSET 0) AS i(source_id, canonical)
    WHERE (SELECT pub.require_question_shape(pg_typeof(t.id), pg_typeof(t.topic_id), pg_typeof(t.exam_name), pg_typeof(t.exam_round), pg_typeof(t.number), pg_typeof(t.body), pg_typeof(t.choices), pg_typeof(t.answer), pg_typeof(t.explanation), pg_typeof(t.explanation_status), pg_typeof(t.deleted_at))
           FROM new_rows AS t LIMIT 1) IS NOT FALSE;
    enqueued := enqueued OR FOUND;
    INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
    SELECT 'explanation', i.source_id, pub.outbox_payload(i.canonical),
           pub.outbox_payload_hash(i.canonical), pub.schema_version(), false
    FROM (SELECT r.id::bigint, pub.explanation_canonical(r.id, r.explanation, r.explanation_status, r.deleted_at)
          FROM new_rows AS r
          WHERE pub.explanation_is_live(r.explanation_status, r.deleted_at)
          OFFSET 0) AS i(source_id, canonical)
    WHERE (SELECT pub.require_question_shape(pg_typeof(t.id), pg_typeof(t.topic_id), pg_typeof(t.exam_name), pg_typeof(t.exam_round), pg_typeof(t.number), pg_typeof(t.body), pg_typeof(t.choices), pg_typeof(t.answer), pg_typeof(t.explanation), pg_typeof(t.explanation_status), pg_typeof(t.deleted_at))
           FROM new_rows AS t LIMIT 1) IS NOT FALSE;
    enqueued := enqueued OR FOUND;
    IF enqueued THEN
        PERFORM pub.notify_outbox();
    END IF;
    RETURN NULL;
END;
$$;

REVOKE ALL ON FUNCTION pub.capture_question_insert() FROM PUBLIC;

-- object: function pub.capture_question_delete()
-- drop: DROP FUNCTION pub.capture_question_delete();
CREATE OR REPLACE FUNCTION pub.capture_question_delete() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kinds text[];
    ids bigint[];
BEGIN
    IF NOT pub.publishing_enabled() AND pub.unpublished_write_allowed() THEN
        RETURN NULL;
    END IF;
    IF pg_trigger_depth() > 1 THEN
        -- Run by another trigger: later UPDATE captures read the current state.
        PERFORM set_config('pubctl.nested_capture_in', pg_current_xact_id()::text, true);
    END IF;
    -- Has this transaction inserted or updated rows of this table (or can it not tell)?
    -- Then an id this statement deleted may hold another row by now (40_capture.sql).
    IF current_setting('track_counts') <> 'on'
       OR pg_stat_get_xact_tuples_inserted(TG_RELID)
          + pg_stat_get_xact_tuples_updated(TG_RELID) > 0 THEN
        -- An id may hold another row by now (moved or inserted there): its current state.
        -- The columns' types are checked before any is read (as on the fast path).
        PERFORM pub.require_source(TG_TABLE_NAME);
        SELECT array_agg(i.kind), array_agg(i.source_id) INTO kinds, ids
        FROM old_rows AS r
        CROSS JOIN LATERAL (VALUES ('question', pub.question_is_live(r.deleted_at)),
                                   ('explanation', pub.explanation_is_live(r.explanation_status, r.deleted_at))) AS k(kind, live),
             LATERAL (SELECT k.kind, r.id::bigint) AS i(kind, source_id)
        WHERE k.live;
        IF cardinality(pub.capture_current_items(TG_TABLE_NAME, kinds, ids)) > 0 THEN
            PERFORM pub.notify_outbox();
        END IF;
        RETURN NULL;
    END IF;
    -- Only items that were live need a tombstone: a row that stays deleted adds nothing.
    INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
    SELECT k.kind, r.id, pub.outbox_payload(NULL),
           pub.outbox_payload_hash(NULL), pub.schema_version(), true
    FROM old_rows AS r
    CROSS JOIN (VALUES ('question'), ('explanation')) AS k(kind)
    WHERE CASE k.kind
              WHEN 'question' THEN pub.question_is_live(r.deleted_at)
              WHEN 'explanation' THEN pub.explanation_is_live(r.explanation_status, r.deleted_at)
          END
      AND (SELECT pub.require_question_shape(pg_typeof(t.id), pg_typeof(t.topic_id), pg_typeof(t.exam_name), pg_typeof(t.exam_round), pg_typeof(t.number), pg_typeof(t.body), pg_typeof(t.choices), pg_typeof(t.answer), pg_typeof(t.explanation), pg_typeof(t.explanation_status), pg_typeof(t.deleted_at))
           FROM old_rows AS t LIMIT 1) IS NOT FALSE;
    IF FOUND THEN
        PERFORM pub.notify_outbox();
    END IF;
    RETURN NULL;
END;
$$;

REVOKE ALL ON FUNCTION pub.capture_question_delete() FROM PUBLIC;

-- object: function pub.capture_question_update()
-- drop: DROP FUNCTION pub.capture_question_update();
CREATE OR REPLACE FUNCTION pub.capture_question_update() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Before any column is read (pub.require_question_shape); OLD has NEW's row type.
    shape_ok constant boolean := pub.require_question_shape(pg_typeof(NEW.id), pg_typeof(NEW.topic_id), pg_typeof(NEW.exam_name), pg_typeof(NEW.exam_round), pg_typeof(NEW.number), pg_typeof(NEW.body), pg_typeof(NEW.choices), pg_typeof(NEW.answer), pg_typeof(NEW.explanation), pg_typeof(NEW.explanation_status), pg_typeof(NEW.deleted_at));
    question_was_live constant boolean := pub.question_is_live(OLD.deleted_at);
    question_is_live constant boolean := pub.question_is_live(NEW.deleted_at);
    explanation_was_live constant boolean := pub.explanation_is_live(OLD.explanation_status, OLD.deleted_at);
    explanation_is_live constant boolean := pub.explanation_is_live(NEW.explanation_status, NEW.deleted_at);
    same_id constant boolean := OLD.id IS NOT DISTINCT FROM NEW.id;
    -- The new id's items to write: a live item whose payload or liveness changed (all
    -- of them after a key change), and, under the same id, items that stopped being
    -- live.
    question_changes constant boolean :=
        (question_is_live
         AND (NOT same_id OR NOT question_was_live
              OR (OLD.topic_id, (OLD.exam_name COLLATE "C"), OLD.exam_round, OLD.number, (OLD.body COLLATE "C"), OLD.choices, OLD.answer)
                 IS DISTINCT FROM (NEW.topic_id, (NEW.exam_name COLLATE "C"), NEW.exam_round, NEW.number, (NEW.body COLLATE "C"), NEW.choices, NEW.answer)))
        OR (same_id AND question_was_live AND NOT question_is_live);
    explanation_changes constant boolean :=
        (explanation_is_live
         AND (NOT same_id OR NOT explanation_was_live
              OR (OLD.explanation COLLATE "C")
                 IS DISTINCT FROM (NEW.explanation COLLATE "C")))
        OR (same_id AND explanation_was_live AND NOT explanation_is_live);
    question_json json;
    explanation_json json;
    previous text := current_setting('pubctl.last_enqueued', true);
    -- Outbox ids, taken here so that the next UPDATE of this row knows them exactly.
    ids bigint[];
    kinds text[];
    source_ids bigint[];
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
       AND previous ~ '^[a-z_][a-z0-9_]*:-?[0-9]+:[0-9]+(,[0-9]+)*$' THEN
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
    IF pg_trigger_depth() > 1 THEN
        noted := set_config('pubctl.nested_capture_in', pg_current_xact_id()::text, true);
    END IF;
    IF current_setting('pubctl.nested_capture_in', true) = pg_current_xact_id()::text THEN
        -- A statement run by a trigger may have changed the row since: its current state
        -- (40_capture.sql), for the same items as below, in the same order.
        SELECT array_agg(i.kind ORDER BY i.n), array_agg(i.source_id ORDER BY i.n)
        INTO kinds, source_ids
        FROM (VALUES (1, 'question', OLD.id::bigint, NOT same_id AND question_was_live),
                     (2, 'explanation', OLD.id::bigint, NOT same_id AND explanation_was_live),
                     (3, 'question', NEW.id::bigint, question_changes),
                     (4, 'explanation', NEW.id::bigint, explanation_changes))
             AS i(n, kind, source_id, wanted)
        WHERE i.wanted;
        ids := pub.capture_current_items('study_question', kinds, source_ids);
        IF COALESCE(previous, '') = '' THEN
            PERFORM pub.notify_outbox();
        END IF;
        noted := set_config('pubctl.last_enqueued',
            'question:' || NEW.id || ':' || array_to_string(ids, ','), true);
        RETURN NULL;
    END IF;
    IF question_changes THEN
        question_json := pub.question_canonical(NEW.id, NEW.topic_id, NEW.exam_name, NEW.exam_round, NEW.number, NEW.body, NEW.choices, NEW.answer, NEW.deleted_at);
    END IF;
    IF explanation_changes THEN
        explanation_json := pub.explanation_canonical(NEW.id, NEW.explanation, NEW.explanation_status, NEW.deleted_at);
    END IF;
    IF NOT same_id THEN
        -- A new id is a new item: the old one ends, the new one begins. Rare: the
        -- general form, ids in outbox order.
        WITH wanted AS (
            SELECT i.n, i.kind, i.source_id, i.canonical
            FROM (VALUES (1, 'question', OLD.id::bigint, NULL::json, NOT same_id AND question_was_live),
                     (2, 'explanation', OLD.id::bigint, NULL::json, NOT same_id AND explanation_was_live),
                     (3, 'question', NEW.id::bigint, question_json, question_changes),
                     (4, 'explanation', NEW.id::bigint, explanation_json, explanation_changes))
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
        VALUES (ids[1], 'question', NEW.id, pub.outbox_payload(question_json),
                pub.outbox_payload_hash(question_json), pub.schema_version(),
                question_json IS NULL),
               (ids[2], 'explanation', NEW.id, pub.outbox_payload(explanation_json),
                pub.outbox_payload_hash(explanation_json), pub.schema_version(),
                explanation_json IS NULL);
    ELSIF question_changes THEN
        ids := ARRAY[nextval('pub.outbox_id_seq')];
        INSERT INTO pub.outbox
            (id, kind, source_id, payload, payload_hash, schema_version, deleted)
        OVERRIDING SYSTEM VALUE
        VALUES (ids[1], 'question', NEW.id, pub.outbox_payload(question_json),
                pub.outbox_payload_hash(question_json), pub.schema_version(),
                question_json IS NULL);
    ELSIF explanation_changes THEN
        ids := ARRAY[nextval('pub.outbox_id_seq')];
        INSERT INTO pub.outbox
            (id, kind, source_id, payload, payload_hash, schema_version, deleted)
        OVERRIDING SYSTEM VALUE
        VALUES (ids[1], 'explanation', NEW.id, pub.outbox_payload(explanation_json),
                pub.outbox_payload_hash(explanation_json), pub.schema_version(),
                explanation_json IS NULL);
    END IF;
    IF COALESCE(previous, '') = '' THEN
        PERFORM pub.notify_outbox();
    END IF;
    noted := set_config('pubctl.last_enqueued',
        'question:' || NEW.id || ':' || array_to_string(ids, ','), true);
    RETURN NULL;
END;
$$;

REVOKE ALL ON FUNCTION pub.capture_question_update() FROM PUBLIC;
