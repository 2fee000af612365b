-- Revision 0102 (frozen): pubctl harmless where it runs.
-- * Locks only pubctl's roles can take (pub.applier_lock, pub.unpublished_writers,
--   leases in pub.leases) replace the public advisory-lock keys.
-- * pubctl.notify = off skips capture's notification (two-phase commit).
-- * Grants beyond the documented ones reported (pub.undocumented_grants) and revoked
--   by every migrate (pub.revoke_undocumented_grants).
-- * The DDL guard on projected columns, when a superuser migrates.
-- * The state a transaction ends with is the state published: a capture whose state
--   may be stale writes the row's current state (pub.capture_current_items).
-- * Bypasses status and verify report: an inheritance parent or a partitioned table
--   above a source table, subscriptions writing them, roles granted SET on
--   session_replication_role, functions whose configuration sets it.
-- Takes no lock on the application's tables beyond the event trigger's creation.

SET LOCAL search_path = pg_catalog, pg_temp;

-- ===== locks =====
-- Held EXCLUSIVE by each apply batch (pub.apply_batch).
CREATE TABLE pub.applier_lock ();

COMMENT ON TABLE pub.applier_lock IS
    'Never holds rows: apply batches lock it (EXCLUSIVE) so that one runs at a time.';

-- Held ROW EXCLUSIVE by every transaction that wrote while publishing was off
-- (pub.unpublished_write_allowed); `pubctl enable` and a backfill's first page wait
-- for all of them by asking for SHARE.
CREATE TABLE pub.unpublished_writers ();

COMMENT ON TABLE pub.unpublished_writers IS
    'Never holds rows: transactions that wrote while publishing was off hold it ROW EXCLUSIVE until they end; enable waits for them (SHARE).';

CREATE TABLE pub.leases (
    lock_key   bigint PRIMARY KEY,
    name       text NOT NULL CHECK (name IN ('worker', 'backfill:study_topic',
                                              'backfill:study_question')),
    pid        integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE pub.leases IS
    'Work that spans transactions (workers, backfills): alive while session pid holds the advisory lock lock_key.';

-- Whether session pid holds the lease key (pg_locks is readable by every role).
CREATE FUNCTION pub.lease_alive(pid integer, lock_key bigint) RETURNS boolean
    LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT EXISTS (
        SELECT FROM pg_catalog.pg_locks AS l
        WHERE l.locktype = 'advisory' AND l.granted AND l.pid = lease_alive.pid
          AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d
                            WHERE d.datname = pg_catalog.current_database())
          AND l.classid = (lease_alive.lock_key >> 32)::oid
          AND l.objid = (lease_alive.lock_key & 4294967295)::oid
          AND l.objsubid = 1);
END;

-- Take a lease for this session. An exclusive lease (a backfill of one table) is
-- refused while another live one of the same name exists: then holder names its
-- session. Dead leases are removed on the way. Takers are serialised by a lock on
-- pub.leases, held for this short transaction only.
--
-- SECURITY DEFINER, for the owner of pub alone (EXECUTE revoked from PUBLIC): a role
-- that may run a backfill or a worker needs no privilege on pub.leases itself. The
-- advisory lock is still this session's: it is session-level.
CREATE FUNCTION pub.take_lease(name text, exclusive boolean, OUT taken boolean,
                               OUT holder integer)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key bigint;
BEGIN
    LOCK TABLE pub.leases IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM pub.leases AS l WHERE NOT pub.lease_alive(l.pid, l.lock_key);
    IF exclusive THEN
        SELECT l.pid INTO holder FROM pub.leases AS l
        WHERE l.name = take_lease.name ORDER BY l.started_at LIMIT 1;
        IF FOUND THEN
            taken := false;
            RETURN;
        END IF;
    END IF;
    -- 60 random bits from the server's strong random source: positive, so that both
    -- halves are valid oids in pg_locks.
    key := ('x' || substr(md5(gen_random_uuid()::text), 1, 15))::bit(60)::bigint;
    PERFORM pg_advisory_lock(key);
    INSERT INTO pub.leases (lock_key, name, pid) VALUES (key, take_lease.name, pg_backend_pid());
    taken := true;
END;
$$;

