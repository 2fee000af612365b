-- Schema pub, its settings, and the publishing switch.
--
-- sql/schema/*.sql, run in name order, is the whole current schema of pubctl as the
-- newest migration leaves it. It is for reading and for the test that proves the
-- migrations build exactly this (tests/migration/test_schema_matches.py); installs
-- always go through `pubctl migrate`, whose revisions carry frozen copies of this SQL.

CREATE SCHEMA pub;
REVOKE ALL ON SCHEMA pub FROM PUBLIC;

SET LOCAL search_path = pg_catalog, pg_temp;

-- Every change of the publishing switch takes the next value: a transaction can tell
-- whether the switch moved since its snapshot, since a sequence is not versioned.
CREATE SEQUENCE pub.publishing_epoch AS bigint;

-- Settings (one row): whether writes are published, and where the application's
-- tables live.
CREATE TABLE pub.settings (
    -- A single row: the primary key can only be true.
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    publishing_enabled boolean NOT NULL DEFAULT true,
    app_schema         name NOT NULL DEFAULT 'public',
    changed_at         timestamptz NOT NULL DEFAULT now(),
    publishing_epoch   bigint NOT NULL DEFAULT pg_catalog.nextval('pub.publishing_epoch')
);

COMMENT ON TABLE pub.settings IS
    'pubctl settings (one row): whether writes to the application tables are published, and the schema holding those tables.';

INSERT INTO pub.settings DEFAULT VALUES;

-- Whether writes are published, as this statement's snapshot sees it.
CREATE FUNCTION pub.publishing_enabled() RETURNS boolean
    LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT COALESCE((SELECT s.publishing_enabled FROM pub.settings s), true);
END;

-- Switch publishing on or off (`pubctl enable` / `pubctl disable`); returns the epoch
-- of the change.
CREATE FUNCTION pub.set_publishing(enabled boolean) RETURNS bigint
    LANGUAGE sql VOLATILE
BEGIN ATOMIC
    UPDATE pub.settings
    SET publishing_enabled = set_publishing.enabled,
        publishing_epoch = pg_catalog.nextval('pub.publishing_epoch'),
        changed_at = pg_catalog.now()
    RETURNING publishing_epoch;
END;

-- Called by capture when its snapshot says publishing is off, before it skips a write.
--
-- The write is skipped only if the switch has not moved since that snapshot (a
-- REPEATABLE READ transaction that began before `pubctl enable` keeps seeing "off"
-- for the rest of its life; it must publish instead: extra outbox rows are harmless,
-- missing ones are lost changes). The transaction is then marked, with a shared
-- advisory lock held until it ends, as one that wrote without publishing:
-- `pubctl enable` and the first page of a backfill wait for every such transaction,
-- so a backfill always sees their writes. The mark is taken before the epoch is read:
-- an `enable` that commits after the read finds the mark and waits for it.
CREATE FUNCTION pub.unpublished_write_allowed() RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    seen bigint;
    latest bigint;
BEGIN
    -- "pubctl" in ASCII, then 0006: writes made while publishing was off.
    PERFORM pg_advisory_xact_lock_shared(8103491283817594886);
    SELECT s.publishing_epoch INTO seen FROM pub.settings AS s;
    SELECT e.last_value INTO latest FROM pub.publishing_epoch AS e;
    RETURN seen IS NOT DISTINCT FROM latest;
END;
$$;

REVOKE ALL ON FUNCTION pub.set_publishing(boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.unpublished_write_allowed() FROM PUBLIC;
