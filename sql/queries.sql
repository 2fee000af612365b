-- Every query pubctl runs at run time, each under a "-- name: <name>" header.
-- Parameters are psycopg named placeholders.

-- name: source_columns
-- The columns of the application's tables, with their types, whether the column is
-- the whole primary key (and that key DEFERRABLE), what kind of table holds it, and
-- the tables it inherits from or is a partition of.
SELECT c.relname::text AS table_name,
       a.attname::text AS column_name,
       a.atttypid::regtype::text AS type_name,
       k.oid IS NOT NULL AS is_primary_key,
       COALESCE(k.condeferrable, false) AS deferrable_key,
       c.relkind::text AS relkind,
       EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhparent = c.oid) AS has_children,
       (SELECT string_agg(i.inhparent::pg_catalog.regclass::text, ', ' ORDER BY i.inhseqno)
        FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid) AS parents,
       c.relispartition AS is_partition
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_catalog.pg_constraint k
       ON k.conrelid = c.oid AND k.contype = 'p' AND k.conkey = ARRAY[a.attnum]
WHERE n.nspname = %(schema)s
  AND c.relname = ANY (%(tables)s)
  AND c.relkind IN ('r', 'p');

-- name: pub_version
-- The pubctl migration revision, or no row when pubctl was never installed here.
SELECT version_num
FROM pub.alembic_version;

-- name: has_version_table
SELECT pg_catalog.to_regclass('pub.alembic_version') IS NOT NULL;

-- name: settings
SELECT publishing_enabled, app_schema::text AS app_schema, changed_at
FROM pub.settings;

-- name: set_publishing
SELECT pub.set_publishing(%(enabled)s) AS epoch;

-- name: unpublished_writers_lock
-- Waits until no transaction that wrote while publishing was off is still open: each
-- holds pub.unpublished_writers ROW EXCLUSIVE until it ends
-- (pub.unpublished_write_allowed). Run with a lock_timeout; released at once.
LOCK TABLE pub.unpublished_writers IN SHARE MODE;

-- name: unpublished_writers
-- The sessions still holding that lock: open transactions that wrote while publishing
-- was off, and prepared ones (no session: named by gid). Their state and start are
-- visible with pg_read_all_stats (pg_monitor) or to their own role.
SELECT l.pid, l.gid, COALESCE(a.usename::text, x.owner::text) AS usename,
       a.application_name, a.state,
       EXTRACT(EPOCH FROM pg_catalog.now() - COALESCE(a.xact_start, x.prepared)) AS open_for_s
FROM pub.lock_holders('unpublished_writers') AS l
LEFT JOIN pg_catalog.pg_stat_activity AS a ON a.pid = l.pid
LEFT JOIN pg_catalog.pg_prepared_xacts AS x ON x.gid = l.gid
WHERE l.granted AND l.mode = 'RowExclusiveLock'
ORDER BY l.pid, l.gid;

-- name: read_committed
SET default_transaction_isolation = 'read committed';

-- name: capture_problems
SELECT subject, problem FROM pub.capture_problems();

-- name: has_settings_table
SELECT pg_catalog.to_regclass('pub.settings') IS NOT NULL;

-- name: published_state_summary
-- What a downgrade below pub.content would drop.
SELECT (SELECT count(*) FROM pub.content), (SELECT last_rev FROM pub.rev_counter);

-- name: feed_identity
-- The feed identity right after a migration.
SELECT feed_id::text FROM pub.rev_counter;

-- name: sample_schema_exists
SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = %(schema)s);

-- name: create_sample_schema
-- `pubctl init-sample-schema`, only when the schema does not exist yet ({schema} is an
-- identifier filled in by psycopg.sql).
CREATE SCHEMA {schema};

-- name: set_sample_search_path
SET LOCAL search_path TO {schema};

-- name: create_demo_database
-- `pubctl demo` on a given server ({name} filled in by psycopg.sql).
CREATE DATABASE {name};

