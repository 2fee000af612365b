-- Revision 0103, down: back to the definitions of 0100 (the baseline).

SET LOCAL search_path = pg_catalog, pg_temp;

DROP FUNCTION pub.verify_rule_breaks(text, bigint, bigint);

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
        '(SELECT r.id FROM %I.%I AS r WHERE r.id > $1 ORDER BY r.id LIMIT $2) AS p',
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
          AND c.source_id > $2 AND ($3::bigint IS NULL OR c.source_id <= $3)
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
            WHERE r.id > $1 AND ($2::bigint IS NULL OR r.id <= $2)
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
            SELECT %3$s FROM %1$I.%2$I AS r WHERE r.id > $1 AND ($2 IS NULL OR r.id <= $2)
        ), expected AS MATERIALIZED (%4$s
        ), published AS (
            SELECT c.* FROM pub.content AS c
            WHERE c.kind = ANY ($3) AND c.source_id > $1 AND ($2 IS NULL OR c.source_id <= $2)
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
            WHERE o.kind = ANY ($3) AND o.source_id > $1 AND ($2 IS NULL OR o.source_id <= $2)
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
        '(SELECT t.id FROM %I.%I AS t WHERE t.id > $1 ORDER BY t.id LIMIT $2) AS page',
        (SELECT s.app_schema FROM pub.settings s), source)
    INTO rows_in_page, last_id
    USING after_id, page_size;
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
BEGIN
    RETURN QUERY EXECUTE format($q$
        WITH rows AS MATERIALIZED (
            SELECT %3$s FROM %1$I.%2$I AS r WHERE r.id > $1 AND ($2 IS NULL OR r.id <= $2)
        ), items AS (%4$s
        ), canonicals AS (
            SELECT i.source_id, jsonb_object_agg(i.kind, i.canonical) AS canonicals
            FROM items AS i GROUP BY i.source_id
        )
        SELECT r.id::bigint, to_jsonb(r), k.canonicals,
               (SELECT jsonb_object_agg(c.kind, c.payload_hash) FROM pub.content AS c
                WHERE c.kind = ANY ($3) AND c.source_id = r.id)
        FROM rows AS r
        JOIN canonicals AS k ON k.source_id = r.id
        ORDER BY r.id
    $q$, app, source, pub.source_select_list(source), pub.source_items_sql(source, 'rows'))
    USING lo, hi, kinds;
END;
$$;


-- A run recorded as starting before the first row resumes after the smallest bigint.
UPDATE pub.backfill_runs
SET after_id = COALESCE(after_id, -9223372036854775808),
    last_id = COALESCE(last_id, -9223372036854775808)
WHERE after_id IS NULL OR last_id IS NULL;

ALTER TABLE pub.backfill_runs ALTER COLUMN after_id SET NOT NULL,
                              ALTER COLUMN last_id SET NOT NULL;

ALTER TABLE pub.backfill_runs DROP COLUMN page_size;
