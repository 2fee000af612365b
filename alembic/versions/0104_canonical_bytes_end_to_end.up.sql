-- Revision 0104: canonical bytes from the trigger to the viewer, and a new rev for
-- every change a reader can see.
-- * The payload columns of pub.outbox and pub.content become json holding the RFC 8785
--   text the trigger built, so sha256(payload::text) is payload_hash; capture no longer
--   parses it into jsonb; pub.feed returns it as it is.
-- * apply_batch gives an item a new rev when its schema_version changes, as it does
--   when its payload_hash or deleted changes (before, a schema_version change was
--   written in place under the old rev, without a notification).
-- * verify_range compares stored payloads as text.
-- Locks (ACCESS EXCLUSIVE) and rewrites pub.content, then pub.outbox: feed readers and
-- the applier wait for the first; the application's writes wait only for the second
-- (the outbox backlog) and the rest of this transaction. docs/operations.md gives the
-- time measured at 1,000,000 items. Takes no lock on the application's tables.

SET LOCAL search_path = pg_catalog, pg_temp;

-- A stored payload's canonical text. Tombstones are {}. A live item's text is built
-- again from its jsonb through the projection functions the triggers use (jsonb kept
-- the values; only the spelling was lost), and kept only when it hashes to the stored
-- payload_hash, which was computed over the canonical text when the item was
-- captured. Anything else (a payload edited by hand, of an unknown shape) keeps its
-- jsonb text, which `pubctl verify` then reports as before.
CREATE FUNCTION pub.canonical_of_stored(
    kind text, payload jsonb, payload_hash text, deleted boolean
) RETURNS json
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    canonical text;
BEGIN
    IF deleted THEN
        RETURN payload::text::json;
    END IF;
    canonical := CASE kind
        WHEN 'topic' THEN pub.topic_canonical(
            (payload ->> 'topic_id')::bigint, payload ->> 'name',
            (payload ->> 'exam_round_size')::integer, NULL)
        WHEN 'question' THEN pub.question_canonical(
            (payload ->> 'question_id')::bigint, (payload ->> 'topic_id')::bigint,
            payload ->> 'exam_name', (payload ->> 'exam_round')::integer,
            (payload ->> 'number')::integer, payload ->> 'body', payload -> 'choices',
            (payload ->> 'answer')::integer, NULL)
        WHEN 'explanation' THEN pub.explanation_canonical(
            (payload ->> 'question_id')::bigint, payload ->> 'explanation', 'ready', NULL)
    END;
    IF pub.payload_hash(canonical) = payload_hash THEN
        RETURN canonical::json;
    END IF;
    RETURN payload::text::json;
EXCEPTION WHEN OTHERS THEN
    RETURN payload::text::json;
END;
$$;

-- pub.feed returns the payload as stored (json).
-- Dropped before the column changes type and created again after (its result type
-- changes, and it depends on the column): the EXECUTE grants operators gave their
-- viewers' roles are noted first and given again, so a viewer keeps reading. An object
-- of the operator's that depends on pub.feed (a view over it) makes this fail, naming
-- it: drop it first and create it again after.
SELECT pg_catalog.set_config('pubctl.feed_grants', COALESCE((
    SELECT pg_catalog.string_agg(
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.rolname) END
               || CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END, ',')
    FROM pg_catalog.pg_proc AS p
    CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) AS a
    LEFT JOIN pg_catalog.pg_roles AS r ON r.oid = a.grantee
    WHERE p.oid = 'pub.feed(bigint,integer,text[])'::pg_catalog.regprocedure
      AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner), ''), true);

DROP FUNCTION pub.feed(bigint, integer, text[]);

ALTER TABLE pub.content ALTER COLUMN payload TYPE json
    USING pub.canonical_of_stored(kind, payload, payload_hash, deleted);
ALTER TABLE pub.outbox ALTER COLUMN payload TYPE json
    USING pub.canonical_of_stored(kind, payload, payload_hash, deleted);

DROP FUNCTION pub.canonical_of_stored(text, jsonb, text, boolean);

DROP FUNCTION pub.outbox_payload(text);

CREATE FUNCTION pub.outbox_payload(canonical text) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT COALESCE(canonical, '{}')::json;
END;

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
                   WHEN (p.payload_hash, p.deleted, p.schema_version)
                        = (n.payload_hash, n.deleted, n.schema_version) THEN 'unchanged'
                   ELSE 'changed'
               END AS verdict
        FROM newest AS n
        LEFT JOIN pub.content AS p ON (p.kind, p.source_id) = (n.kind, n.source_id)
    ), bump AS (
        UPDATE pub.rev_counter AS r
        SET last_rev = r.last_rev + (SELECT count(*) FROM judged WHERE verdict = 'changed')
        WHERE EXISTS (SELECT FROM judged WHERE verdict = 'changed')
        RETURNING r.last_rev - (SELECT count(*) FROM judged WHERE verdict = 'changed') AS first_rev
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

CREATE FUNCTION pub.feed(after_rev bigint, max_rows integer DEFAULT 1000, kinds text[] DEFAULT NULL)
    RETURNS TABLE (
        rev bigint, kind text, pub_id uuid, source_id bigint, payload json,
        payload_hash text, schema_version integer, deleted boolean
    )
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT f.rev, f.kind, f.pub_id, f.source_id, f.payload, f.payload_hash,
           f.schema_version, f.deleted
    FROM (
        (SELECT c.* FROM pub.content AS c
         WHERE feed.kinds IS NULL AND c.rev > COALESCE(feed.after_rev, 0)
         ORDER BY c.rev LIMIT GREATEST(COALESCE(feed.max_rows, 1000), 0))
        UNION ALL
        (SELECT c.* FROM pub.content AS c
         WHERE 'topic' = ANY (feed.kinds) AND c.kind = 'topic'
           AND c.rev > COALESCE(feed.after_rev, 0)
         ORDER BY c.rev LIMIT GREATEST(COALESCE(feed.max_rows, 1000), 0))
        UNION ALL
        (SELECT c.* FROM pub.content AS c
         WHERE 'question' = ANY (feed.kinds) AND c.kind = 'question'
           AND c.rev > COALESCE(feed.after_rev, 0)
         ORDER BY c.rev LIMIT GREATEST(COALESCE(feed.max_rows, 1000), 0))
        UNION ALL
        (SELECT c.* FROM pub.content AS c
         WHERE 'explanation' = ANY (feed.kinds) AND c.kind = 'explanation'
           AND c.rev > COALESCE(feed.after_rev, 0)
         ORDER BY c.rev LIMIT GREATEST(COALESCE(feed.max_rows, 1000), 0))
    ) AS f
    ORDER BY f.rev
    LIMIT GREATEST(COALESCE(feed.max_rows, 1000), 0);
END;

REVOKE ALL ON FUNCTION pub.feed(bigint, integer, text[]) FROM PUBLIC;

DO $grants$
DECLARE
    grantee text;
BEGIN
    FOREACH grantee IN ARRAY pg_catalog.string_to_array(
        pg_catalog.current_setting('pubctl.feed_grants'), ',')
    LOOP
        EXECUTE 'GRANT EXECUTE ON FUNCTION pub.feed(bigint, integer, text[]) TO ' || grantee;
    END LOOP;
END
$grants$;

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
                   e.canonical AS want, pub.payload_hash(e.canonical) AS want_hash,
                   p.payload::text AS have, p.payload_hash AS have_hash,
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
                   FROM jsonb_each(j.want::jsonb) AS a
                   FULL JOIN jsonb_each(j.have::jsonb) AS b ON b.key = a.key
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
