-- Revision 0103: verify reads every row and judges only what is published.
-- * Verify and backfill read every id of a source, the smallest bigint too: their
--   first page starts before the first row (a NULL bound) instead of after -2^63 or 0;
--   pub.backfill_runs records such a start as NULL.
-- * pub.source_projection hands the Python reference only what a row publishes (the
--   id and deleted_at of every row, the other columns while it is live, the
--   explanation while it is ready): unpublished text is neither read nor shipped.
-- * pub.verify_rule_breaks names the items of a range that break the payload rules,
--   so that verify reports them as `invalid` and compares the rest of the range.
-- * pub.backfill_runs records each run's page size (page_size), for --resume.
-- Replaces four functions, adds one, and lets two columns of pub.backfill_runs be
-- NULL; takes no lock on the application's tables.

SET LOCAL search_path = pg_catalog, pg_temp;

ALTER TABLE pub.backfill_runs ALTER COLUMN after_id DROP NOT NULL,
                              ALTER COLUMN last_id DROP NOT NULL;

-- The page size a run was started with, so that --resume goes on with it.
ALTER TABLE pub.backfill_runs ADD COLUMN page_size integer CHECK (page_size > 0);

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
CREATE OR REPLACE FUNCTION pub.backfill_page(
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

-- Like backfill, verify reads only the projected columns, checks their types first
-- (pub.require_source), and runs with row-level security off: it must see every
-- row, and never run code of the table owner's making as the operator.
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
                   e.canonical::jsonb AS want, pub.payload_hash(e.canonical) AS want_hash,
                   p.payload AS have, p.payload_hash AS have_hash,
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
                   FROM jsonb_each(j.want) AS a
                   FULL JOIN jsonb_each(j.have) AS b ON b.key = a.key
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

-- The upper bound of the next keyset page of a source table: the id of its
-- page_size-th row after after_id (after_id NULL: from the first row), and how many
-- rows the page has.
CREATE OR REPLACE FUNCTION pub.source_page_bound(
    source text, after_id bigint, page_size integer, OUT rows_in_page integer, OUT last_id bigint
)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    SET row_security = off
AS $$
BEGIN
    PERFORM pub.require_source(source);
    EXECUTE format(
        'SELECT count(*)::integer, max(id)::bigint FROM '
        '(SELECT t.id FROM %I.%I AS t WHERE ($1 IS NULL OR t.id > $1) ORDER BY t.id LIMIT $2) '
        'AS page',
        (SELECT s.app_schema FROM pub.settings s), source)
    INTO rows_in_page, last_id
    USING after_id, page_size;
END;
$$;

-- The source rows of a range, each with its items' canonical text from the SQL
-- projection and their published hashes: what the Python reference projection and its
-- own RFC 8785 hashes are held against. row_data holds what the reference needs to judge
-- what the row publishes, and nothing it does not publish: the id and deleted_at of
-- every row; the other projected columns only while the row is live; the explanation
-- only while it is 'ready'; of explanation_status (a liveness input, never published)
-- at most 64 characters, which tells 'ready' from anything else. So a huge draft
-- explanation, or anything in a soft-deleted row, is neither read nor shipped.
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
            SELECT i.source_id, jsonb_object_agg(i.kind, i.canonical) AS canonicals
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

-- The items of a range (lo, hi] whose projection breaks the payload rules (the error
-- PB001 that capture and backfill raise for them), each with the rule it names. verify
-- calls it only for a range whose comparison raised that error. Each kind is projected
-- on its own (a question with bad choices may still have a good explanation), over all
-- the range's rows and then over halves of the failing ones, each try in a
-- subtransaction of its own: k such rows among n cost about 2k * log2(n) small
-- projections per kind.
CREATE FUNCTION pub.verify_rule_breaks(source text, lo bigint, hi bigint)
    RETURNS TABLE (kind text, source_id bigint, rule text)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    SET row_security = off
AS $$
DECLARE
    app name := (SELECT s.app_schema FROM pub.settings s);
    kinds text[] := pub.require_source(source);
    ids bigint[];
    probe text;
    one_kind text;
    todo integer[];  -- pairs of positions in ids: the slices still to try
    first integer;
    last integer;
    message text;
    detail text;
BEGIN
    EXECUTE format(
        'SELECT COALESCE(array_agg(r.id::bigint ORDER BY r.id), ''{}'') FROM %I.%I AS r '
        'WHERE ($1 IS NULL OR r.id > $1) AND ($2 IS NULL OR r.id <= $2)', app, source)
    INTO ids
    USING lo, hi;
    -- The other kinds' projection is never evaluated: the kind filter is a constant
    -- in each branch of the items' UNION ALL.
    probe := format($q$
        WITH rows AS MATERIALIZED (
            SELECT %3$s FROM %1$I.%2$I AS r WHERE r.id = ANY ($1)
        )
        SELECT count(i.canonical) FROM (%4$s) AS i WHERE i.kind = $2
    $q$, app, source, pub.source_select_list(source), pub.source_items_sql(source, 'rows'));
    FOREACH one_kind IN ARRAY kinds LOOP
        todo := ARRAY[1, cardinality(ids)];
        WHILE cardinality(todo) > 0 LOOP
            first := todo[cardinality(todo) - 1];
            last := todo[cardinality(todo)];
            todo := todo[1:cardinality(todo) - 2];
            CONTINUE WHEN first > last;
            BEGIN
                EXECUTE probe USING ids[first:last], one_kind;
            EXCEPTION WHEN SQLSTATE 'PB001' THEN
                IF first = last THEN
                    GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
                    kind := one_kind;
                    source_id := ids[first];
                    rule := COALESCE(substring(detail FROM 'rule=(.*)$'), message);
                    RETURN NEXT;
                ELSE
                    -- Both halves, the lower one tried first.
                    todo := todo || ARRAY[(first + last) / 2 + 1, last, first, (first + last) / 2];
                END IF;
            END;
        END LOOP;
    END LOOP;
END;
$$;

REVOKE ALL ON FUNCTION pub.verify_rule_breaks(text, bigint, bigint) FROM PUBLIC;