-- name: drop_demo_database
DROP DATABASE IF EXISTS {name} WITH (FORCE);

-- name: migrate_lock
-- Serialises `pubctl migrate` runs: a lock on pubctl's own version table, which only
-- a role with a privilege on it can take (an advisory lock could be taken by anyone).
-- Created here, exactly as Alembic would, so that the very first run can lock it too;
-- run under the migration's lock_timeout.
CREATE TABLE IF NOT EXISTS pub.alembic_version (
    version_num VARCHAR(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
LOCK TABLE pub.alembic_version IN SHARE ROW EXCLUSIVE MODE;

-- name: lock_blockers
-- Who holds a lock that `pubctl migrate` waits for: on pubctl's version table or on
-- the application's tables (sessions, and prepared transactions by gid).
SELECT l.pid, x.gid, COALESCE(a.usename::text, x.owner::text) AS usename,
       a.application_name, a.state,
       EXTRACT(EPOCH FROM pg_catalog.now() - COALESCE(a.xact_start, x.prepared)) AS open_for_s,
       l.relation::pg_catalog.regclass::text AS relation, l.mode
FROM pg_catalog.pg_locks AS l
LEFT JOIN pg_catalog.pg_locks AS t
       ON l.pid IS NULL AND t.pid IS NULL AND t.locktype = 'transactionid'
      AND t.virtualtransaction = l.virtualtransaction
LEFT JOIN pg_catalog.pg_prepared_xacts AS x ON x.transaction = t.transactionid
LEFT JOIN pg_catalog.pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.granted
  AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d
                    WHERE d.datname = pg_catalog.current_database())
  AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid()
  AND l.relation IN (SELECT c.oid FROM pg_catalog.pg_class AS c
                     JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
                     WHERE (n.nspname = 'pub' AND c.relname = 'alembic_version')
                        OR (n.nspname = %(schema)s
                            AND c.relname = ANY (%(tables)s::text[])))
ORDER BY l.pid;

-- name: prepare_capture_role
-- Before a first install: the role the capture functions will belong to exists (when
-- this role may create it), and may own functions in schema pub for the length of this
-- run (PostgreSQL 15 wants CREATE on the schema of a function's new owner); the grant
-- is revoked again at the end of the run (revoke_capture_create).
DO $prepare$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles AS r WHERE r.rolname = 'pubctl_capture') THEN
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles AS r
                       WHERE r.rolname = CURRENT_USER AND (r.rolsuper OR r.rolcreaterole)) THEN
            RETURN;
        END IF;
        BEGIN
            CREATE ROLE pubctl_capture NOLOGIN NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- another database's migration created it meanwhile
        END;
    END IF;
    GRANT CREATE ON SCHEMA pub TO pubctl_capture;
END;
$prepare$;

-- name: revoke_capture_create
DO $revoke$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles AS r WHERE r.rolname = 'pubctl_capture')
       AND EXISTS (SELECT FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'pub') THEN
        REVOKE CREATE ON SCHEMA pub FROM pubctl_capture;
    END IF;
END;
$revoke$;

-- name: grant_feed_reader
-- The NOLOGIN role pubctl_feed_reader holds exactly a feed reader's rights, granted
-- again by every run (a reinstall creates new functions): a viewer's role that is a
-- member keeps reading. Created when this role may create roles; an existing one that
-- can log in or holds any right beyond NOLOGIN is left alone (someone could act as it).
DO $reader$
DECLARE
    reader record;
