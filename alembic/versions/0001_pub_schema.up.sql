-- Revision 0001 (frozen): the settings behind `pubctl enable` / `pubctl disable`.
-- Schema pub itself is created before the first revision runs, because Alembic's
-- version table lives in it.

REVOKE ALL ON SCHEMA pub FROM PUBLIC;

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
