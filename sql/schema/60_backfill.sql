-- Backfill: publishing rows that existed before capture (or changed while it was off).
--
-- One page is one call, one short transaction: it reads the next source rows by
-- keyset (id > after_id, or from the first row), enqueues their items through the same
-- projection functions the triggers use, and records its progress in pub.backfill_runs
-- in the same transaction, so a crash resumes exactly after the last committed page.
--
-- Safe beside live writes: the page reads its rows FOR SHARE. A writer already
-- updating one of them makes the page wait and then read the writer's version; a
-- writer coming later waits for the page to commit, so its outbox row gets the
-- larger id. Either way the newest outbox row of the item carries its newest payload.
-- (FOR KEY SHARE would not do: it does not conflict with an ordinary UPDATE.)

SET LOCAL search_path = pg_catalog, pg_temp;

CREATE TABLE pub.backfill_runs (
    source     text PRIMARY KEY,  -- a source table (backfill_runs_source_check, 75_kinds_attach.sql)
    after_id   bigint,                       -- where the run started (NULL: before the first row)
    last_id    bigint,                       -- the last source id of the last committed page
                                             -- (NULL: before the first row, none read yet)
    rows_done  bigint NOT NULL DEFAULT 0,    -- source rows read so far
    enqueued   bigint NOT NULL DEFAULT 0,    -- outbox rows written so far
    state      text NOT NULL CHECK (state IN ('running', 'stopped', 'finished')),
    started_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    page_size  integer CHECK (page_size > 0)  -- the run's page size, for --resume
);

COMMENT ON TABLE pub.backfill_runs IS
    'Progress of the latest backfill per source table, committed with each page: `pubctl backfill --resume` continues from last_id.';

-- One page of a backfill, in one transaction (READ COMMITTED, which the page checks):
--
-- 1. Its bounds come from an unlocked keyset read: the ids of the next page_size rows
--    after after_id. The page covers (after_id, upper], upper being the last of those
--    ids, or no bound at all when fewer rows remain (the last page owns every id after
--    after_id). after_id NULL starts before the first row: every id is read, the
--    smallest bigint too.
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
-- the checkpoint, the last id the page covered (the next page starts after it; NULL
-- when the page started before the first row and covered none);
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
        '(SELECT r.id FROM %I.%I AS r WHERE ($1::bigint IS NULL OR r.id > $1) '
        'ORDER BY r.id LIMIT $2) AS p',
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
          AND ($2::bigint IS NULL OR c.source_id > $2)
          AND ($3::bigint IS NULL OR c.source_id <= $3)
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
            WHERE ($1::bigint IS NULL OR r.id > $1) AND ($2::bigint IS NULL OR r.id <= $2)
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
