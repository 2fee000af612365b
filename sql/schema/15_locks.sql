-- Mutual exclusion that only pubctl's own roles can take part in.
--
-- Postgres checks no privilege on advisory locks: any role that can connect can take
-- any key, and a fixed, public key would let it stop the applier, a backfill, `enable`
-- or `migrate`. So pubctl locks objects of its own schema instead:
--
-- * One-at-a-time work inside a transaction locks an empty table of schema pub in a
--   mode that needs a privilege on it (LOCK TABLE in any mode but ACCESS SHARE needs
--   UPDATE, DELETE or TRUNCATE; ROW EXCLUSIVE needs INSERT). A role without USAGE on
--   pub cannot even name the table; the only lock anyone can take on a relation
--   without a privilege (ACCESS SHARE, through pg_relation_size(oid) and the like)
--   conflicts with none of these modes.
-- * Work that spans transactions (a backfill, a running worker) holds a lease: a row
--   of pub.leases naming its session and a session-level advisory lock on a key drawn
--   at random when the lease is taken. The lease is alive while that very session
--   holds that key: nobody can take the key first (it is unknown until then), holding
--   it later from another session proves nothing, and a session that dies drops it.
--
-- Every wait is bounded by the caller's lock_timeout, and pub.lock_holders names the
-- sessions (or prepared transactions, by gid) a wait is behind.

SET LOCAL search_path = pg_catalog, pg_temp;

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
    -- 'worker', or 'backfill:' and a source table (leases_name_check, 75_kinds_attach.sql)
    name       text NOT NULL,
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

REVOKE ALL ON FUNCTION pub.take_lease(text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.drop_lease(text) FROM PUBLIC;
