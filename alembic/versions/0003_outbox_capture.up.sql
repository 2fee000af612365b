-- Revision 0003 (frozen): the outbox and the capture triggers.

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

CREATE FUNCTION pub.publishing_enabled() RETURNS boolean
    LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT COALESCE((SELECT s.publishing_enabled FROM pub.settings s), true);
END;

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

-- Enqueue a few items at once: the row-level UPDATE trigger's path (statement
-- triggers INSERT directly from their transition tables).
--
-- An ORM that saves one object several times in a transaction updates the same row
-- again and again; only its last state needs publishing. So the transaction remembers
-- (in a SET LOCAL setting, gone at commit or rollback, undone with a savepoint) which
-- outbox rows its previous call inserted, and a call for the same items removes them
-- before inserting the new ones. Those rows were never visible to anyone else.
CREATE FUNCTION pub.enqueue(kinds text[], source_ids bigint[], canonicals text[])
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    previous jsonb := NULLIF(current_setting('pubctl.last_enqueued', true), '')::jsonb;
    inserted jsonb;
BEGIN
    IF previous IS NOT NULL THEN
        DELETE FROM pub.outbox AS o
        USING unnest(kinds, source_ids) AS i(kind, source_id)
        WHERE o.id = (previous ->> (i.kind || ':' || i.source_id))::bigint;
    END IF;
    WITH rows AS (
        INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
        SELECT i.kind, i.source_id, pub.outbox_payload(i.canonical),
               pub.outbox_payload_hash(i.canonical), pub.schema_version(), i.canonical IS NULL
        FROM unnest(kinds, source_ids, canonicals) AS i(kind, source_id, canonical)
        RETURNING kind, source_id, id
    )
    SELECT jsonb_object_agg(r.kind || ':' || r.source_id, r.id) INTO inserted FROM rows AS r;
    PERFORM set_config('pubctl.last_enqueued', COALESCE(inserted::text, ''), true);
    IF inserted IS NOT NULL THEN
        PERFORM pub.notify_outbox();
    END IF;
END;
$$;

REVOKE ALL ON FUNCTION pub.enqueue(text[], bigint[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.notify_outbox() FROM PUBLIC;

-- Capture: the triggers on the application's tables that put item changes into the
-- outbox, in the writer's own transaction.
--
-- Why this mix of trigger kinds (measured, see BENCHMARKS.md):
-- * INSERT and DELETE: statement triggers with transition tables. One INSERT into
--   the outbox per statement amortises the per-row cost of bulk imports.
-- * UPDATE: a row trigger with a WHEN clause. Postgres evaluates WHEN without calling
--   the function, so an UPDATE that touches no projected column (updated_at, ...)
--   costs almost nothing; a statement trigger would have to join the old and new
--   transition tables for every such row.
-- * TRUNCATE fires no row triggers, so it is refused while publishing is on.
--
-- The functions are SECURITY DEFINER (owned by the role that ran `pubctl migrate`) so
-- that the application's role needs no privilege on schema pub to be published and
-- cannot write the outbox itself. They compare columns, never old payloads, to decide
-- what changed: a row that broke the payload rules before pubctl was installed can
-- still be fixed by an UPDATE.

SET LOCAL search_path = pg_catalog, pg_temp;

-- The statement triggers write one INSERT ... SELECT per kind from the transition
-- table. Each SELECT filters on liveness and computes the canonical text in a
-- subquery kept apart by OFFSET 0, so that the text is built once per row although
-- both the payload and the hash use it. (One INSERT per statement through a LATERAL
-- VALUES list of kinds measured 1.45x slower on a 100k-row insert.)

CREATE FUNCTION pub.capture_topic_insert() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pub.publishing_enabled() THEN
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
          OFFSET 0) AS i(source_id, canonical);
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
    IF NOT pub.publishing_enabled() THEN
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
          OFFSET 0) AS i(source_id, canonical);
    enqueued := FOUND;
    INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
    SELECT 'explanation', i.source_id, pub.outbox_payload(i.canonical),
           pub.outbox_payload_hash(i.canonical), pub.schema_version(), false
    FROM (SELECT r.id::bigint,
                 pub.explanation_canonical(r.id, r.explanation, r.explanation_status,
                                           r.deleted_at)
          FROM new_rows AS r
          WHERE pub.explanation_is_live(r.deleted_at, r.explanation_status)
          OFFSET 0) AS i(source_id, canonical);
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
    IF NOT pub.publishing_enabled() THEN
        RETURN NULL;
    END IF;
    INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
    SELECT 'topic', r.id, pub.outbox_payload(NULL), pub.outbox_payload_hash(NULL),
           pub.schema_version(), true
    FROM old_rows AS r
    WHERE pub.topic_is_live(r.deleted_at);
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
DECLARE
    enqueued boolean;
BEGIN
    IF NOT pub.publishing_enabled() THEN
        RETURN NULL;
    END IF;
    INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
    SELECT 'question', r.id, pub.outbox_payload(NULL), pub.outbox_payload_hash(NULL),
           pub.schema_version(), true
    FROM old_rows AS r
    WHERE pub.question_is_live(r.deleted_at);
    enqueued := FOUND;
    INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
    SELECT 'explanation', r.id, pub.outbox_payload(NULL), pub.outbox_payload_hash(NULL),
           pub.schema_version(), true
    FROM old_rows AS r
    WHERE pub.explanation_is_live(r.deleted_at, r.explanation_status);
    IF enqueued OR FOUND THEN
        PERFORM pub.notify_outbox();
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION pub.capture_topic_update() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    was_live constant boolean := pub.topic_is_live(OLD.deleted_at);
    is_live constant boolean := pub.topic_is_live(NEW.deleted_at);