BEGIN
    SELECT r.* INTO reader FROM pg_catalog.pg_roles AS r WHERE r.rolname = 'pubctl_feed_reader';
    IF reader IS NULL THEN
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles AS r
                       WHERE r.rolname = CURRENT_USER AND (r.rolsuper OR r.rolcreaterole)) THEN
            RETURN;
        END IF;
        BEGIN
            CREATE ROLE pubctl_feed_reader NOLOGIN NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- another database's migration created it meanwhile
        END;
        SELECT r.* INTO reader FROM pg_catalog.pg_roles AS r
        WHERE r.rolname = 'pubctl_feed_reader';
    END IF;
    IF reader.rolcanlogin OR reader.rolsuper OR reader.rolcreaterole OR reader.rolcreatedb
       OR reader.rolreplication OR reader.rolbypassrls THEN
        RETURN;
    END IF;
    GRANT USAGE ON SCHEMA pub TO pubctl_feed_reader;
    GRANT EXECUTE ON FUNCTION pub.feed(bigint, integer, text[]), pub.feed_id(), pub.health()
        TO pubctl_feed_reader;
END;
$reader$;

-- name: feed_reader_granted
SELECT pg_catalog.has_function_privilege('pubctl_feed_reader',
                                         'pub.feed(bigint,integer,text[])', 'EXECUTE')
FROM pg_catalog.pg_roles AS r
WHERE r.rolname = 'pubctl_feed_reader';

-- name: has_privilege_reset
SELECT pg_catalog.to_regprocedure('pub.revoke_undocumented_grants()') IS NOT NULL;

-- name: revoke_undocumented_grants
SELECT pub.revoke_undocumented_grants();

-- name: set_migration_app_schema
SELECT pg_catalog.set_config('pubctl.app_schema', %(app_schema)s, true);

-- name: create_pub_schema
-- Bootstraps the schema that holds Alembic's version table; the baseline fills it.
CREATE SCHEMA IF NOT EXISTS pub;

-- name: drop_pub_schema
-- At base: without CASCADE, so objects pubctl did not create make the downgrade fail.
DROP TABLE IF EXISTS pub.alembic_version;
DROP SCHEMA IF EXISTS pub;

-- name: apply_batch
SELECT consumed, changed, unchanged, dropped
FROM pub.apply_batch(%(batch_size)s);

-- name: feed_id
SELECT pub.feed_id()::text;

-- name: worker_presence_lock
-- A lease held by every running `pubctl worker` for its session, so that status can
-- count them (sql/schema/15_locks.sql).
SELECT taken FROM pub.take_lease('worker', false);

-- name: listen_outbox
LISTEN pubctl_outbox;

-- name: status_publishing
-- Backlog, revs, items and capture in one round trip.
SELECT
    (SELECT count(*) FROM pub.outbox) AS backlog,
    (SELECT EXTRACT(EPOCH FROM pg_catalog.now() - min(created_at)) FROM pub.outbox)
        AS oldest_backlog_age_s,
    (SELECT last_rev FROM pub.rev_counter) AS last_rev,
    (SELECT feed_id::text FROM pub.rev_counter) AS feed_id,
    -- Since the newest rev was published: grows on an idle system, so it tells nothing
    -- alone; outbox_oldest_age_s is the one that grows when the applier is stuck.
    (SELECT EXTRACT(EPOCH FROM pg_catalog.now() - max(updated_at)) FROM pub.content)
        AS last_published_age_s,
    (SELECT pg_catalog.jsonb_object_agg(kind, jsonb_build_object('live', live, 'tombstones', tombstones))
     FROM (SELECT kind, count(*) FILTER (WHERE NOT deleted) AS live,
                  count(*) FILTER (WHERE deleted) AS tombstones
           FROM pub.content GROUP BY kind) k) AS items,
    (SELECT count(*) FROM pub.lock_holders('worker') AS l WHERE l.granted) AS workers,
    -- Since a running worker last ran a statement (a batch, or a poll of an empty
    -- outbox): the worker polls every few seconds, so a large value means it is wedged.
    -- Visible for the worker's own role, or with pg_read_all_stats.
    (SELECT EXTRACT(EPOCH FROM pg_catalog.now() - max(CASE WHEN a.state = 'idle'
                                                        THEN a.state_change
                                                        ELSE pg_catalog.now() END))
     FROM pub.lock_holders('worker') AS l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
     WHERE l.granted AND a.state IS NOT NULL) AS worker_last_active_s,
    (SELECT count(*) FROM pub.lock_holders('applier') AS l WHERE l.granted) AS applying,
    -- Open transactions that have written to the outbox (or run a statement whose
    -- capture trigger could): their rows are invisible to the applier until they
    -- commit, so a session left idle in transaction is publishing lag that no backlog
    -- count can show. Writing the outbox takes ROW EXCLUSIVE on it until the
    -- transaction ends; the applier and backfill pages hold it briefly too.
    -- xact_start of other roles' sessions needs pg_read_all_stats (pg_monitor).
    (SELECT count(*) FROM pg_catalog.pg_locks l
     WHERE l.locktype = 'relation' AND l.relation = 'pub.outbox'::pg_catalog.regclass
       AND l.database = (SELECT oid FROM pg_catalog.pg_database
                         WHERE datname = pg_catalog.current_database())
       AND l.mode = 'RowExclusiveLock' AND l.granted
       AND l.pid <> pg_catalog.pg_backend_pid()) AS open_writers,
    (SELECT EXTRACT(EPOCH FROM pg_catalog.now() - min(a.xact_start))
     FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'relation' AND l.relation = 'pub.outbox'::pg_catalog.regclass
       AND l.database = (SELECT oid FROM pg_catalog.pg_database
                         WHERE datname = pg_catalog.current_database())
       AND l.mode = 'RowExclusiveLock' AND l.granted
       AND l.pid <> pg_catalog.pg_backend_pid()) AS oldest_open_writer_age_s;