-- Give back this session's leases of that name.
CREATE FUNCTION pub.drop_lease(name text) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key bigint;
BEGIN
    FOR key IN
        DELETE FROM pub.leases AS l
        WHERE l.name = drop_lease.name AND l.pid = pg_backend_pid()
        RETURNING l.lock_key
    LOOP
        PERFORM pg_advisory_unlock(key);
    END LOOP;
END;
$$;

-- Who holds (or waits for) one of pubctl's locks in this database: the sessions, and
-- prepared transactions by gid (they have no session: pid is NULL). An unknown name is
-- an error, never an empty answer.
DROP FUNCTION pub.lock_holders(text);

CREATE FUNCTION pub.lock_holders(name text)
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
    IF name IN ('worker', 'backfill:study_topic', 'backfill:study_question') THEN
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

REVOKE ALL ON FUNCTION pub.take_lease(text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.drop_lease(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION pub.unpublished_write_allowed() RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    still_off boolean;
    seen bigint;
    latest bigint;
BEGIN
    LOCK TABLE pub.unpublished_writers IN ROW EXCLUSIVE MODE;
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

DROP FUNCTION pub.lock_key(text);
DROP FUNCTION pub.unknown_lock(text);

-- ===== notification =====
CREATE OR REPLACE FUNCTION pub.notify_outbox() RETURNS void
    LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT CASE WHEN pg_catalog.lower(COALESCE(
                         pg_catalog.current_setting('pubctl.notify', true), ''))
                     = ANY ('{off,false,no,0}'::text[])
                THEN NULL
                ELSE pg_catalog.pg_notify('pubctl_outbox', '')
           END;
END;

-- ===== the state a transaction ends with is the state published =====
CREATE FUNCTION pub.capture_current_items(source text, kinds text[], ids bigint[])
    RETURNS bigint[]
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET row_security = off
AS $$
DECLARE
    written bigint[];
BEGIN
    IF cardinality(ids) IS DISTINCT FROM cardinality(kinds) OR cardinality(ids) = 0 THEN
        RETURN '{}';
    END IF;
    PERFORM pub.require_source(source);
    EXECUTE format($q$
        WITH wanted AS MATERIALIZED (
            SELECT DISTINCT ON (w.kind, w.source_id) w.n, w.kind, w.source_id
            FROM unnest($1, $2) WITH ORDINALITY AS w(kind, source_id, n)
            ORDER BY w.kind, w.source_id, w.n
        ), current_rows AS MATERIALIZED (
            SELECT %3$s FROM %1$I.%2$I AS r
            WHERE r.id = ANY (SELECT w.source_id FROM wanted AS w)
        ), items AS MATERIALIZED (%4$s
        ), numbered AS (
            SELECT nextval('pub.outbox_id_seq') AS id, x.kind, x.source_id, x.canonical
            FROM (SELECT w.n, w.kind, w.source_id, i.canonical
                  FROM wanted AS w
                  LEFT JOIN items AS i ON (i.kind, i.source_id) = (w.kind, w.source_id)
                  ORDER BY w.n) AS x
        ), inserted AS (
            INSERT INTO pub.outbox
                (id, kind, source_id, payload, payload_hash, schema_version, deleted)
            OVERRIDING SYSTEM VALUE
            SELECT n.id, n.kind, n.source_id, pub.outbox_payload(n.canonical),
                   pub.outbox_payload_hash(n.canonical), pub.schema_version(),
                   n.canonical IS NULL
            FROM numbered AS n
            RETURNING id
        )
        SELECT array_agg(i.id ORDER BY i.id) FROM inserted AS i
    $q$, (SELECT s.app_schema FROM pub.settings AS s), source, pub.source_select_list(source),
         pub.source_items_sql(source, 'current_rows'))
    INTO written USING kinds, ids;
    RETURN written;
END;
$$;

REVOKE ALL ON FUNCTION pub.capture_current_items(text, text[], bigint[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION pub.capture_topic_insert() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
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
    -- have changed since the transition table recorded it (see the header). Built-in
    -- calls in the IF itself: a SQL function here would cost an executor start per
    -- statement, a tenth of a single-row INSERT's time.
    IF current_setting('track_counts') <> 'on'
       OR pg_stat_get_xact_tuples_updated(TG_RELID)
          + pg_stat_get_xact_tuples_deleted(TG_RELID) > 0 THEN
        -- Rows may have changed since they were inserted: their current state. The
        -- columns' types are checked before any is read (as on the fast path).
        PERFORM pub.require_source(TG_TABLE_NAME);
        IF cardinality(pub.capture_current_items(TG_TABLE_NAME,
               ARRAY(SELECT 'topic' FROM new_rows AS r WHERE pub.topic_is_live(r.deleted_at)),
               ARRAY(SELECT r.id::bigint FROM new_rows AS r
                     WHERE pub.topic_is_live(r.deleted_at)))) > 0 THEN
            PERFORM pub.notify_outbox();
        END IF;
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
    -- have changed since the transition table recorded it (see the header). Built-in
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
                                   ('explanation', pub.explanation_is_live(
                                        r.deleted_at, r.explanation_status))) AS k(kind, live),
             LATERAL (SELECT k.kind, r.id::bigint) AS i(kind, source_id)
        WHERE k.live;
        IF cardinality(pub.capture_current_items(TG_TABLE_NAME, kinds, ids)) > 0 THEN
            PERFORM pub.notify_outbox();
        END IF;
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
    IF pg_trigger_depth() > 1 THEN
        -- Run by another trigger: later UPDATE captures read the current state.
        PERFORM set_config('pubctl.nested_capture_in', pg_current_xact_id()::text, true);
    END IF;
    -- Has this transaction inserted or updated rows of this table (or can it not tell)?
    -- Then an id this statement deleted may hold another row by now (see the header).
    IF current_setting('track_counts') <> 'on'
       OR pg_stat_get_xact_tuples_inserted(TG_RELID)
          + pg_stat_get_xact_tuples_updated(TG_RELID) > 0 THEN
        -- An id may hold another row by now (moved or inserted there): its current state.
        -- The columns' types are checked before any is read (as on the fast path).
        PERFORM pub.require_source(TG_TABLE_NAME);
        IF cardinality(pub.capture_current_items(TG_TABLE_NAME,
               ARRAY(SELECT 'topic' FROM old_rows AS r WHERE pub.topic_is_live(r.deleted_at)),
               ARRAY(SELECT r.id::bigint FROM old_rows AS r
                     WHERE pub.topic_is_live(r.deleted_at)))) > 0 THEN
            PERFORM pub.notify_outbox();
        END IF;
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
    -- Then an id this statement deleted may hold another row by now (see the header).
    IF current_setting('track_counts') <> 'on'
       OR pg_stat_get_xact_tuples_inserted(TG_RELID)
          + pg_stat_get_xact_tuples_updated(TG_RELID) > 0 THEN
        -- An id may hold another row by now (moved or inserted there): its current state.
        -- The columns' types are checked before any is read (as on the fast path).
        PERFORM pub.require_source(TG_TABLE_NAME);
        SELECT array_agg(i.kind), array_agg(i.source_id) INTO kinds, ids
        FROM old_rows AS r
        CROSS JOIN LATERAL (VALUES ('question', pub.question_is_live(r.deleted_at)),
                                   ('explanation', pub.explanation_is_live(
                                        r.deleted_at, r.explanation_status))) AS k(kind, live),
             LATERAL (SELECT k.kind, r.id::bigint) AS i(kind, source_id)
        WHERE k.live;
        IF cardinality(pub.capture_current_items(TG_TABLE_NAME, kinds, ids)) > 0 THEN
            PERFORM pub.notify_outbox();
        END IF;
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


-- ===== bypasses: parents, partitions of, subscriptions, ways to set replica =====
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

-- ===== capture problems: undocumented grants, bypasses =====
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
      AND c.relname IN ('study_topic', 'study_question')
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
    WHERE f.oid = 'pub.capture_topic_insert()'::regprocedure
      AND r.rolname = 'pubctl_capture' AND (r.rolcanlogin OR r.rolsuper);
END;
$$;

DO $capture$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_proc AS p
               JOIN pg_catalog.pg_roles AS r ON r.oid = p.proowner
               WHERE p.oid = 'pub.capture_topic_insert()'::pg_catalog.regprocedure
                 AND r.rolname = 'pubctl_capture') THEN
        GRANT INSERT ON pub.unpublished_writers TO pubctl_capture;
        GRANT EXECUTE ON FUNCTION pub.capture_current_items(text, text[], bigint[])
            TO pubctl_capture;
    END IF;
END;
$capture$;

-- ===== 45_guard.sql =====
-- The projected columns of one source table that are missing or of a type capture does
-- not accept.
CREATE FUNCTION pub.broken_source_columns(source text) RETURNS SETOF text
    LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT s.column_name
    FROM pub.source_columns(broken_source_columns.source) AS s
    LEFT JOIN pg_catalog.pg_attribute AS a
           ON a.attrelid = (SELECT c.oid FROM pg_catalog.pg_class AS c
                            JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
                            JOIN pub.settings AS t ON n.nspname = t.app_schema
                            WHERE c.relname = broken_source_columns.source)
          AND a.attname = s.column_name AND a.attnum > 0 AND NOT a.attisdropped
    WHERE a.atttypid IS NULL OR NOT a.atttypid::pg_catalog.regtype = ANY (s.allowed_types)
    ORDER BY 1;
END;

CREATE FUNCTION pub.guard_projected_columns() RETURNS event_trigger
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
          AND c.relname IN ('study_topic', 'study_question')
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

REVOKE ALL ON FUNCTION pub.guard_projected_columns() FROM PUBLIC;

-- Attach a source table's capture triggers again exactly as pubctl recorded them
-- (pub.capture_triggers), replacing any that now reads otherwise. A trigger's WHEN
-- clause is bound to columns, not names: after a projected column is renamed and a
-- column of its old name takes its place (the rename procedure), the UPDATE trigger
-- must watch the new column, the one capture reads. CREATE OR REPLACE TRIGGER needs
-- only the TRIGGER privilege, which the migrating role holds; hence SECURITY DEFINER,
-- for its owner alone. Returns the triggers it replaced.
CREATE FUNCTION pub.reattach_capture_triggers(source text) RETURNS SETOF text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e record;
BEGIN
    FOR e IN
        SELECT r.trigger_name, r.definition
        FROM pub.capture_triggers AS r
        LEFT JOIN pg_trigger AS t
               ON t.tgname = r.trigger_name
              AND t.tgrelid = (SELECT c.oid FROM pg_class AS c
                               JOIN pg_namespace AS n ON n.oid = c.relnamespace
                               WHERE n.nspname = (SELECT s.app_schema FROM pub.settings AS s)
                                 AND c.relname = r.table_name)
        WHERE r.table_name = source
          AND pg_get_triggerdef(t.oid) IS DISTINCT FROM r.definition
        ORDER BY 1
    LOOP
        EXECUTE regexp_replace(e.definition, '^CREATE TRIGGER ', 'CREATE OR REPLACE TRIGGER ');
        -- Recorded as Postgres prints it now (the same trigger, printed from a parse
        -- of the recorded text).
        UPDATE pub.capture_triggers AS r
        SET definition = (SELECT pg_get_triggerdef(t.oid) FROM pg_trigger AS t
                          JOIN pg_class AS c ON c.oid = t.tgrelid
                          JOIN pg_namespace AS n ON n.oid = c.relnamespace
                          WHERE n.nspname = (SELECT s.app_schema FROM pub.settings AS s)
                            AND c.relname = source AND t.tgname = e.trigger_name)
        WHERE r.table_name = source AND r.trigger_name = e.trigger_name;
        RETURN NEXT e.trigger_name::text;
    END LOOP;
END;
$$;

REVOKE ALL ON FUNCTION pub.reattach_capture_triggers(text) FROM PUBLIC;

-- Attached only when this role may (a superuser). The function runs as its owner,
-- handed to pubctl_capture where that role exists (it reads only the catalog and
-- pub.settings), so the guard never runs with a superuser's rights.
DO $guard$
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        RETURN;
    END IF;
    CREATE EVENT TRIGGER pub_guard_projected_columns ON ddl_command_end
        WHEN TAG IN ('ALTER TABLE')
        EXECUTE FUNCTION pub.guard_projected_columns();
    IF EXISTS (SELECT FROM pg_catalog.pg_proc AS p
               JOIN pg_catalog.pg_roles AS r ON r.oid = p.proowner
               WHERE p.oid = 'pub.capture_topic_insert()'::pg_catalog.regprocedure
                 AND r.rolname = 'pubctl_capture') THEN
        ALTER FUNCTION pub.guard_projected_columns() OWNER TO pubctl_capture;
    END IF;
END;
$guard$;

-- ===== 80_privileges.sql =====
-- Every privilege on pub and its objects that docs/operations.md documents, besides
-- what each object's owner holds. grantee '*' is any role (the feed reader's rights,
-- which an operator grants to the viewers' roles) and 'PUBLIC' is PUBLIC.
CREATE FUNCTION pub.documented_privileges()
    RETURNS TABLE (object text, grantee text, privilege text)
    LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT d.object, d.grantee, d.privilege
    FROM (VALUES
        -- A feed reader: USAGE on pub, EXECUTE on the feed, its identity and health.
        ('schema pub', '*', 'USAGE'),
        ('pub.feed(bigint,integer,text[])', '*', 'EXECUTE'),
        ('pub.feed_id()', '*', 'EXECUTE'),
        ('pub.health()', '*', 'EXECUTE'),
        -- The role the capture functions run as: what capture needs, nothing more.
        ('schema pub', 'pubctl_capture', 'USAGE'),
        ('pub.outbox', 'pubctl_capture', 'SELECT'),
        ('pub.outbox', 'pubctl_capture', 'INSERT'),
        ('pub.outbox', 'pubctl_capture', 'DELETE'),
        ('pub.settings', 'pubctl_capture', 'SELECT'),
        ('pub.publishing_epoch', 'pubctl_capture', 'SELECT'),
        ('pub.outbox_id_seq', 'pubctl_capture', 'USAGE'),
        ('pub.unpublished_writers', 'pubctl_capture', 'INSERT'),
        ('pub.unpublished_write_allowed()', 'pubctl_capture', 'EXECUTE'),
        ('pub.notify_outbox()', 'pubctl_capture', 'EXECUTE'),
        ('pub.capture_current_items(text,text[],bigint[])', 'pubctl_capture', 'EXECUTE')
    ) AS d(object, grantee, privilege)
    UNION ALL
    -- PUBLIC keeps EXECUTE on the functions that compute and check, the Postgres
    -- default for a function: reaching them takes USAGE on pub, and they change nothing.
    SELECT p.oid::pg_catalog.regprocedure::text, 'PUBLIC', 'EXECUTE'
    FROM pg_catalog.pg_proc AS p
    WHERE p.pronamespace = 'pub'::pg_catalog.regnamespace
      AND NOT p.prosecdef AND p.provolatile <> 'v'
      AND p.oid::pg_catalog.regprocedure::text NOT IN (
          'pub.apply_batch(integer)', 'pub.source_page_bound(text,bigint,integer)',
          'pub.source_projection(text,bigint,bigint)', 'pub.verify_range(text,bigint,bigint)');
END;

-- Every grant on pub or one of its objects that the list above does not document
-- (to whom, and whether with grant option). Owners' own rights are not grants.
CREATE FUNCTION pub.undocumented_grants()
    RETURNS TABLE (object text, kind text, grantee text, privilege text, grantable boolean)
    LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH objects AS (
        SELECT 'schema pub' AS object, 'SCHEMA' AS kind, n.nspowner AS owner,
               COALESCE(n.nspacl, pg_catalog.acldefault('n', n.nspowner)) AS acl
        FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'pub'
        UNION ALL
        SELECT c.oid::pg_catalog.regclass::text,
               CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.relowner,
               COALESCE(c.relacl, pg_catalog.acldefault(
                   CASE c.relkind WHEN 'S' THEN 's'::"char" ELSE 'r'::"char" END, c.relowner))
        FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = 'pub'::pg_catalog.regnamespace
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
        UNION ALL
        SELECT p.oid::pg_catalog.regprocedure::text, 'FUNCTION', p.proowner,
               COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner))
        FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'pub'::pg_catalog.regnamespace
    ), granted AS (
        SELECT o.object, o.kind, a.grantee, a.privilege_type AS privilege, a.is_grantable
        FROM objects AS o, pg_catalog.aclexplode(o.acl) AS a
        WHERE a.grantee <> o.owner
    ), named AS (
        SELECT g.*, CASE WHEN g.grantee = 0 THEN 'PUBLIC'
                         ELSE g.grantee::pg_catalog.regrole::text END AS role
        FROM granted AS g
    )
    SELECT n.object, n.kind, n.role, n.privilege, n.is_grantable
    FROM named AS n
    WHERE n.is_grantable
       OR NOT EXISTS (
              SELECT FROM pub.documented_privileges() AS d
              WHERE d.object = n.object AND d.privilege = n.privilege
                AND (d.grantee = n.role OR (d.grantee = '*' AND n.role <> 'PUBLIC')))
    ORDER BY 1, 3, 4;
