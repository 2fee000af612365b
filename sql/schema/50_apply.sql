-- The published state and the applier that moves the outbox into it.
--
-- One applier at a time: apply_batch locks pub.applier_lock for its transaction, so
-- revs are handed out by one transaction at a time and become visible all at once,
-- in increasing order, when it commits. A feed reader asking for rev > cursor can
-- therefore never see rev n+1 while rev n is still invisible: no rev is skipped
-- because a transaction committed late. (Postgres makes a commit visible before it
-- releases the transaction's locks, so the next applier already sees it.)
--
-- Per item, outbox ids follow commit order: two writes of one row are serialised by
-- the row lock, so the later one gets the larger outbox id. Taking the newest outbox
-- row per item therefore never goes back to an older payload.

SET LOCAL search_path = pg_catalog, pg_temp;

CREATE TABLE pub.content (
    kind           text NOT NULL,  -- a defined kind (content_kind_check, 75_kinds_attach.sql)
    source_id      bigint NOT NULL,
    pub_id         uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    rev            bigint NOT NULL UNIQUE,
    payload        json NOT NULL,  -- the canonical text, as the outbox row carried it
    payload_hash   text NOT NULL,
    schema_version integer NOT NULL,
    deleted        boolean NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (kind, source_id)
);

COMMENT ON TABLE pub.content IS
    'The published state: one row per item, its newest payload or tombstone and the rev of its last real change. Read it through pub.feed().';

-- A feed filtered by kind reads its kinds' ranges of a partial rev index per kind,
-- content_<kind>_rev_idx (rendered with pub.feed into 75_kinds_attach.sql).

-- The one counter revs come from, across all kinds. A row, not a sequence: it is
-- transactional, so a failed batch leaves no gap, and updating it is one more
-- guarantee that two batches never interleave.
--
-- feed_id is the identity of the published state, born with it: a viewer whose saved
-- feed_id differs knows its cursor belongs to a published state that no longer
-- exists, and starts again from rev 0.
CREATE TABLE pub.rev_counter (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_rev  bigint NOT NULL DEFAULT 0,
    feed_id   uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid()
);

INSERT INTO pub.rev_counter DEFAULT VALUES;

-- The churn decision lives here, in one statement: take up to max_rows outbox rows
-- in id order, keep the newest per item, and write only items where something a
-- reader sees differs from what is published: payload_hash, deleted or
-- schema_version. Each such item gets a new rev; an item whose three are equal keeps
-- its rev (churn 0). So nothing a reader can see ever changes under an old rev: a page
-- of the feed is a pure function of the request and the last rev, and may be cached
-- (a payload republished under a newer schema_version is a change too: a reader that
-- keys on schema_version learns of it). A tombstone for an item that was never
-- published is dropped. Consumed outbox rows are deleted in the same transaction, so
-- a crash at any point either applies a batch whole or not at all.
-- A batch that published something notifies 'pubctl_published' (payload: the new last
-- rev), delivered when it commits: what `pubctl serve`'s long-polls wait for.
CREATE FUNCTION pub.apply_batch(
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

REVOKE ALL ON FUNCTION pub.apply_batch(integer) FROM PUBLIC;

-- The feed, pub.feed (rendered into 75_kinds_attach.sql, a branch per kind): item
-- changes in rev order, for viewers. SECURITY DEFINER so that a
-- reader role needs nothing but USAGE on schema pub and EXECUTE on this function.
-- payload is the canonical text as stored (json): its bytes hash to payload_hash.
--
-- Filtered by kind, it reads index ranges: one range of each wanted kind's partial rev
-- index, merged by rev, so a page of a rare kind never walks the revs of the others.
-- (With one (kind, rev) index the planner preferred the rev index plus a filter for
-- kinds its statistics call common, which walks every other kind's revs when the
-- recent ones are of another kind; a partial index is always cheaper than that filter.
-- Each row is in exactly one of them: the applier writes no more index entries.)
-- Without kinds it is one range of the rev index. Each branch is switched on or
-- off by the parameters alone (a one-time filter), so one plan serves every call. The
-- kinds are the ones pub.content's CHECK constraint allows.

-- Remove what was published of a kind the definition no longer has (a migration
-- rendered from a definition without it calls this before it drops the kind's index):
-- its waiting outbox rows and its tombstones, so that pub.content holds only defined
-- kinds (its CHECK constraint lists them). Refused while an item of the kind is
-- still live: its viewers would never learn that it ended.
CREATE FUNCTION pub.forget_kind(kind text) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    live bigint := (SELECT count(*) FROM pub.content AS c
                    WHERE c.kind = forget_kind.kind AND NOT c.deleted);
BEGIN
    IF live > 0 THEN
        RAISE EXCEPTION 'pubctl: kind % is no longer defined but % of its items are live', kind, live
            USING ERRCODE = 'PB008',
                  DETAIL = 'Removing the kind would remove them from the feed without a tombstone.',
                  HINT = 'Publish their end first with the pubctl that defines the kind: delete '
                         'or soft-delete the source rows, apply, then migrate; nothing was changed.';
    END IF;
    DELETE FROM pub.outbox AS o WHERE o.kind = forget_kind.kind;
    DELETE FROM pub.content AS c WHERE c.kind = forget_kind.kind;
END;
$$;

REVOKE ALL ON FUNCTION pub.forget_kind(text) FROM PUBLIC;

-- The identity of the published state (see pub.rev_counter), for feed readers.
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