-- name: backfill_lock
-- One backfill per source table at a time: a lease for this session, released on
-- disconnect (sql/schema/15_locks.sql). holder: the session of the running one.
SELECT taken, holder FROM pub.take_lease('backfill:' || %(source)s, true);

-- name: backfill_unlock
SELECT pub.drop_lease('backfill:' || %(source)s);

-- name: applier_holders
-- The sessions an apply batch waits behind.
SELECT l.pid, a.usename::text AS usename, a.application_name, a.state
FROM pub.lock_holders('applier') AS l
LEFT JOIN pg_catalog.pg_stat_activity AS a ON a.pid = l.pid
WHERE l.granted;

-- name: prepared_transactions
-- Whether this server allows two-phase commit, and how many prepared transactions of
-- this database wait for COMMIT/ROLLBACK PREPARED (information for status).
SELECT pg_catalog.current_setting('max_prepared_transactions')::integer AS max_prepared,
       (SELECT count(*) FROM pg_catalog.pg_prepared_xacts AS x
        WHERE x.database = pg_catalog.current_database()) AS prepared_now;

-- name: backfill_run
SELECT after_id, last_id, rows_done, enqueued, state, page_size
FROM pub.backfill_runs
WHERE source = %(source)s;

-- name: backfill_start
INSERT INTO pub.backfill_runs AS r (source, after_id, last_id, state, page_size)
VALUES (%(source)s, %(after_id)s, %(after_id)s, 'running', %(page_size)s)
ON CONFLICT (source) DO UPDATE
SET after_id = EXCLUDED.after_id, last_id = EXCLUDED.last_id, rows_done = 0, enqueued = 0,
    state = 'running', started_at = pg_catalog.now(), updated_at = pg_catalog.now(),
    page_size = EXCLUDED.page_size;

-- name: backfill_resume
UPDATE pub.backfill_runs SET state = 'running', updated_at = pg_catalog.now()
WHERE source = %(source)s;

-- name: backfill_set_state
UPDATE pub.backfill_runs SET state = %(state)s, updated_at = pg_catalog.now()
WHERE source = %(source)s;

-- name: backfill_page
SELECT rows_read, last_id, enqueued, finished
FROM pub.backfill_page(%(source)s, %(after_id)s, %(page_size)s, %(include_deleted)s, %(dry_run)s);