END;

-- Revoke every undocumented grant (see above), and, on the objects this transaction
-- created or replaced, the rights the migrating role's default privileges handed out
-- even where they look like a reader's: a role the operator means to read the feed is
-- granted that right by name (or holds pubctl_feed_reader), not by a default. Run by
-- `pubctl migrate` at the end of every run, as the owner of pub.
CREATE FUNCTION pub.revoke_undocumented_grants() RETURNS integer
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    g record;
    revoked integer := 0;
BEGIN
    FOR g IN
        SELECT u.object, u.kind, u.grantee, u.privilege, u.grantable,
               EXISTS (SELECT FROM pub.documented_privileges() AS d
                       WHERE d.object = u.object AND d.privilege = u.privilege
                         AND (d.grantee = u.grantee
                              OR (d.grantee = '*' AND u.grantee <> 'PUBLIC'))) AS documented
        FROM pub.undocumented_grants() AS u
        UNION ALL
        SELECT f.object, f.kind, f.grantee, f.privilege, false, false
        FROM pub.default_privilege_grants() AS f
    LOOP
        EXECUTE format('REVOKE %s %s ON %s %s FROM %s CASCADE',
                       CASE WHEN g.documented THEN 'GRANT OPTION FOR' ELSE '' END,
                       g.privilege, g.kind,
                       CASE WHEN g.kind = 'SCHEMA' THEN 'pub' ELSE g.object END,
                       CASE WHEN g.grantee = 'PUBLIC' THEN 'PUBLIC'
                            ELSE quote_ident(g.grantee) END);
        revoked := revoked + 1;
    END LOOP;
    RETURN revoked;
