-- Back to 0007: no feed identity, no health function, no notification per batch, and
-- the feed filtered by kind as a scan of the rev index (as 0004 wrote them).

SET LOCAL search_path = pg_catalog, pg_temp;

DROP FUNCTION pub.health();
DROP FUNCTION pub.feed_id();
ALTER TABLE pub.rev_counter DROP COLUMN feed_id;
DROP INDEX pub.content_topic_rev_idx;
DROP INDEX pub.content_question_rev_idx;
DROP INDEX pub.content_explanation_rev_idx;
CREATE INDEX content_kind_rev_idx ON pub.content (kind, rev);

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
    -- "pubctl" in ASCII, then 0002: one applier at a time.
    PERFORM pg_advisory_xact_lock(8103491283817594882);

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
END;
$$;

CREATE OR REPLACE FUNCTION pub.feed(after_rev bigint, max_rows integer DEFAULT 1000, kinds text[] DEFAULT NULL)
    RETURNS TABLE (
        rev bigint, kind text, pub_id uuid, source_id bigint, payload jsonb,
        payload_hash text, schema_version integer, deleted boolean
    )
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT c.rev, c.kind, c.pub_id, c.source_id, c.payload, c.payload_hash,
           c.schema_version, c.deleted
    FROM pub.content AS c
    WHERE c.rev > COALESCE(feed.after_rev, 0)
      AND (feed.kinds IS NULL OR c.kind = ANY (feed.kinds))
    ORDER BY c.rev
    LIMIT GREATEST(COALESCE(feed.max_rows, 1000), 0);
END;
