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