-- name: backfill_estimate
-- Rows left to read, estimated from the planner's statistics (exact counts cost a scan).
SELECT GREATEST(c.reltuples, 0)::bigint
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(source)s;

-- name: outbox_backlog_at_least
-- Whether the outbox holds more than %(limit)s rows, without counting all of them.
SELECT count(*) > %(limit)s FROM (SELECT 1 FROM pub.outbox LIMIT %(limit)s + 1) s;

-- name: verify_page_bound
SELECT rows_in_page, last_id FROM pub.source_page_bound(%(source)s, %(after_id)s, %(page_size)s);

-- name: verify_range
SELECT kind, source_id, category, pending, detail
FROM pub.verify_range(%(source)s, %(lo)s, %(hi)s);

-- name: verify_source_projection
-- Canonical texts come back as text inside jsonb strings, compared byte for byte.
SELECT source_id, row_data::text, canonicals::text, published_hashes::text
FROM pub.source_projection(%(source)s, %(lo)s, %(hi)s);

-- name: verify_rule_breaks
-- The items of a range whose projection breaks the payload rules, and the rule each
-- breaks (only asked for a range whose comparison raised PB001).
SELECT kind, source_id, rule FROM pub.verify_rule_breaks(%(source)s, %(lo)s, %(hi)s);

-- name: verify_content_items
-- Stored payloads (as text: exact numbers) of the items verify flagged in a range.
SELECT c.kind, c.source_id, c.payload::text, c.payload_hash
FROM pub.content AS c
JOIN unnest(%(kinds)s::text[], %(source_ids)s::bigint[]) AS i(kind, source_id)
  ON (c.kind, c.source_id) = (i.kind, i.source_id);

-- name: tombstone_hash
SELECT pub.payload_hash('{}');

-- name: verify_pending
SELECT count(*) FROM pub.outbox WHERE kind = ANY (%(kinds)s);

-- name: set_lock_timeout
SELECT pg_catalog.set_config('lock_timeout', %(ms)s, true);

-- name: feed_page_items
-- `pubctl serve` and `pubctl feed`: the feed identity and one page, in one statement so
-- both come from one snapshot (a page is never taken for part of a published state it
-- does not belong to), always one row: feed_id, the number of items, the last item's
-- rev (NULL when none), has_more, and the items already written as JSON, joined by the
-- separator asked for ("," for serve's body, a newline for the CLI's lines; NULL when
-- none).
-- This is the one definition of an item's JSON form: the fields of pub.feed in its
-- column order, the payload as its stored canonical text (the bytes payload_hash was
-- computed from, never re-encoded), strings through to_json (the escapes of Python's
-- json.dumps with ensure_ascii=False), no spaces. pub.feed is asked for one row more
-- than the limit: that row only tells has_more and is not among the items.
-- A page also stops before its payloads would pass max_bytes (the octet_length of
-- their text), but always holds at least one item: no page comes near the 1 GB a
-- text value may hold, whatever the payloads, and a reader always moves on. The items kept are a prefix of the rows read, so has_more
-- is "a row was left out".
SELECT pub.feed_id()::text AS feed_id,
       count(*) FILTER (WHERE p.kept) AS item_count,
       max(p.rev) FILTER (WHERE p.kept) AS last_rev,
       count(*) FILTER (WHERE NOT p.kept) > 0 AS has_more,
       string_agg(
           '{"rev":' || p.rev::text
           || ',"kind":' || to_json(p.kind)::text
           || ',"pub_id":"' || p.pub_id::text
           || '","source_id":' || p.source_id::text
           || ',"payload":' || p.payload::text
           || ',"payload_hash":' || to_json(p.payload_hash)::text
           || ',"schema_version":' || p.schema_version::text
           || CASE WHEN p.deleted THEN ',"deleted":true}' ELSE ',"deleted":false}' END,
           %(separator)s ORDER BY p.rev
       ) FILTER (WHERE p.kept) AS items
