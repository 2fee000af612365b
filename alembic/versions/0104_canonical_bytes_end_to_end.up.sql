-- Revision 0104: canonical bytes from the trigger to the viewer, and a new rev for
-- every change a reader can see.
-- * The payload columns of pub.outbox and pub.content become json holding the RFC 8785
--   text the trigger built, so sha256(payload::text) is payload_hash; pub.feed returns
--   it as it is. The stored payloads, published and pending, are converted.
-- * The projection functions return that json, printed by row_to_json from a row type
--   per kind (pub.topic_payload, ...): no text is parsed on the way, neither into jsonb
--   nor by a cast to json. The text helpers they used are dropped.
-- * apply_batch gives an item a new rev when its schema_version changes, as it does
--   when its payload_hash or deleted changes (before, a schema_version change was
--   written in place under the old rev, without a notification).
-- * verify compares stored payloads as text.
-- Locks (ACCESS EXCLUSIVE) and rewrites pub.content, then pub.outbox: feed readers and
-- the applier wait for the first; the application's writes wait only from the second
-- (the outbox backlog) to the end of this transaction. docs/operations.md gives the
-- time measured at 1,000,000 items. Takes no lock on the application's tables.

SET LOCAL search_path = pg_catalog, pg_temp;

-- pub.feed returns the payload as stored (json).
-- Dropped before the column changes type and created again after (its result type
-- changes, and it depends on the column): the EXECUTE grants operators gave their
-- viewers' roles are noted first and given again, so a viewer keeps reading. An object
-- of the operator's that depends on pub.feed (a view over it) makes this fail, naming
-- it: drop it first and create it again after.
SELECT pg_catalog.set_config('pubctl.feed_grants', COALESCE((
    SELECT pg_catalog.array_agg(
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.rolname) END
               || CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)::text
    FROM pg_catalog.pg_proc AS p
    CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) AS a
    LEFT JOIN pg_catalog.pg_roles AS r ON r.oid = a.grantee
    WHERE p.oid = 'pub.feed(bigint,integer,text[])'::pg_catalog.regprocedure
      AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner), '{}'), true);

DROP FUNCTION pub.feed(bigint, integer, text[]);

-- ===== the projection returns json =====
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

CREATE TYPE pub.topic_payload AS (exam_round_size integer, name text, topic_id bigint);

CREATE TYPE pub.question_payload AS (
    answer integer, body text, choices text[], exam_name text, exam_round integer,
    number integer, question_id bigint, topic_id bigint
);

CREATE TYPE pub.explanation_payload AS (explanation text, question_id bigint);

DROP FUNCTION pub.topic_canonical(bigint, text, integer, timestamptz);
DROP FUNCTION pub.question_canonical(bigint, bigint, text, integer, integer, text, jsonb, integer,
                                     timestamptz);
DROP FUNCTION pub.explanation_canonical(bigint, text, text, timestamptz);

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

DROP FUNCTION pub.json_string(text);
DROP FUNCTION pub.json_integer(bigint);
DROP FUNCTION pub.json_string_array(jsonb);

-- ===== the stored payloads =====
-- A stored payload's canonical text. Tombstones are {}. A live item's text is built
-- again from its jsonb through the projection functions the triggers use (jsonb kept
-- the values; only the spelling was lost), and kept only when it hashes to the stored
-- payload_hash, which was computed over the canonical text when the item was
-- captured. Anything else (a payload edited by hand, of an unknown shape) keeps its
-- jsonb text, which `pubctl verify` then reports as before.
CREATE FUNCTION pub.canonical_of_stored(
    kind text, payload jsonb, payload_hash text, deleted boolean
) RETURNS json
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    canonical json;
BEGIN
    IF deleted THEN
        RETURN payload::text::json;
    END IF;
    canonical := CASE kind
        WHEN 'topic' THEN pub.topic_canonical(
            (payload ->> 'topic_id')::bigint, payload ->> 'name',
            (payload ->> 'exam_round_size')::integer, NULL)
        WHEN 'question' THEN pub.question_canonical(
            (payload ->> 'question_id')::bigint, (payload ->> 'topic_id')::bigint,
            payload ->> 'exam_name', (payload ->> 'exam_round')::integer,
            (payload ->> 'number')::integer, payload ->> 'body', payload -> 'choices',
            (payload ->> 'answer')::integer, NULL)
        WHEN 'explanation' THEN pub.explanation_canonical(
            (payload ->> 'question_id')::bigint, payload ->> 'explanation', 'ready', NULL)
    END;
    IF pub.payload_hash(canonical::text) = payload_hash THEN
        RETURN canonical;
    END IF;
    RETURN payload::text::json;
