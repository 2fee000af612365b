-- One definition per kind: the SQL that depends on the kinds (payload row types,
-- liveness and projection functions, shape checks, capture functions and triggers,
-- the feed's branches, the functions that name sources, kinds and columns) is rendered
-- from pubctl/sources.py (sql/schema/25_kinds.sql, 75_kinds_attach.sql). This revision
-- replaces the hand-written forms with the rendered ones: the same payloads, hashes
-- and triggers; the row types, feed indexes, triggers and the CHECK constraints listing
-- kinds and sources stay as they are (the rendering writes them alike). Lists of
-- sources elsewhere (the guard, the checks of status and verify, the lock names) now
-- ask the rendered functions.
--
-- Locks: none on tables; functions are replaced in place.

SET LOCAL search_path = pg_catalog, pg_temp;

-- The rendered definitions (25_kinds.sql, without the row types, which are unchanged).
CREATE OR REPLACE FUNCTION pub.topic_is_live(deleted_at timestamptz) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT deleted_at IS NULL;
END;
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
CREATE OR REPLACE FUNCTION pub.question_is_live(deleted_at timestamptz) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT deleted_at IS NULL;
END;
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
CREATE OR REPLACE FUNCTION pub.explanation_is_live(explanation_status text, deleted_at timestamptz) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT deleted_at IS NULL AND explanation_status IS NOT DISTINCT FROM 'ready';
END;
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
CREATE OR REPLACE FUNCTION pub.source_kinds(source text) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE source
        WHEN 'study_topic' THEN '{topic}'::text[]
        WHEN 'study_question' THEN '{question,explanation}'::text[]
    END;
END;
CREATE OR REPLACE FUNCTION pub.source_select_list(source text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE source
        WHEN 'study_topic' THEN 'r.id, r.name, r.exam_round_size, r.deleted_at'
        WHEN 'study_question' THEN 'r.id, r.topic_id, r.exam_name, r.exam_round, r.number, r.body, r.choices, r.answer, r.explanation, r.explanation_status, r.deleted_at'
    END;
END;
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
CREATE OR REPLACE FUNCTION pub.source_row_data_sql(source text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE source
        WHEN 'study_topic' THEN '''id'', r.id, ''name'', CASE WHEN (r.deleted_at IS NULL) THEN r.name END, ''exam_round_size'', CASE WHEN (r.deleted_at IS NULL) THEN r.exam_round_size END, ''deleted_at'', r.deleted_at'
        WHEN 'study_question' THEN '''id'', r.id, ''topic_id'', CASE WHEN (r.deleted_at IS NULL) THEN r.topic_id END, ''exam_name'', CASE WHEN (r.deleted_at IS NULL) THEN r.exam_name END, ''exam_round'', CASE WHEN (r.deleted_at IS NULL) THEN r.exam_round END, ''number'', CASE WHEN (r.deleted_at IS NULL) THEN r.number END, ''body'', CASE WHEN (r.deleted_at IS NULL) THEN r.body END, ''choices'', CASE WHEN (r.deleted_at IS NULL) THEN r.choices END, ''answer'', CASE WHEN (r.deleted_at IS NULL) THEN r.answer END, ''explanation'', CASE WHEN (r.deleted_at IS NULL AND r.explanation_status IS NOT DISTINCT FROM ''ready'') THEN r.explanation END, ''explanation_status'', CASE WHEN r.deleted_at IS NULL THEN left(r.explanation_status, 64) END, ''deleted_at'', r.deleted_at'
    END;
END;
CREATE OR REPLACE FUNCTION pub.source_tables() RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT '{study_topic,study_question}'::text[];
END;
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
-- explanation_is_live now takes its columns in the table's order.
DROP FUNCTION pub.explanation_is_live(timestamptz, text);

-- Functions that named the sources or kinds now ask the rendered ones.
CREATE OR REPLACE FUNCTION pub.lock_holders(name text)
    RETURNS TABLE (pid integer, mode text, granted boolean, gid text)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    locked regclass := CASE name
        WHEN 'applier' THEN 'pub.applier_lock'::regclass
        WHEN 'unpublished_writers' THEN 'pub.unpublished_writers'::regclass
        WHEN 'migrate' THEN to_regclass('pub.alembic_version')
    END;
BEGIN
    IF name = 'worker'
       OR (starts_with(name, 'backfill:') AND pub.source_kinds(substr(name, 10)) IS NOT NULL) THEN
        RETURN QUERY
        SELECT l.pid, 'lease'::text, true, NULL::text
        FROM pub.leases AS l
        WHERE l.name = lock_holders.name AND pub.lease_alive(l.pid, l.lock_key)
        ORDER BY l.started_at;
        RETURN;
    END IF;
    IF name IS NULL OR name NOT IN ('applier', 'unpublished_writers', 'migrate') THEN
        RAISE EXCEPTION 'pubctl: unknown lock %', name
            USING ERRCODE = 'PB003',
                  DETAIL = 'pub.lock_holders knows every lock pubctl takes: applier, '
                           'unpublished_writers, migrate, worker, backfill:<table>.',
                  HINT = 'Name one of them.';
    END IF;
    RETURN QUERY
    SELECT l.pid, l.mode, l.granted, x.gid::text
    FROM pg_locks AS l
    LEFT JOIN pg_locks AS t
           ON l.pid IS NULL AND t.pid IS NULL AND t.locktype = 'transactionid'
          AND t.virtualtransaction = l.virtualtransaction
    LEFT JOIN pg_prepared_xacts AS x ON x.transaction = t.transactionid
    WHERE l.locktype = 'relation' AND l.relation = locked
      AND l.database = (SELECT d.oid FROM pg_database AS d
                        WHERE d.datname = current_database())
      AND (l.pid IS DISTINCT FROM pg_backend_pid())
    ORDER BY l.granted DESC, l.pid;
END;
$$;

CREATE OR REPLACE FUNCTION pub.require_source(source text) RETURNS text[]
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

CREATE OR REPLACE FUNCTION pub.capture_problems() RETURNS TABLE (subject text, problem text)
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
    FROM unnest(pub.source_tables()) AS s(source),
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

    RETURN QUERY
    SELECT format('role %s', a.grantee::regrole),
           'may SET session_replication_role (GRANT SET ON PARAMETER): its sessions, and '
           'functions it owns, can write without firing any trigger'
    FROM pg_catalog.pg_parameter_acl AS p,
         LATERAL pg_catalog.aclexplode(p.paracl) AS a
    WHERE p.parname = 'session_replication_role' AND a.privilege_type = 'SET'
      AND a.grantee <> 0
    UNION ALL
    SELECT 'PUBLIC', 'may SET session_replication_role (GRANT SET ON PARAMETER): every '
                     'session can write without firing any trigger'
    FROM pg_catalog.pg_parameter_acl AS p,
         LATERAL pg_catalog.aclexplode(p.paracl) AS a
    WHERE p.parname = 'session_replication_role' AND a.privilege_type = 'SET'
      AND a.grantee = 0
    ORDER BY 1;

    RETURN QUERY
    SELECT format('function %s', f.oid::regprocedure),
           'sets session_replication_role: whoever may call it writes without firing any '
           'trigger while it runs'
    FROM pg_catalog.pg_proc AS f
    WHERE f.proconfig IS NOT NULL
      AND EXISTS (SELECT FROM unnest(f.proconfig) AS c
                  WHERE lower(replace(c, ' ', '')) LIKE 'session_replication_role=%'
                    AND lower(c) NOT LIKE '%origin%')
    ORDER BY 1;

    RETURN QUERY
    SELECT format('%s.%s', app, c.relname),
           format('subscription %s writes it: the rows it applies fire no capture trigger',
                  s.subname)
    FROM pg_catalog.pg_subscription_rel AS r
    JOIN pg_catalog.pg_subscription AS s ON s.oid = r.srsubid
    JOIN pg_catalog.pg_class AS c ON c.oid = r.srrelid
    WHERE c.relnamespace = (SELECT n.oid FROM pg_catalog.pg_namespace AS n
                            WHERE n.nspname = app)
      AND c.relname = ANY (pub.source_tables())
    ORDER BY 1, 2;

    IF current_setting('session_replication_role') = 'replica' THEN
        RETURN QUERY SELECT 'this session'::text,
            'session_replication_role = replica: its writes fire no trigger'::text;
    END IF;

    RETURN QUERY
    SELECT g.object,
           format('%s granted to %s%s beyond the documented privileges: whoever holds it '
                  'can %s', g.privilege, g.grantee,
                  CASE WHEN g.grantable THEN ' WITH GRANT OPTION' ELSE '' END,
                  'reach what pubctl keeps to itself (pubctl migrate revokes it)')
    FROM pub.undocumented_grants() AS g;

    RETURN QUERY
    SELECT format('capture functions'),
           format('run as role %s, which %s', r.rolname,
                  CASE WHEN r.rolsuper THEN 'is a superuser' ELSE 'can log in' END)
    FROM pg_catalog.pg_proc AS f
    JOIN pg_catalog.pg_roles AS r ON r.oid = f.proowner
    WHERE f.oid = 'pub.refuse_truncate()'::regprocedure
      AND r.rolname = 'pubctl_capture' AND (r.rolcanlogin OR r.rolsuper);
END;
$$;

CREATE OR REPLACE FUNCTION pub.guard_projected_columns() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    source text;
    broken text[];
    allowed text[] := string_to_array(
        replace(COALESCE(current_setting('pubctl.allow_column_change', true), ''), ' ', ''),
        ',');
BEGIN
    FOR source IN
        SELECT DISTINCT c.relname::text
        FROM pg_event_trigger_ddl_commands() AS d
        JOIN pg_class AS c ON c.oid = d.objid
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE d.classid = 'pg_class'::regclass
          AND n.nspname = (SELECT s.app_schema FROM pub.settings AS s)
          AND c.relname = ANY (pub.source_tables())
        ORDER BY 1
    LOOP
        broken := ARRAY(SELECT b FROM pub.broken_source_columns(source) AS b
                        WHERE NOT (source || '.' || b) = ANY (allowed));
        IF cardinality(broken) > 0 THEN
            RAISE EXCEPTION 'pubctl: % of %.% is projected by pubctl; renaming, dropping or retyping it is refused',
                    (SELECT string_agg(format('column %I', b), ', ') FROM unnest(broken) AS b),
                    (SELECT s.app_schema FROM pub.settings AS s), source
                USING ERRCODE = 'PB007',
                      DETAIL = 'pubctl''s capture triggers read this column on every write: '
                               'after this change every write of the table would fail.',
                      HINT = 'Follow docs/operations.md, "Renaming a projected column"; '
                             'nothing was changed.';
        END IF;
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION pub.source_projection(source text, lo bigint, hi bigint)
    RETURNS TABLE (source_id bigint, row_data jsonb, canonicals jsonb, published_hashes jsonb)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    SET row_security = off
AS $$
DECLARE
    app name := (SELECT s.app_schema FROM pub.settings s);
    kinds text[] := pub.require_source(source);
    -- "'name', value, ..." for jsonb_build_object: each projected column, as far as
    -- the row publishes it (rendered from the definition).
    published_values text := pub.source_row_data_sql(source);
BEGIN
    RETURN QUERY EXECUTE format($q$
        WITH rows AS MATERIALIZED (
            SELECT %3$s FROM %1$I.%2$I AS r
            WHERE ($1 IS NULL OR r.id > $1) AND ($2 IS NULL OR r.id <= $2)
        ), items AS (%4$s
        ), canonicals AS (
            SELECT i.source_id, jsonb_object_agg(i.kind, i.canonical::text) AS canonicals
            FROM items AS i GROUP BY i.source_id
        )
        SELECT r.id::bigint, jsonb_build_object(%5$s), k.canonicals,
               (SELECT jsonb_object_agg(c.kind, c.payload_hash) FROM pub.content AS c
                WHERE c.kind = ANY ($3) AND c.source_id = r.id)
        FROM rows AS r
        JOIN canonicals AS k ON k.source_id = r.id
        ORDER BY r.id
    $q$, app, source, pub.source_select_list(source), pub.source_items_sql(source, 'rows'),
       published_values)
    USING lo, hi, kinds;
END;
$$;

-- Attaching rendered triggers and handing capture functions to pubctl_capture.
CREATE FUNCTION pub.attach_capture_trigger(source text, trigger_name text, definition text)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    app name := (SELECT s.app_schema FROM pub.settings AS s);
BEGIN
    EXECUTE format(definition, app);
    INSERT INTO pub.capture_triggers AS r (table_name, trigger_name, definition)
    SELECT c.relname, t.tgname, pg_catalog.pg_get_triggerdef(t.oid)
    FROM pg_catalog.pg_trigger AS t
    JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    WHERE n.nspname = app AND c.relname = source AND t.tgname = trigger_name
    ON CONFLICT ON CONSTRAINT capture_triggers_pkey
        DO UPDATE SET definition = EXCLUDED.definition;
END;
$$;

CREATE FUNCTION pub.detach_capture_trigger(source text, trigger_name text) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I.%I', trigger_name,
                   (SELECT s.app_schema FROM pub.settings AS s), source);
    DELETE FROM pub.capture_triggers AS r
    WHERE r.table_name = source AND r.trigger_name = detach_capture_trigger.trigger_name;
END;
$$;

CREATE FUNCTION pub.settle_ownership(capture_functions regprocedure[]) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    owner oid := (SELECT n.nspowner FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'pub');
    capture oid := (SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolname = 'pubctl_capture');
    object text;
BEGIN
    FOR object IN
        SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'pub'::regnamespace AND p.proowner <> owner
          AND p.proowner IS DISTINCT FROM capture
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO %s', object, owner::regrole);
    END LOOP;
    FOR object IN
        SELECT t.oid::regtype::text FROM pg_catalog.pg_type AS t
        WHERE t.typnamespace = 'pub'::regnamespace AND t.typowner <> owner AND t.typtype = 'c'
          AND NOT EXISTS (SELECT FROM pg_catalog.pg_class AS c
                          WHERE c.oid = t.typrelid AND c.relkind <> 'c')
    LOOP
        EXECUTE format('ALTER TYPE %s OWNER TO %s', object, owner::regrole);
    END LOOP;
    IF (SELECT p.proowner FROM pg_catalog.pg_proc AS p
        WHERE p.oid = 'pub.refuse_truncate()'::regprocedure) IS DISTINCT FROM capture THEN
        RETURN;
    END IF;
    FOREACH object IN ARRAY capture_functions::text[] LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO pubctl_capture', object);
    END LOOP;
END;
$$;

CREATE FUNCTION pub.forget_kind(kind text) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    live bigint := (SELECT count(*) FROM pub.content AS c
                    WHERE c.kind = forget_kind.kind AND NOT c.deleted);
BEGIN
    IF live > 0 THEN
        RAISE EXCEPTION 'pubctl: kind % is no longer defined but % of its items are live', kind, live
            USING ERRCODE = 'PB008',
                  DETAIL = 'Removing the kind would remove them from the feed without a tombstone.',
                  HINT = 'Publish their end first with the pubctl that defines the kind: delete '
                         'or soft-delete the source rows, apply, then migrate; nothing was changed.';
    END IF;
    DELETE FROM pub.outbox AS o WHERE o.kind = forget_kind.kind;
    DELETE FROM pub.content AS c WHERE c.kind = forget_kind.kind;
END;
$$;

REVOKE ALL ON FUNCTION pub.forget_kind(text) FROM PUBLIC;

REVOKE ALL ON FUNCTION pub.attach_capture_trigger(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.detach_capture_trigger(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.settle_ownership(regprocedure[]) FROM PUBLIC;
-- The feed, rendered (the same branches; its grants stay).
-- The feed: item changes in rev order, for viewers (50_apply.sql says why one
-- branch per kind, each reading its kind's partial rev index).
CREATE OR REPLACE FUNCTION pub.feed(
    after_rev bigint, max_rows integer DEFAULT 1000, kinds text[] DEFAULT NULL
)
    RETURNS TABLE (
        rev bigint, kind text, pub_id uuid, source_id bigint, payload json,
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

SELECT pub.settle_ownership(ARRAY[
    'pub.capture_topic_insert()',
    'pub.capture_topic_delete()',
    'pub.capture_topic_update()',
    'pub.capture_question_insert()',
    'pub.capture_question_delete()',
    'pub.capture_question_update()'
]::regprocedure[]);

SELECT pub.require_source(s) FROM unnest(pub.source_tables()) AS s;
