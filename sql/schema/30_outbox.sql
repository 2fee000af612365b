-- The outbox: what the triggers and the backfill produce and the applier consumes.
--
-- Insert-only: producers insert, the applier deletes what it consumed, nobody
-- updates a row. Its columns suit Debezium's Outbox Event Router as they are
-- (id, kind for routing, source_id as key, payload).

SET LOCAL search_path = pg_catalog, pg_temp;

CREATE TABLE pub.outbox (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('topic', 'question', 'explanation')),
    source_id      bigint NOT NULL,
    payload        jsonb NOT NULL,
    payload_hash   text NOT NULL,
    schema_version integer NOT NULL,
    deleted        boolean NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE pub.outbox IS
    'Item changes waiting for the applier, oldest first by id. Written only by pubctl''s triggers and backfill.';

CREATE FUNCTION pub.publishing_enabled() RETURNS boolean
    LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT COALESCE((SELECT s.publishing_enabled FROM pub.settings s), true);
END;

-- The one place an outbox row is made from an item: payload and hash both come from
-- the same canonical text; a NULL canonical text is a tombstone ({} and deleted).
-- Arrays, so that a statement trigger enqueues all its rows in one INSERT.
CREATE FUNCTION pub.enqueue(kinds text[], source_ids bigint[], canonicals text[])
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    enqueued bigint;
BEGIN
    INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
    SELECT i.kind,
           i.source_id,
           COALESCE(i.canonical, '{}')::jsonb,
           pub.payload_hash(COALESCE(i.canonical, '{}')),
           1,
           i.canonical IS NULL
    FROM unnest(kinds, source_ids, canonicals) AS i(kind, source_id, canonical);
    GET DIAGNOSTICS enqueued = ROW_COUNT;
    IF enqueued > 0 THEN
        -- One wake-up per transaction at most: Postgres folds identical notifications.
        PERFORM pg_notify('pubctl_outbox', '');
    END IF;
    RETURN enqueued;
END;
$$;

REVOKE ALL ON FUNCTION pub.enqueue(text[], bigint[], text[]) FROM PUBLIC;