FROM (SELECT f.*,
             row_number() OVER w <= %(limit)s
             AND (row_number() OVER w = 1
                  OR sum(octet_length(f.payload::text)) OVER w <= %(max_bytes)s) AS kept
      FROM pub.feed(%(after_rev)s, %(limit)s + 1, %(kinds)s) AS f
      WINDOW w AS (ORDER BY f.rev ROWS UNBOUNDED PRECEDING)) AS p;

-- name: serve_feed_page
-- `pubctl serve`'s page: feed_page_items (serve puts its text in the marker in braces)
-- and, from the same snapshot (one statement; pub.health is STABLE, so it reads the
-- statement's snapshot), the database's pubctl revision and last rev. Serve keeps a
-- page only when that head is the one it knows: a page read from a newer state than
-- the kept pages is never served beside them. A separate query because `pubctl feed`'s
-- readers need not have EXECUTE on pub.health.
SELECT p.*, h.revision, h.last_rev AS head_rev
FROM ({feed_page_items}) AS p, pub.health() AS h;

-- name: serve_health
-- `pubctl serve`'s health: a reader role may call pub.health() and nothing else.
SELECT revision, feed_id::text, last_rev
FROM pub.health();

-- name: listen_published
-- Sent by each apply batch that published something, when it commits (payload: the new
-- last rev): what `pubctl serve`'s long-polls wait for.
LISTEN pubctl_published;

-- name: serve_health_replay
-- `pubctl serve`'s health and head re-reads: pub.health(), and whether the server is a
-- standby in recovery, how far its replay is behind and whether WAL still streams in
-- (NULL on a primary). The replay functions and pg_stat_wal_receiver are open to
-- PUBLIC, so a feed reader may read them. The lag is 0 while everything received is
-- replayed (an idle primary sends no commits, and the age of the last replayed one
-- would grow with nothing to catch up), else the age of the last replayed commit.
SELECT h.revision, h.feed_id::text, h.last_rev, r.replica, r.replay_lag_s, r.replay_lag_bytes,
       r.streaming
FROM pub.health() AS h,
     (SELECT pg_catalog.pg_is_in_recovery() AS replica,
             CASE WHEN NOT pg_catalog.pg_is_in_recovery() THEN NULL
                  WHEN pg_catalog.pg_last_wal_receive_lsn() <= pg_catalog.pg_last_wal_replay_lsn()
                  THEN 0.0
                  ELSE GREATEST(EXTRACT(EPOCH FROM pg_catalog.now()
                                - pg_catalog.pg_last_xact_replay_timestamp())::float8, 0.0)
             END AS replay_lag_s,
             CASE WHEN pg_catalog.pg_is_in_recovery()
                  THEN GREATEST(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(),
                                                           pg_catalog.pg_last_wal_replay_lsn()), 0)::bigint
             END AS replay_lag_bytes,
             -- Whether WAL still comes in: a standby cut off from its primary has
             -- replayed all it received (lag 0) and falls behind unseen.
             CASE WHEN pg_catalog.pg_is_in_recovery()
                  THEN EXISTS (SELECT FROM pg_catalog.pg_stat_wal_receiver)
             END AS streaming) AS r;

-- name: replay_position
-- `pubctl serve` and `pubctl feed --follow` on a standby, which cannot LISTEN: whether
-- recovery still runs (false once promoted), how far WAL was replayed, and the replay
-- lag as serve_health_replay computes it; read a few times a second, no table touched.
-- Only when the position moved is the feed or its head read again.
SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.pg_last_wal_replay_lsn()::text,
       CASE WHEN NOT pg_catalog.pg_is_in_recovery() THEN NULL
            WHEN pg_catalog.pg_last_wal_receive_lsn() <= pg_catalog.pg_last_wal_replay_lsn()
            THEN 0.0
            ELSE GREATEST(EXTRACT(EPOCH FROM pg_catalog.now()
                          - pg_catalog.pg_last_xact_replay_timestamp())::float8, 0.0)
       END;
