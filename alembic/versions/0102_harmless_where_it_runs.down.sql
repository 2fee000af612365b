-- Revision 0102 down (frozen): back to 0101.

SET LOCAL search_path = pg_catalog, pg_temp;

DROP EVENT TRIGGER IF EXISTS pub_guard_projected_columns;
DROP FUNCTION pub.guard_projected_columns();
DROP FUNCTION pub.reattach_capture_triggers(text);
DROP FUNCTION pub.broken_source_columns(text);
DROP FUNCTION pub.revoke_undocumented_grants();
DROP FUNCTION pub.default_privilege_grants();
DROP FUNCTION pub.undocumented_grants();
DROP FUNCTION pub.documented_privileges();

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

CREATE OR REPLACE FUNCTION pub.source_shape_problems(source text) RETURNS SETOF text
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

CREATE OR REPLACE FUNCTION pub.capture_topic_insert() RETURNS trigger
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

CREATE OR REPLACE FUNCTION pub.capture_question_insert() RETURNS trigger
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

CREATE OR REPLACE FUNCTION pub.capture_topic_delete() RETURNS trigger
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

CREATE OR REPLACE FUNCTION pub.capture_question_delete() RETURNS trigger
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

CREATE OR REPLACE FUNCTION pub.capture_topic_update() RETURNS trigger
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

CREATE OR REPLACE FUNCTION pub.capture_question_update() RETURNS trigger
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


DROP FUNCTION pub.capture_current_items(text, text[], bigint[]);

CREATE OR REPLACE FUNCTION pub.notify_outbox() RETURNS void
    LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT pg_catalog.pg_notify('pubctl_outbox', '');
END;

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

DROP FUNCTION pub.lock_holders(text);

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

CREATE OR REPLACE FUNCTION pub.unpublished_write_allowed() RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    still_off boolean;
    seen bigint;
    latest bigint;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(pub.lock_key('unpublished_writers'));
    SELECT NOT s.publishing_enabled, s.publishing_epoch INTO still_off, seen
    FROM pub.settings AS s;
    SELECT e.last_value INTO latest FROM pub.publishing_epoch AS e;
    RETURN still_off IS TRUE AND seen IS NOT DISTINCT FROM latest;
END;
$$;

CREATE OR REPLACE FUNCTION pub.apply_batch(
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

DROP FUNCTION pub.drop_lease(text);
DROP FUNCTION pub.take_lease(text, boolean);
DROP FUNCTION pub.lease_alive(integer, bigint);
DROP TABLE pub.leases;
DROP TABLE pub.unpublished_writers;
DROP TABLE pub.applier_lock;