EXCEPTION WHEN OTHERS THEN
    RETURN payload::text::json;
END;
$$;

ALTER TABLE pub.content ALTER COLUMN payload TYPE json
    USING pub.canonical_of_stored(kind, payload, payload_hash, deleted);
ALTER TABLE pub.outbox ALTER COLUMN payload TYPE json
    USING pub.canonical_of_stored(kind, payload, payload_hash, deleted);

DROP FUNCTION pub.canonical_of_stored(text, jsonb, text, boolean);

-- ===== capture, apply, feed, verify =====
DROP FUNCTION pub.outbox_payload(text);
DROP FUNCTION pub.outbox_payload_hash(text);

CREATE FUNCTION pub.outbox_payload(canonical json) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT COALESCE(canonical, '{}'::json);
END;

CREATE FUNCTION pub.outbox_payload_hash(canonical json) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT pub.payload_hash(COALESCE(canonical::text, '{}'));
END;

-- The same for the canonical text itself: what capture functions compiled before
-- this revision pass (sessions running through the upgrade keep them).
CREATE FUNCTION pub.outbox_payload(canonical text) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT COALESCE(canonical, '{}')::json;
END;

CREATE FUNCTION pub.outbox_payload_hash(canonical text) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT pub.payload_hash(COALESCE(canonical, '{}'));
END;

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
    topic_json json;
    previous text := current_setting('pubctl.last_enqueued', true);
    -- Outbox ids, taken here so that the next UPDATE of this row knows them exactly.
    first_id bigint;
    second_id bigint;
    ids bigint[];
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
    IF pg_trigger_depth() > 1 THEN
        noted := set_config('pubctl.nested_capture_in', pg_current_xact_id()::text, true);
    END IF;
    IF current_setting('pubctl.nested_capture_in', true) = pg_current_xact_id()::text THEN
        -- A statement run by a trigger may have changed the row since: its current state
        -- (see the header).
        ids := pub.capture_current_items('study_topic',
            CASE WHEN same_id OR NOT was_live OR NOT is_live THEN '{topic}'::text[]
                 ELSE '{topic,topic}' END,
            CASE WHEN same_id OR NOT was_live THEN ARRAY[NEW.id::bigint]
                 WHEN NOT is_live THEN ARRAY[OLD.id::bigint]
                 ELSE ARRAY[OLD.id::bigint, NEW.id::bigint] END);
        IF COALESCE(previous, '') = '' THEN
            PERFORM pub.notify_outbox();
        END IF;
        noted := set_config('pubctl.last_enqueued',
            'topic:' || NEW.id || ':' || array_to_string(ids, ','), true);
        RETURN NULL;
    END IF;
    first_id := nextval('pub.outbox_id_seq');
    IF is_live THEN
        topic_json := pub.topic_canonical(NEW.id, NEW.name, NEW.exam_round_size, NEW.deleted_at);
    END IF;
    IF same_id OR NOT was_live THEN
        -- The item itself: its new payload, or its tombstone.
        INSERT INTO pub.outbox
            (id, kind, source_id, payload, payload_hash, schema_version, deleted)
        OVERRIDING SYSTEM VALUE
        VALUES (first_id, 'topic', NEW.id, pub.outbox_payload(topic_json),
                pub.outbox_payload_hash(topic_json), pub.schema_version(), topic_json IS NULL);
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
               (second_id, 'topic', NEW.id, pub.outbox_payload(topic_json),
                pub.outbox_payload_hash(topic_json), pub.schema_version(), false);
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
    IF pg_trigger_depth() > 1 THEN
        noted := set_config('pubctl.nested_capture_in', pg_current_xact_id()::text, true);
    END IF;
    IF current_setting('pubctl.nested_capture_in', true) = pg_current_xact_id()::text THEN
        -- A statement run by a trigger may have changed the row since: its current state
        -- (see the header), for the same items as below, in the same order.
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
        question_json := pub.question_canonical(
            NEW.id, NEW.topic_id, NEW.exam_name, NEW.exam_round, NEW.number,
            NEW.body, NEW.choices, NEW.answer, NEW.deleted_at);
    END IF;
    IF explanation_changes THEN
        explanation_json := pub.explanation_canonical(
            NEW.id, NEW.explanation, NEW.explanation_status, NEW.deleted_at);
    END IF;
    IF NOT same_id THEN
        -- A new id is a new item: the old one ends, the new one begins. Rare: the
        -- general form, ids in outbox order.
        WITH wanted AS (
            SELECT i.n, i.kind, i.source_id, i.canonical
            FROM (VALUES (1, 'question', OLD.id::bigint, NULL::json, question_was_live),
                         (2, 'explanation', OLD.id::bigint, NULL::json, explanation_was_live),
                         (3, 'question', NEW.id::bigint, question_json, question_changes),
                         (4, 'explanation', NEW.id::bigint, explanation_json,
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
    ELSE
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

CREATE OR REPLACE FUNCTION pub.apply_batch(
    max_rows integer,
    OUT consumed bigint, OUT changed bigint, OUT unchanged bigint, OUT dropped bigint
)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    -- Waiting for another batch is bounded: the caller names who holds it (55P03).
    SET lock_timeout = '10s'
AS $$
BEGIN
    IF max_rows IS NULL OR max_rows < 1 THEN
        RAISE EXCEPTION 'pubctl: batch size must be a positive integer, got %', max_rows
            USING ERRCODE = 'PB003',
                  DETAIL = 'apply_batch consumes at most max_rows outbox rows per call.',
                  HINT = 'Pass a batch size of 1 or more.';
    END IF;
    -- One applier at a time (sql/schema/15_locks.sql).
    LOCK TABLE pub.applier_lock IN EXCLUSIVE MODE;

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
                   WHEN (p.payload_hash, p.deleted, p.schema_version)
                        = (n.payload_hash, n.deleted, n.schema_version) THEN 'unchanged'
                   ELSE 'changed'
               END AS verdict
        FROM newest AS n
        LEFT JOIN pub.content AS p ON (p.kind, p.source_id) = (n.kind, n.source_id)
    ), bump AS (
        UPDATE pub.rev_counter AS r
        SET last_rev = r.last_rev + (SELECT count(*) FROM judged WHERE verdict = 'changed')
        WHERE EXISTS (SELECT FROM judged WHERE verdict = 'changed')
        RETURNING r.last_rev - (SELECT count(*) FROM judged WHERE verdict = 'changed') AS first_rev
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

CREATE FUNCTION pub.feed(after_rev bigint, max_rows integer DEFAULT 1000, kinds text[] DEFAULT NULL)
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

DO $grants$
DECLARE
    grantee text;
BEGIN
    FOREACH grantee IN ARRAY pg_catalog.current_setting('pubctl.feed_grants')::text[]
    LOOP
        EXECUTE 'GRANT EXECUTE ON FUNCTION pub.feed(bigint, integer, text[]) TO ' || grantee;
    END LOOP;
END
$grants$;

CREATE OR REPLACE FUNCTION pub.verify_range(source text, lo bigint, hi bigint)
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
            SELECT %3$s FROM %1$I.%2$I AS r
            WHERE ($1 IS NULL OR r.id > $1) AND ($2 IS NULL OR r.id <= $2)
        ), expected AS MATERIALIZED (%4$s
        ), published AS (
            SELECT c.* FROM pub.content AS c
            WHERE c.kind = ANY ($3)
              AND ($1 IS NULL OR c.source_id > $1) AND ($2 IS NULL OR c.source_id <= $2)
        ), joined AS MATERIALIZED (
            SELECT COALESCE(e.kind, p.kind) AS kind, COALESCE(e.source_id, p.source_id) AS source_id,
                   e.canonical::text AS want, pub.payload_hash(e.canonical::text) AS want_hash,
                   p.payload::text AS have, p.payload_hash AS have_hash,
                   COALESCE(NOT p.deleted, false) AS have_live, p.schema_version
            FROM expected AS e
            FULL JOIN published AS p ON (p.kind, p.source_id) = (e.kind, e.source_id)
        ), waiting AS (
            -- Items with outbox rows not applied yet: one scan of the outbox per range.
            SELECT DISTINCT o.kind, o.source_id FROM pub.outbox AS o
            WHERE o.kind = ANY ($3)
              AND ($1 IS NULL OR o.source_id > $1) AND ($2 IS NULL OR o.source_id <= $2)
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
                   FROM jsonb_each(j.want::jsonb) AS a
                   FULL JOIN jsonb_each(j.have::jsonb) AS b ON b.key = a.key
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
    -- the row publishes it.
    published_values text := (
        SELECT string_agg(format('%L, %s', c.column_name, CASE c.column_name
                   WHEN 'id' THEN 'r.id'
                   WHEN 'deleted_at' THEN 'r.deleted_at'
                   WHEN 'explanation' THEN
                       'CASE WHEN r.deleted_at IS NULL AND r.explanation_status = ''ready'' '
                       'THEN r.explanation END'
                   WHEN 'explanation_status' THEN
                       'CASE WHEN r.deleted_at IS NULL THEN left(r.explanation_status, 64) END'
                   ELSE format('CASE WHEN r.deleted_at IS NULL THEN r.%I END', c.column_name)
               END), ', ')
        FROM pub.source_columns(source) AS c);
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

-- Everything in schema pub belongs to the owner of schema pub (but what was handed to
-- pubctl_capture), whoever runs the migration: a function this revision created as a
-- superuser who ran it would otherwise be the superuser's, and a SECURITY DEFINER one
-- (pub.feed) would then run as the superuser over tables the schema's owner controls
-- (who could, for one, turn pub.content into a view that calls code of its own).
DO $owner$
DECLARE
    owner oid := (SELECT n.nspowner FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'pub');
    object text;
BEGIN
    FOR object IN
        SELECT p.oid::pg_catalog.regprocedure::text FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'pub'::pg_catalog.regnamespace AND p.proowner <> owner
          AND p.proowner <> ALL (SELECT r.oid FROM pg_catalog.pg_roles AS r
                                 WHERE r.rolname = 'pubctl_capture')
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO %s', object, owner::pg_catalog.regrole);
    END LOOP;
    FOR object IN
        SELECT t.oid::pg_catalog.regtype::text FROM pg_catalog.pg_type AS t
        WHERE t.typnamespace = 'pub'::pg_catalog.regnamespace AND t.typowner <> owner
          AND t.typtype = 'c'
          AND NOT EXISTS (SELECT FROM pg_catalog.pg_class AS c
                          WHERE c.oid = t.typrelid AND c.relkind <> 'c')
    LOOP
        EXECUTE pg_catalog.format('ALTER TYPE %s OWNER TO %s', object, owner::pg_catalog.regrole);
    END LOOP;
END
$owner$;
