-- Every query pubctl runs at run time, each under a "-- name: <name>" header.
-- Parameters are psycopg named placeholders.

-- name: source_columns
-- The columns of the application's tables, with their types and whether the column
-- is the whole primary key.
SELECT c.relname::text,
       a.attname::text,
       a.atttypid::regtype::text,
       EXISTS (
           SELECT 1
           FROM pg_catalog.pg_constraint k
           WHERE k.conrelid = c.oid AND k.contype = 'p' AND k.conkey = ARRAY[a.attnum]
       )
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = %(schema)s
  AND c.relname = ANY (%(tables)s)
  AND c.relkind IN ('r', 'p');

-- name: pub_version
-- The pubctl migration revision, or no row when pubctl was never installed here.
SELECT version_num
FROM pub.alembic_version;

-- name: has_version_table
SELECT pg_catalog.to_regclass('pub.alembic_version') IS NOT NULL;

-- name: settings
SELECT publishing_enabled, app_schema::text, changed_at
FROM pub.settings;

-- name: set_publishing
UPDATE pub.settings
SET publishing_enabled = %(enabled)s,
    changed_at = pg_catalog.now()
RETURNING publishing_enabled;

-- name: has_settings_table
SELECT pg_catalog.to_regclass('pub.settings') IS NOT NULL;

-- name: migrate_lock
-- Serialises `pubctl migrate` runs; the key is "pubctl" in ASCII followed by 0001.
SELECT pg_catalog.pg_advisory_xact_lock(8103491283817594881);

-- name: create_pub_schema
-- Bootstraps the schema that holds Alembic's version table; migration 0001 fills it.
CREATE SCHEMA IF NOT EXISTS pub;

-- name: drop_pub_schema
-- At base: without CASCADE, so objects pubctl did not create make the downgrade fail.
DROP TABLE IF EXISTS pub.alembic_version;
DROP SCHEMA IF EXISTS pub;
