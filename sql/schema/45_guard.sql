-- The DDL guard: renaming, dropping or retyping a projected column of a source table
-- is refused when it happens, instead of breaking every later write of the
-- application (capture reads the columns by name and checks their types).
--
-- An event trigger needs a superuser to create it: `pubctl migrate` run by one attaches
-- it; without that right there is no guard, and `pubctl status` and `pubctl verify`
-- report the change afterwards (pub.capture_problems, through
-- pub.source_shape_problems). It runs after each ALTER TABLE and looks only at the
-- source tables that command touched, so other DDL costs one catalog lookup.
--
-- A deliberate change names its columns first, in the same transaction:
--   SET LOCAL pubctl.allow_column_change = 'study_question.body';
-- (docs/operations.md, "Renaming a projected column", which also uses
-- pub.reattach_capture_triggers below). The setting is a safety catch, not a right: the
-- table's owner can break capture in other ways, which status and verify report.

SET LOCAL search_path = pg_catalog, pg_temp;

-- The projected columns of one source table that are missing or of a type capture does
-- not accept.
CREATE FUNCTION pub.broken_source_columns(source text) RETURNS SETOF text
    LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT s.column_name
    FROM pub.source_columns(broken_source_columns.source) AS s
    LEFT JOIN pg_catalog.pg_attribute AS a
           ON a.attrelid = (SELECT c.oid FROM pg_catalog.pg_class AS c
                            JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
                            JOIN pub.settings AS t ON n.nspname = t.app_schema
                            WHERE c.relname = broken_source_columns.source)
          AND a.attname = s.column_name AND a.attnum > 0 AND NOT a.attisdropped
    WHERE a.atttypid IS NULL OR NOT a.atttypid::pg_catalog.regtype = ANY (s.allowed_types)
    ORDER BY 1;
END;

CREATE FUNCTION pub.guard_projected_columns() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    source text;
    broken text[];
    allowed text[] := string_to_array(
        replace(COALESCE(current_setting('pubctl.allow_column_change', true), ''), ' ', ''),
        ',');
BEGIN
    FOR source IN
        SELECT DISTINCT c.relname::text
        FROM pg_event_trigger_ddl_commands() AS d
        JOIN pg_class AS c ON c.oid = d.objid
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE d.classid = 'pg_class'::regclass
          AND n.nspname = (SELECT s.app_schema FROM pub.settings AS s)
          AND c.relname = ANY (pub.source_tables())
        ORDER BY 1
    LOOP
        broken := ARRAY(SELECT b FROM pub.broken_source_columns(source) AS b
                        WHERE NOT (source || '.' || b) = ANY (allowed));
        IF cardinality(broken) > 0 THEN
            RAISE EXCEPTION 'pubctl: % of %.% is projected by pubctl; renaming, dropping or retyping it is refused',
                    (SELECT string_agg(format('column %I', b), ', ') FROM unnest(broken) AS b),
                    (SELECT s.app_schema FROM pub.settings AS s), source
                USING ERRCODE = 'PB007',
                      DETAIL = 'pubctl''s capture triggers read this column on every write: '
                               'after this change every write of the table would fail.',
                      HINT = 'Follow docs/operations.md, "Renaming a projected column"; '
                             'nothing was changed.';
        END IF;
    END LOOP;
END;
$$;

REVOKE ALL ON FUNCTION pub.guard_projected_columns() FROM PUBLIC;

-- Attach a source table's capture triggers again exactly as pubctl recorded them
-- (pub.capture_triggers), replacing any that now reads otherwise. A trigger's WHEN
-- clause is bound to columns, not names: after a projected column is renamed and a
-- column of its old name takes its place (the rename procedure), the UPDATE trigger
-- must watch the new column, the one capture reads. CREATE OR REPLACE TRIGGER needs
-- only the TRIGGER privilege, which the migrating role holds; hence SECURITY DEFINER,
-- for its owner alone. Returns the triggers it replaced.
CREATE FUNCTION pub.reattach_capture_triggers(source text) RETURNS SETOF text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e record;
BEGIN
    FOR e IN
        SELECT r.trigger_name, r.definition
        FROM pub.capture_triggers AS r
        LEFT JOIN pg_trigger AS t
               ON t.tgname = r.trigger_name
              AND t.tgrelid = (SELECT c.oid FROM pg_class AS c
                               JOIN pg_namespace AS n ON n.oid = c.relnamespace
                               WHERE n.nspname = (SELECT s.app_schema FROM pub.settings AS s)
                                 AND c.relname = r.table_name)
        WHERE r.table_name = source
          AND pg_get_triggerdef(t.oid) IS DISTINCT FROM r.definition
        ORDER BY 1
    LOOP
        EXECUTE regexp_replace(e.definition, '^CREATE TRIGGER ', 'CREATE OR REPLACE TRIGGER ');
        -- Recorded as Postgres prints it now (the same trigger, printed from a parse
        -- of the recorded text).
        UPDATE pub.capture_triggers AS r
        SET definition = (SELECT pg_get_triggerdef(t.oid) FROM pg_trigger AS t
                          JOIN pg_class AS c ON c.oid = t.tgrelid
                          JOIN pg_namespace AS n ON n.oid = c.relnamespace
                          WHERE n.nspname = (SELECT s.app_schema FROM pub.settings AS s)
                            AND c.relname = source AND t.tgname = e.trigger_name)
        WHERE r.table_name = source AND r.trigger_name = e.trigger_name;
        RETURN NEXT e.trigger_name::text;
    END LOOP;
END;
$$;

REVOKE ALL ON FUNCTION pub.reattach_capture_triggers(text) FROM PUBLIC;

-- Attached only when this role may (a superuser). The function runs as its owner,
-- handed to pubctl_capture where that role exists (it reads only the catalog and
-- pub.settings), so the guard never runs with a superuser's rights.
DO $guard$
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        RETURN;
    END IF;
    CREATE EVENT TRIGGER pub_guard_projected_columns ON ddl_command_end
        WHEN TAG IN ('ALTER TABLE')
        EXECUTE FUNCTION pub.guard_projected_columns();
    IF EXISTS (SELECT FROM pg_catalog.pg_proc AS p
               JOIN pg_catalog.pg_roles AS r ON r.oid = p.proowner
               WHERE p.oid = 'pub.refuse_truncate()'::pg_catalog.regprocedure
                 AND r.rolname = 'pubctl_capture') THEN
        ALTER FUNCTION pub.guard_projected_columns() OWNER TO pubctl_capture;
    END IF;
END;
$guard$;