END;
$$;

-- Grants that the migrating role's default privileges put on objects of pub this
-- transaction created or replaced (their catalog row is this transaction's), other
-- than the documented ones of pubctl_capture.
CREATE FUNCTION pub.default_privilege_grants()
    RETURNS TABLE (object text, kind text, grantee text, privilege text)
    LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH defaulted AS (
        SELECT DISTINCT a.grantee
        FROM pg_catalog.pg_default_acl AS d, pg_catalog.aclexplode(d.defaclacl) AS a
        WHERE d.defaclrole = (SELECT r.oid FROM pg_catalog.pg_roles AS r
                              WHERE r.rolname = CURRENT_USER)
          AND d.defaclnamespace IN (0, 'pub'::pg_catalog.regnamespace)
          AND a.grantee <> d.defaclrole
    ), fresh AS (
        SELECT 'schema pub' AS object, 'SCHEMA' AS kind, n.nspowner AS owner, n.nspacl AS acl
        FROM pg_catalog.pg_namespace AS n
        WHERE n.nspname = 'pub' AND n.xmin = pg_catalog.pg_current_xact_id()::xid
        UNION ALL
        SELECT c.oid::pg_catalog.regclass::text,
               CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.relowner, c.relacl
        FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = 'pub'::pg_catalog.regnamespace
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          AND c.xmin = pg_catalog.pg_current_xact_id()::xid
        UNION ALL
        SELECT p.oid::pg_catalog.regprocedure::text, 'FUNCTION', p.proowner, p.proacl
        FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'pub'::pg_catalog.regnamespace
          AND p.xmin = pg_catalog.pg_current_xact_id()::xid
    )
    SELECT f.object, f.kind,
           CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::pg_catalog.regrole::text END,
           a.privilege_type
    FROM fresh AS f, pg_catalog.aclexplode(f.acl) AS a
    WHERE a.grantee IN (SELECT d.grantee FROM defaulted AS d)
      AND a.grantee <> f.owner
      AND NOT EXISTS (SELECT FROM pub.documented_privileges() AS d
                      WHERE d.object = f.object AND d.privilege = a.privilege_type
                        AND d.grantee IN ('pubctl_capture', 'PUBLIC')
                        AND d.grantee = CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                             ELSE a.grantee::pg_catalog.regrole::text END);
END;

REVOKE ALL ON FUNCTION pub.revoke_undocumented_grants() FROM PUBLIC;
