-- The outbox: what the triggers and the backfill produce and the applier consumes.
--
-- Insert-only: producers insert, the applier deletes what it consumed, nobody
-- updates a row. Its columns suit Debezium's Outbox Event Router as they are
-- (id, kind for routing, source_id as key, payload).

SET LOCAL search_path = pg_catalog, pg_temp;

CREATE TABLE pub.outbox (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind           text NOT NULL,  -- a defined kind (outbox_kind_check, 75_kinds_attach.sql)
    source_id      bigint NOT NULL,
    -- The canonical text itself (RFC 8785), kept as built: json stores its input as
    -- it is, so sha256(payload::text) is payload_hash, and nothing downstream (the
    -- applier, pub.feed, `pubctl feed`, `pubctl serve`) re-encodes it.
    payload        json NOT NULL,
    payload_hash   text NOT NULL,
    schema_version integer NOT NULL,
    deleted        boolean NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE pub.outbox IS
    'Item changes waiting for the applier, oldest first by id. Written only by pubctl''s triggers and backfill.';

-- How an item becomes outbox columns, in one place: payload and hash both come from
-- the same canonical json (the projection's), and a NULL one is a tombstone ({} and
-- deleted). Inlinable SQL functions, so the triggers' set-based INSERTs pay no call
-- per row. The json value is written as the projection built it, byte for byte.
CREATE FUNCTION pub.outbox_payload(canonical json) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT COALESCE(canonical, '{}'::json);
END;

CREATE FUNCTION pub.outbox_payload_hash(canonical json) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT pub.payload_hash(COALESCE(canonical::text, '{}'));
END;

-- The same for the canonical text itself: what capture functions compiled before
-- revision 0104 pass. A session that was running through the upgrade keeps its
-- compiled trigger bodies, whose variables held text; its next write must still be
-- published, not fail. The text is canonical already: cast, not rebuilt. (An untyped
-- NULL resolves to these.)
CREATE FUNCTION pub.outbox_payload(canonical text) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT COALESCE(canonical, '{}')::json;
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
--
-- Not when the session setting pubctl.notify is off: Postgres refuses PREPARE
-- TRANSACTION after a NOTIFY, so an application that uses two-phase commit sets it for
-- its role or its connections, and the worker finds its writes on its next poll.
-- One SELECT of one expression, no WHERE: Postgres inlines the call into the caller's
-- expression. (With a WHERE it runs as a function call, which measured 3-5% of a
-- single-row INSERT's throughput.)
CREATE FUNCTION pub.notify_outbox() RETURNS void
    LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT CASE WHEN pg_catalog.lower(COALESCE(
                         pg_catalog.current_setting('pubctl.notify', true), ''))
                     = ANY ('{off,false,no,0}'::text[])
                THEN NULL
                ELSE pg_catalog.pg_notify('pubctl_outbox', '')
           END;
END;

REVOKE ALL ON FUNCTION pub.notify_outbox() FROM PUBLIC;
