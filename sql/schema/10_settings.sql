-- Schema pub and its settings.
--
-- sql/schema/*.sql, run in name order, is the whole current schema of pubctl as the
-- newest migration leaves it. It is for reading and for the test that proves the
-- migrations build exactly this (tests/migration/test_schema_matches.py); installs
-- always go through `pubctl migrate`, whose revisions carry frozen copies of this SQL.

CREATE SCHEMA pub;
REVOKE ALL ON SCHEMA pub FROM PUBLIC;

-- Settings (one row): whether writes are published, and where the application's
-- tables live.
CREATE TABLE pub.settings (
    -- A single row: the primary key can only be true.
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    publishing_enabled boolean NOT NULL DEFAULT true,
    app_schema         name NOT NULL DEFAULT 'public',
    changed_at         timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE pub.settings IS
    'pubctl settings (one row): whether writes to the application tables are published, and the schema holding those tables.';

INSERT INTO pub.settings DEFAULT VALUES;