BEGIN
    IF NOT pub.publishing_enabled() THEN
        RETURN NULL;
    END IF;
    IF OLD.id IS DISTINCT FROM NEW.id THEN
        -- A new id is a new item: the old one ends, the new one begins.
        IF was_live THEN
            PERFORM pub.enqueue('{topic}', ARRAY[OLD.id::bigint], '{NULL}');
        END IF;
        IF is_live THEN
            PERFORM pub.enqueue('{topic}', ARRAY[NEW.id::bigint],
                ARRAY[pub.topic_canonical(NEW.id, NEW.name, NEW.exam_round_size, NEW.deleted_at)]);
        END IF;
    ELSIF was_live IS DISTINCT FROM is_live
          OR (is_live AND (OLD.name, OLD.exam_round_size)
                          IS DISTINCT FROM (NEW.name, NEW.exam_round_size)) THEN
        PERFORM pub.enqueue('{topic}', ARRAY[NEW.id::bigint],
            ARRAY[pub.topic_canonical(NEW.id, NEW.name, NEW.exam_round_size, NEW.deleted_at)]);
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION pub.capture_question_update() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    question_was_live constant boolean := pub.question_is_live(OLD.deleted_at);
    question_is_live constant boolean := pub.question_is_live(NEW.deleted_at);
    explanation_was_live constant boolean :=
        pub.explanation_is_live(OLD.deleted_at, OLD.explanation_status);
    explanation_is_live constant boolean :=
        pub.explanation_is_live(NEW.deleted_at, NEW.explanation_status);
    kinds text[] := '{}';
    ids bigint[] := '{}';
    canonicals text[] := '{}';
BEGIN
    IF NOT pub.publishing_enabled() THEN
        RETURN NULL;
    END IF;
    IF OLD.id IS DISTINCT FROM NEW.id THEN
        -- A new id is a new item: the old one ends, the new one begins.
        IF question_was_live THEN
            kinds := kinds || 'question'::text; ids := ids || OLD.id::bigint;
            canonicals := canonicals || NULL::text;
        END IF;
        IF explanation_was_live THEN
            kinds := kinds || 'explanation'::text; ids := ids || OLD.id::bigint;
            canonicals := canonicals || NULL::text;
        END IF;
    END IF;
    IF question_is_live IS DISTINCT FROM question_was_live
       OR (question_is_live
           AND (OLD.id IS DISTINCT FROM NEW.id
                OR (OLD.topic_id, OLD.exam_name, OLD.exam_round, OLD.number, OLD.body,
                    OLD.choices, OLD.answer)
                   IS DISTINCT FROM (NEW.topic_id, NEW.exam_name, NEW.exam_round, NEW.number,
                                     NEW.body, NEW.choices, NEW.answer))) THEN
        IF question_is_live OR OLD.id IS NOT DISTINCT FROM NEW.id THEN
            kinds := kinds || 'question'::text; ids := ids || NEW.id::bigint;
            canonicals := canonicals || pub.question_canonical(
                NEW.id, NEW.topic_id, NEW.exam_name, NEW.exam_round, NEW.number,
                NEW.body, NEW.choices, NEW.answer, NEW.deleted_at);
        END IF;
    END IF;
    IF explanation_is_live IS DISTINCT FROM explanation_was_live
       OR (explanation_is_live
           AND (OLD.id IS DISTINCT FROM NEW.id
                OR OLD.explanation IS DISTINCT FROM NEW.explanation)) THEN
        IF explanation_is_live OR OLD.id IS NOT DISTINCT FROM NEW.id THEN
            kinds := kinds || 'explanation'::text; ids := ids || NEW.id::bigint;
            canonicals := canonicals || pub.explanation_canonical(
                NEW.id, NEW.explanation, NEW.explanation_status, NEW.deleted_at);
        END IF;
    END IF;
    IF cardinality(kinds) > 0 THEN
        PERFORM pub.enqueue(kinds, ids, canonicals);
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION pub.refuse_truncate() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pub.publishing_enabled() THEN
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

-- Attach the triggers to the application's tables, in the schema recorded at install.
-- The WHEN clauses list every projected column (and liveness, not the deleted_at
-- timestamp itself): an UPDATE that changes none of them never calls the function.
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
            WHEN ((OLD.id, OLD.name, OLD.exam_round_size, OLD.deleted_at IS NULL)
                  IS DISTINCT FROM (NEW.id, NEW.name, NEW.exam_round_size, NEW.deleted_at IS NULL))
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
            WHEN ((OLD.id, OLD.topic_id, OLD.exam_name, OLD.exam_round, OLD.number, OLD.body,
                   OLD.choices, OLD.answer, OLD.explanation, OLD.explanation_status,
                   OLD.deleted_at IS NULL)
                  IS DISTINCT FROM
                  (NEW.id, NEW.topic_id, NEW.exam_name, NEW.exam_round, NEW.number, NEW.body,
                   NEW.choices, NEW.answer, NEW.explanation, NEW.explanation_status,
                   NEW.deleted_at IS NULL))
            EXECUTE FUNCTION pub.capture_question_update();
        CREATE TRIGGER pub_capture_delete AFTER DELETE ON %1$I.study_question
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION pub.capture_question_delete();
        CREATE TRIGGER pub_refuse_truncate BEFORE TRUNCATE ON %1$I.study_question
            FOR EACH STATEMENT EXECUTE FUNCTION pub.refuse_truncate();
    $sql$, app);
END;
$attach$;
