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

-- How an item becomes outbox columns, in one place: payload and hash both come from
-- the same canonical text, and a NULL canonical text is a tombstone ({} and deleted).
-- Inlinable SQL functions, so the triggers' set-based INSERTs pay no call per row.
CREATE FUNCTION pub.outbox_payload(canonical text) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT COALESCE(canonical, '{}')::jsonb;
END;

CREATE FUNCTION pub.outbox_payload_hash(canonical text) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT pub.payload_hash(COALESCE(canonical, '{}'));
END;

-- The payload schema version the projection functions produce.
CREATE FUNCTION pub.schema_version() RETURNS integer
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT 1;
END;

-- Wakes `pubctl worker`. Postgres folds identical notifications of one transaction,
-- so a transaction wakes the worker once however many statements it ran.
CREATE FUNCTION pub.notify_outbox() RETURNS void
    LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT pg_catalog.pg_notify('pubctl_outbox', '');
END;

-- Enqueue a few items at once: the row-level UPDATE trigger's path (statement
-- triggers INSERT directly from their transition tables).
--
-- An ORM that saves one object several times in a transaction updates the same row
-- again and again; only its last state needs publishing. So the transaction remembers
-- (in a SET LOCAL setting, gone at commit or rollback, undone with a savepoint) which
-- outbox rows its previous call inserted, and a call for the same items removes them
-- before inserting the new ones. Those rows were never visible to anyone else.
CREATE FUNCTION pub.enqueue(kinds text[], source_ids bigint[], canonicals text[])
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    previous jsonb := NULLIF(current_setting('pubctl.last_enqueued', true), '')::jsonb;
    inserted jsonb;
BEGIN
    IF previous IS NOT NULL THEN
        DELETE FROM pub.outbox AS o
        USING unnest(kinds, source_ids) AS i(kind, source_id)
        WHERE o.id = (previous ->> (i.kind || ':' || i.source_id))::bigint;
    END IF;
    WITH rows AS (
        INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)
        SELECT i.kind, i.source_id, pub.outbox_payload(i.canonical),
               pub.outbox_payload_hash(i.canonical), pub.schema_version(), i.canonical IS NULL
        FROM unnest(kinds, source_ids, canonicals) AS i(kind, source_id, canonical)
        RETURNING kind, source_id, id
    )
    SELECT jsonb_object_agg(r.kind || ':' || r.source_id, r.id) INTO inserted FROM rows AS r;
    PERFORM set_config('pubctl.last_enqueued', COALESCE(inserted::text, ''), true);
    IF inserted IS NOT NULL THEN
        PERFORM pub.notify_outbox();
    END IF;
END;
$$;

REVOKE ALL ON FUNCTION pub.enqueue(text[], bigint[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.notify_outbox() FROM PUBLIC;
