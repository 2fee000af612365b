-- Backfill: publishing rows that existed before capture (or changed while it was off).
--
-- One page is one call, one short transaction: it reads the next source rows by
-- keyset (id > after_id), enqueues their items through the same projection functions
-- the triggers use, and records its progress in pub.backfill_runs in the same
-- transaction, so a crash resumes exactly after the last committed page.
--
-- Safe beside live writes: the page reads its rows FOR SHARE. A writer already
-- updating one of them makes the page wait and then read the writer's version; a
-- writer coming later waits for the page to commit, so its outbox row gets the
-- larger id. Either way the newest outbox row of the item carries its newest payload.
-- (FOR KEY SHARE would not do: it does not conflict with an ordinary UPDATE.)

SET LOCAL search_path = pg_catalog, pg_temp;

CREATE TABLE pub.backfill_runs (
    source     text PRIMARY KEY CHECK (source IN ('study_topic', 'study_question')),
    after_id   bigint NOT NULL,              -- where the run started
    last_id    bigint NOT NULL,              -- the last source id of the last committed page
    rows_done  bigint NOT NULL DEFAULT 0,    -- source rows read so far
    enqueued   bigint NOT NULL DEFAULT 0,    -- outbox rows written so far
    state      text NOT NULL CHECK (state IN ('running', 'stopped', 'finished')),
    started_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE pub.backfill_runs IS
    'Progress of the latest backfill per source table, committed with each page: `pubctl backfill --resume` continues from last_id.';

-- Reads up to page_size source rows after after_id and enqueues:
-- * every live item's payload (the applier drops what is already published: churn 0);
-- * a tombstone for every item published live whose row is deleted, not ready, or gone
--   (rows deleted while publishing was off), including ids between and after the
--   page's rows, so that backfill plus apply always ends with nothing stale;
-- * with include_deleted, a tombstone for every non-live item of the page.
-- With dry_run nothing is written; the counts say what would be.
CREATE FUNCTION pub.backfill_page(
    source text, after_id bigint, page_size integer, include_deleted boolean, dry_run boolean,
    OUT rows_read integer, OUT last_id bigint, OUT enqueued integer
)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    app name := (SELECT s.app_schema FROM pub.settings s);
    items_sql text;
    kinds text[];
BEGIN
    IF page_size IS NULL OR page_size < 1 THEN
        RAISE EXCEPTION 'pubctl: page size must be a positive integer, got %', page_size
            USING ERRCODE = 'PB003', DETAIL = 'backfill_page reads at most page_size rows.',
                  HINT = 'Pass a page size of 1 or more.';
    END IF;
    IF source = 'study_topic' THEN
        kinds := '{topic}';
        items_sql := $q$
            SELECT 'topic' AS kind, p.id AS source_id,
                   pub.topic_canonical(p.id, p.name, p.exam_round_size, p.deleted_at) AS canonical
            FROM page AS p
        $q$;
    ELSIF source = 'study_question' THEN
        kinds := '{question,explanation}';
        items_sql := $q$
            SELECT 'question' AS kind, p.id AS source_id,
                   pub.question_canonical(p.id, p.topic_id, p.exam_name, p.exam_round, p.number,
                                          p.body, p.choices, p.answer, p.deleted_at) AS canonical
            FROM page AS p
            UNION ALL
            SELECT 'explanation', p.id,
                   pub.explanation_canonical(p.id, p.explanation, p.explanation_status,
                                             p.deleted_at)
            FROM page AS p
        $q$;
    ELSE
        RAISE EXCEPTION 'pubctl: unknown backfill source %', source
            USING ERRCODE = 'PB003', DETAIL = 'Sources are study_topic and study_question.',
                  HINT = 'Use `pubctl backfill topics|questions|all`.';
    END IF;

    EXECUTE format($q$
        WITH page AS MATERIALIZED (
            SELECT r.*
            FROM %1$I.%2$I AS r
            WHERE r.id > $1
            ORDER BY r.id
            LIMIT $2
            FOR SHARE
        ), bounds AS (
            SELECT count(*)::integer AS n, max(p.id) AS last_id,
                   -- The last page also owns every id after its last row.
                   CASE WHEN count(*) < $2 THEN NULL ELSE max(p.id) END AS upper_id
            FROM page AS p
        ), items AS MATERIALIZED (%3$s
        ), wanted AS MATERIALIZED (
            SELECT i.kind, i.source_id, i.canonical
            FROM items AS i
            WHERE i.canonical IS NOT NULL
               OR $3
               OR EXISTS (SELECT FROM pub.content AS c
                          WHERE (c.kind, c.source_id) = (i.kind, i.source_id) AND NOT c.deleted)
            UNION ALL
            -- Published live, but the source row is gone.
            SELECT c.kind, c.source_id, NULL
            FROM pub.content AS c, bounds AS b
            WHERE c.kind = ANY ($5) AND NOT c.deleted
              AND c.source_id > $1
              AND (b.upper_id IS NULL OR c.source_id <= b.upper_id)
              AND NOT EXISTS (SELECT FROM page AS p WHERE p.id = c.source_id)
        ), written AS (
            INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
            SELECT w.kind, w.source_id, pub.outbox_payload(w.canonical),
                   pub.outbox_payload_hash(w.canonical), pub.schema_version(), w.canonical IS NULL
            FROM wanted AS w
            WHERE NOT $4
            RETURNING 1
        )
        SELECT b.n, b.last_id, (SELECT count(*)::integer FROM wanted)
        FROM bounds AS b
    $q$, app, source, items_sql)
    INTO rows_read, last_id, enqueued
    USING after_id, page_size, include_deleted, dry_run, kinds;

    IF NOT dry_run THEN
        UPDATE pub.backfill_runs AS r
        SET last_id = COALESCE(backfill_page.last_id, r.last_id),
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
