-- Revision 0008 (frozen): feed identity, health, a wake-up per applied batch, and a
-- kind-filtered feed that reads index ranges.

SET LOCAL search_path = pg_catalog, pg_temp;

-- The identity of the published state. It lives beside the rev counter: both are born
-- with pub.content, so a viewer whose saved feed_id differs knows its cursor belongs
-- to a published state that no longer exists and starts again from rev 0. (Databases
-- upgraded to this revision get theirs now; a downgrade below 0008 and back gives a
-- new one, which only makes viewers re-read.)
ALTER TABLE pub.rev_counter
    ADD COLUMN feed_id uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid();

CREATE FUNCTION pub.feed_id() RETURNS uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT r.feed_id FROM pub.rev_counter AS r;
END;

REVOKE ALL ON FUNCTION pub.feed_id() FROM PUBLIC;

-- What a health check needs, for a role that may read the feed and nothing else:
-- the migration revision (compared with the revision the reader's code expects), the
-- feed identity and the last rev. Read-only; plpgsql so that it may name
-- pub.alembic_version, which Alembic creates, not this file.
CREATE FUNCTION pub.health(OUT revision text, OUT feed_id uuid, OUT last_rev bigint)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT v.version_num INTO revision FROM pub.alembic_version AS v;
    SELECT r.feed_id, r.last_rev INTO feed_id, last_rev FROM pub.rev_counter AS r;
END;
$$;

REVOKE ALL ON FUNCTION pub.health() FROM PUBLIC;

-- Roles that read the feed keep reading it: they get the two new functions too.
DO $grant$
DECLARE
    reader name;
BEGIN
    FOR reader IN
        SELECT DISTINCT r.rolname
        FROM pg_catalog.pg_proc AS p,
             LATERAL pg_catalog.aclexplode(p.proacl) AS a
             JOIN pg_catalog.pg_roles AS r ON r.oid = a.grantee
        WHERE p.oid = 'pub.feed(bigint, integer, text[])'::pg_catalog.regprocedure
          AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION pub.feed_id(), pub.health() TO %I', reader);
    END LOOP;
END;
$grant$;

-- The applier wakes whoever waits for new revs (`pubctl serve`'s long-polls) when a
-- batch that published something commits: the notification is delivered at commit,
-- and its payload is the new last rev. (The outbox's own notification fires when a
-- writer commits, before anything is published, so it cannot be that signal.)
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

    IF changed > 0 THEN
        PERFORM pg_notify('pubctl_published', (SELECT r.last_rev::text FROM pub.rev_counter AS r));
    END IF;
END;
$$;

-- The feed, filtered by kind as index ranges: one partial rev index per kind, so that a
-- page of a kind is one ordered range of its own index, merged by rev with the other
-- wanted kinds'. (With one (kind, rev) index the planner preferred the rev index plus a
-- filter for kinds its statistics call common, which walks every other kind's revs
-- when the recent ones are mostly of another kind; a partial index is always cheaper
-- than that filter, so it is always chosen.) Each row is in exactly one of them, so
-- the applier writes as many index entries as before. Without kinds the feed is one
-- range of the rev index. Each branch is switched on or off by the parameters alone (a
-- one-time filter), so one plan serves every call. The three kinds are the ones
-- pub.content's CHECK constraint allows.
DROP INDEX pub.content_kind_rev_idx;
CREATE INDEX content_topic_rev_idx ON pub.content (rev) WHERE kind = 'topic';
CREATE INDEX content_question_rev_idx ON pub.content (rev) WHERE kind = 'question';
CREATE INDEX content_explanation_rev_idx ON pub.content (rev) WHERE kind = 'explanation';

CREATE OR REPLACE FUNCTION pub.feed(after_rev bigint, max_rows integer DEFAULT 1000, kinds text[] DEFAULT NULL)
    RETURNS TABLE (
        rev bigint, kind text, pub_id uuid, source_id bigint, payload jsonb,
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
