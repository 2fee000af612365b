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

-- The application's schema is chosen once, at install (`pubctl migrate --app-schema`).
INSERT INTO pub.settings (app_schema)
VALUES (COALESCE(NULLIF(pg_catalog.current_setting('pubctl.app_schema', true), ''), 'public'));

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
-- The transaction is first marked, with a ROW EXCLUSIVE lock on pub.unpublished_writers
-- held until it ends, as one that writes without publishing: `pubctl enable` and the first page of a backfill
-- wait for every such transaction, so a backfill always sees their writes. Then the
-- switch is read again, and the write is skipped only if it is still off and has not
-- moved since (the epoch is the sequence's latest):
-- * an `enable` that commits after this read finds the mark and waits for it;
-- * one that committed before it is seen here, under READ COMMITTED, as "on", although
--   the caller's earlier read said "off": the write is published (enable did not wait
--   for it, so skipping it would lose it);
-- * a REPEATABLE READ transaction that began before `enable` keeps seeing "off" for the
--   rest of its life, but the epoch has moved: it publishes too.
-- Extra outbox rows are harmless; missing ones are lost changes.
CREATE FUNCTION pub.unpublished_write_allowed() RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    still_off boolean;
    seen bigint;
    latest bigint;
BEGIN
    LOCK TABLE pub.unpublished_writers IN ROW EXCLUSIVE MODE;
    SELECT NOT s.publishing_enabled, s.publishing_epoch INTO still_off, seen
    FROM pub.settings AS s;
    SELECT e.last_value INTO latest FROM pub.publishing_epoch AS e;
    RETURN still_off IS TRUE AND seen IS NOT DISTINCT FROM latest;
END;
$$;

REVOKE ALL ON FUNCTION pub.set_publishing(boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.unpublished_write_allowed() FROM PUBLIC;
