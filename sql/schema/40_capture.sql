-- Capture: the triggers on the application's tables that put item changes into the
-- outbox, in the writer's own transaction.
--
-- Why this mix of trigger kinds (measured, see BENCHMARKS.md):
-- * INSERT and DELETE: statement triggers with transition tables. One INSERT into
--   the outbox per statement amortises the per-row cost of bulk imports.
-- * UPDATE: a row trigger with a WHEN clause. Postgres evaluates WHEN without calling
--   the function, so an UPDATE that touches no projected column (updated_at, ...)
--   costs almost nothing. A statement trigger would need OLD and NEW transition
--   tables, whose capture alone costs a no-op UPDATE of every row about 17% and whose
--   join about 50% more, because Postgres fills them for every updated row.
-- * TRUNCATE fires no row triggers, so it is refused while publishing is on.
--
-- Why the state a transaction ends with is the state published, whatever the order
-- in which its captures fire. Postgres fires AFTER STATEMENT triggers after every AFTER
-- ROW event of the statement, nested statements' included, and a statement run by
-- another trigger (the application's) fires its captures before the events still
-- queued for the statement that ran it. So a capture can run after a newer capture of
-- the same item, holding an older state of the row (a transition table's, or NEW), and
-- the applier keeps the newest outbox row per item. The rule that holds whatever the
-- order: a capture writes the state the row has when the capture runs. The latest
-- capture of an item then runs after its latest change and reads it; every change made
-- after a capture fires a capture of its own, later.
--
-- Reading the table costs a query, so capture reads it only when the state it holds
-- may be stale, and otherwise writes from NEW or the transition table as before:
-- * INSERT (DELETE) capture: when this transaction has updated or deleted (inserted
--   or updated) rows of the same table, as Postgres's per-transaction counters
--   (pg_stat_get_xact_tuples_*) say; without those writes no row of the statement can
--   have changed since. The counters also hold the session's own recent transactions
--   until Postgres reports them (about once a second, when the session is idle): a
--   session that wrote the table a moment ago may take the reading path without need,
--   never the other way round;
-- * UPDATE capture: once a capture has run inside another trigger in this transaction
--   (pg_trigger_depth() > 1, noted in pubctl.nested_capture_in): only a statement run
--   by a trigger can change a row between its UPDATE and that UPDATE's queued capture
--   (one statement changes a row at most once, and its own row events fire in the
--   order the rows changed).
-- pub.capture_current_items reads and writes the current state; a row gone since is
-- a tombstone. Extra outbox rows are harmless (churn 0); a stale last row is not.
--
-- Who runs this code. The functions are SECURITY DEFINER, so that the application's
-- role needs no privilege on schema pub to be published and cannot write the outbox
-- itself. Their owner is the NOLOGIN role pubctl_capture when `pubctl migrate` could
-- create it (superuser or CREATEROLE), holding only what capture needs; otherwise the
-- role that ran the migration. Everything they evaluate is built in: before reading a
-- projected column they check its type (pub.require_*_shape), because a table owner
-- who swapped in a column of a type of their own making, with an implicit cast or an
-- operator, would otherwise have that code run with these functions' rights. They
-- compare columns, never old payloads, to decide what changed: a row that broke the
-- payload rules before pubctl was installed can still be fixed by an UPDATE.

SET LOCAL search_path = pg_catalog, pg_temp;

-- The triggers pubctl attached, as pg_get_triggerdef printed them then: status and
-- verify report a trigger that is missing, disabled, replica-only or defined otherwise
-- (another function, timing, level, event, WHEN clause or column).
CREATE TABLE pub.capture_triggers (
    table_name   name NOT NULL,
    trigger_name name NOT NULL,
    definition   text NOT NULL,
    PRIMARY KEY (table_name, trigger_name)
);

COMMENT ON TABLE pub.capture_triggers IS
    'The triggers pubctl attached to the application''s tables, as defined when attached; status and verify compare the catalog with them.';

-- Write the current state of the items (kinds[i], ids[i]) of a source to the outbox, in
-- that order: the payload of a live row, a tombstone for a row not live or gone.
-- Returns the outbox ids written. Reads the table, so it runs as the role that
-- migrated (SECURITY DEFINER; only the capture functions' owner may call it), which may
-- read the source, and like backfill: the columns' types checked first, only the
-- projected columns read, row-level security off (a policy makes it fail rather than
-- run). Inputs are ids and kinds pubctl's triggers computed.
CREATE FUNCTION pub.capture_current_items(source text, kinds text[], ids bigint[])
    RETURNS bigint[]
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET row_security = off
AS $$
DECLARE
    written bigint[];
BEGIN
    IF cardinality(ids) IS DISTINCT FROM cardinality(kinds) OR cardinality(ids) = 0 THEN
        RETURN '{}';
    END IF;
    PERFORM pub.require_source(source);
    EXECUTE format($q$
        WITH wanted AS MATERIALIZED (
            SELECT DISTINCT ON (w.kind, w.source_id) w.n, w.kind, w.source_id
            FROM unnest($1, $2) WITH ORDINALITY AS w(kind, source_id, n)
            ORDER BY w.kind, w.source_id, w.n
        ), current_rows AS MATERIALIZED (
            SELECT %3$s FROM %1$I.%2$I AS r
            WHERE r.id = ANY (SELECT w.source_id FROM wanted AS w)
        ), items AS MATERIALIZED (%4$s
        ), numbered AS (
            SELECT nextval('pub.outbox_id_seq') AS id, x.kind, x.source_id, x.canonical
            FROM (SELECT w.n, w.kind, w.source_id, i.canonical
                  FROM wanted AS w
                  LEFT JOIN items AS i ON (i.kind, i.source_id) = (w.kind, w.source_id)
                  ORDER BY w.n) AS x
        ), inserted AS (
            INSERT INTO pub.outbox
                (id, kind, source_id, payload, payload_hash, schema_version, deleted)
            OVERRIDING SYSTEM VALUE
            SELECT n.id, n.kind, n.source_id, pub.outbox_payload(n.canonical),
                   pub.outbox_payload_hash(n.canonical), pub.schema_version(),
                   n.canonical IS NULL
            FROM numbered AS n
            RETURNING id
        )
        SELECT array_agg(i.id ORDER BY i.id) FROM inserted AS i
    $q$, (SELECT s.app_schema FROM pub.settings AS s), source, pub.source_select_list(source),
         pub.source_items_sql(source, 'current_rows'))
    INTO written USING kinds, ids;
    RETURN written;
END;
$$;

REVOKE ALL ON FUNCTION pub.capture_current_items(text, text[], bigint[]) FROM PUBLIC;

-- The capture functions of each source, pub.capture_<kind>_insert, _delete and
-- _update, and their triggers are rendered from the definition in pubctl/sources.py
-- (25_kinds.sql and 75_kinds_attach.sql), one set per source table, in the design below.
--
-- The statement triggers write one INSERT ... SELECT per kind from the transition
-- table. Each SELECT filters on liveness and computes the canonical text in a
-- subquery kept apart by OFFSET 0, so that the text is built once per row although
-- both the payload and the hash use it. (One INSERT per statement through a LATERAL
-- VALUES list of kinds measured 1.45x slower on a 100k-row insert.) The shape check is
-- a one-time filter over the first row of the transition table: it runs before the
-- subquery reads any column, and costs no catalog access.
--
-- The UPDATE triggers run once per changed row, so every query they run costs per row
-- (about 20 us each: a query's plan state is rebuilt on every execution). They build
-- the canonical texts in PL/pgSQL expressions, whose state lives for the transaction,
-- and write a row's items with one INSERT ... VALUES.
--
-- * The publishing switch is read once per transaction: pubctl.publishing_on_in holds
--   the id of the transaction that found it on. A writer can set that setting to
--   anything; believing it only ever makes capture write (a transaction that began
--   while publishing was on keeps publishing until it ends, which is harmless), never
--   skip: "off" is always read from the table, and goes through
--   pub.unpublished_write_allowed.
-- * An ORM that saves one object several times in a transaction updates the same row
--   again and again; only its last state needs publishing. pubctl.last_enqueued (SET
--   LOCAL: gone at commit or rollback, undone by a rolled-back savepoint) names the row
--   the previous captured UPDATE of this transaction wrote and the outbox ids it got,
--   and an UPDATE of that same row removes them first. A writer can set this one to
--   anything too, so it only says where to look: a row is removed only if it belongs
--   to an item this UPDATE writes and was written by this very transaction (its xmin is
--   this transaction's id), rows nobody else has seen. A forged setting removes nothing
--   else; at worst an item keeps an extra row, which the applier's churn rule makes
--   harmless. The setting also tells that this transaction has already woken the
--   applier (one notification per row would be a query per row).

-- TRUNCATE fires no row triggers: refused while publishing is on, also for a
-- transaction whose snapshot still says "off" after `pubctl enable` (see
-- pub.unpublished_write_allowed, which also makes enable wait for the truncation).
CREATE FUNCTION pub.refuse_truncate() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pub.publishing_enabled() OR NOT pub.unpublished_write_allowed() THEN
        RAISE EXCEPTION 'pubctl: TRUNCATE of %.% is refused while publishing is on',
                TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'PB002',
                  DETAIL = 'TRUNCATE fires no row triggers: the published copy would keep '
                           'every truncated row.',
                  HINT = 'Soft-delete the rows (set deleted_at) or DELETE them; or run '
                         '`pubctl disable`, TRUNCATE, `pubctl enable`, `pubctl backfill all`.';
    END IF;
    RETURN NULL;
END;
$$;

REVOKE ALL ON FUNCTION pub.refuse_truncate() FROM PUBLIC;

-- Everything that would make capture miss writes without failing them, one row each,
-- for `pubctl status` and `pubctl verify` (one query for both):
-- * publishing switched off;
-- * one of our triggers missing, disabled, replica-only, or no longer as attached;
-- * a source table whose shape no longer fits (pub.source_shape_problems);
-- * session_replication_role = replica set for a role or for the database (ALTER
--   ROLE / ALTER DATABASE ... SET), or in the calling session: no trigger fires there;
-- * the ways to set it without a superuser's session: a role granted SET on the
--   parameter (GRANT SET ON PARAMETER), a function whose configuration sets it
--   (CREATE FUNCTION ... SET session_replication_role = replica), which any role
--   allowed to call it can use;
-- * a logical replication subscription that writes a source table: its apply worker
--   runs as replica, so the rows it applies fire no capture trigger;
-- * capture functions that run as a role able to log in or as a superuser;
-- * a grant on pub or its objects beyond the documented ones (pub.undocumented_grants).
CREATE FUNCTION pub.capture_problems() RETURNS TABLE (subject text, problem text)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    app name := (SELECT s.app_schema FROM pub.settings AS s);
BEGIN
    IF NOT (SELECT s.publishing_enabled FROM pub.settings AS s) THEN
        RETURN QUERY SELECT 'publishing'::text, 'publishing is switched off'::text;
    END IF;

    RETURN QUERY
    SELECT format('%s.%s', e.table_name, e.trigger_name),
           CASE
               WHEN t.oid IS NULL THEN 'missing'
               WHEN t.tgenabled = 'D' THEN 'disabled'
               WHEN t.tgenabled = 'R' THEN 'fires only under session_replication_role = replica'
               ELSE 'defined otherwise than pubctl attached it: ' || pg_get_triggerdef(t.oid)
           END
    FROM pub.capture_triggers AS e
    LEFT JOIN pg_catalog.pg_class AS c
           ON c.relname = e.table_name
          AND c.relnamespace = (SELECT n.oid FROM pg_catalog.pg_namespace AS n
                                WHERE n.nspname = app)
    LEFT JOIN pg_catalog.pg_trigger AS t ON t.tgrelid = c.oid AND t.tgname = e.trigger_name
    WHERE t.oid IS NULL OR t.tgenabled IN ('D', 'R')
       OR pg_get_triggerdef(t.oid) <> e.definition
    ORDER BY 1;

    RETURN QUERY
    SELECT s.source, p
    FROM unnest(pub.source_tables()) AS s(source),
         LATERAL pub.source_shape_problems(s.source) AS p;

    RETURN QUERY
    SELECT CASE
               WHEN d.setrole = 0 THEN format('database %s', current_database())
               WHEN d.setdatabase = 0 THEN format('role %s', d.setrole::regrole)
               ELSE format('role %s in database %s', d.setrole::regrole, current_database())
           END,
           'session_replication_role = replica is set: its writes fire no trigger'
    FROM pg_catalog.pg_db_role_setting AS d
    WHERE d.setdatabase IN (0, (SELECT b.oid FROM pg_catalog.pg_database AS b
                                WHERE b.datname = current_database()))
      AND EXISTS (SELECT FROM unnest(d.setconfig) AS c
                  WHERE lower(replace(c, ' ', '')) IN ('session_replication_role=replica',
                                                       'session_replication_role=''replica'''))
    ORDER BY 1;

    RETURN QUERY
    SELECT format('role %s', a.grantee::regrole),
           'may SET session_replication_role (GRANT SET ON PARAMETER): its sessions, and '
           'functions it owns, can write without firing any trigger'
    FROM pg_catalog.pg_parameter_acl AS p,
         LATERAL pg_catalog.aclexplode(p.paracl) AS a
    WHERE p.parname = 'session_replication_role' AND a.privilege_type = 'SET'
      AND a.grantee <> 0
    UNION ALL
    SELECT 'PUBLIC', 'may SET session_replication_role (GRANT SET ON PARAMETER): every '
                     'session can write without firing any trigger'
    FROM pg_catalog.pg_parameter_acl AS p,
         LATERAL pg_catalog.aclexplode(p.paracl) AS a
    WHERE p.parname = 'session_replication_role' AND a.privilege_type = 'SET'
      AND a.grantee = 0
    ORDER BY 1;

    RETURN QUERY
    SELECT format('function %s', f.oid::regprocedure),
           'sets session_replication_role: whoever may call it writes without firing any '
           'trigger while it runs'
    FROM pg_catalog.pg_proc AS f
    WHERE f.proconfig IS NOT NULL
      AND EXISTS (SELECT FROM unnest(f.proconfig) AS c
                  WHERE lower(replace(c, ' ', '')) LIKE 'session_replication_role=%'
                    AND lower(c) NOT LIKE '%origin%')
    ORDER BY 1;

    RETURN QUERY
    SELECT format('%s.%s', app, c.relname),
           format('subscription %s writes it: the rows it applies fire no capture trigger',
                  s.subname)
    FROM pg_catalog.pg_subscription_rel AS r
    JOIN pg_catalog.pg_subscription AS s ON s.oid = r.srsubid
    JOIN pg_catalog.pg_class AS c ON c.oid = r.srrelid
    WHERE c.relnamespace = (SELECT n.oid FROM pg_catalog.pg_namespace AS n
                            WHERE n.nspname = app)
      AND c.relname = ANY (pub.source_tables())
    ORDER BY 1, 2;

    IF current_setting('session_replication_role') = 'replica' THEN
        RETURN QUERY SELECT 'this session'::text,
            'session_replication_role = replica: its writes fire no trigger'::text;
    END IF;

    RETURN QUERY
    SELECT g.object,
           format('%s granted to %s%s beyond the documented privileges: whoever holds it '
                  'can %s', g.privilege, g.grantee,
                  CASE WHEN g.grantable THEN ' WITH GRANT OPTION' ELSE '' END,
                  'reach what pubctl keeps to itself (pubctl migrate revokes it)')
    FROM pub.undocumented_grants() AS g;

    RETURN QUERY
    SELECT format('capture functions'),
           format('run as role %s, which %s', r.rolname,
                  CASE WHEN r.rolsuper THEN 'is a superuser' ELSE 'can log in' END)
    FROM pg_catalog.pg_proc AS f
    JOIN pg_catalog.pg_roles AS r ON r.oid = f.proowner
    WHERE f.oid = 'pub.refuse_truncate()'::regprocedure
      AND r.rolname = 'pubctl_capture' AND (r.rolcanlogin OR r.rolsuper);
END;
$$;

-- Attach one capture trigger to a source table, in the schema recorded at install, and
-- record its definition as Postgres prints it (status and verify compare the catalog
-- with it). definition is a CREATE OR REPLACE TRIGGER statement whose %I stands for the
-- application's schema; the rendered triggers (75_kinds_attach.sql) call this. The
-- WHEN clauses list every projected column (and liveness, not the deleted_at
-- timestamp itself): an UPDATE that changes none of them never calls the function.
-- Text columns compare in the "C" collation, byte for byte: under a nondeterministic
-- collation 'Anatomy' and 'anatomy' would compare equal, and the change would never be
-- published. For the migrating role alone (it runs as its caller).
CREATE FUNCTION pub.attach_capture_trigger(source text, trigger_name text, definition text)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    app name := (SELECT s.app_schema FROM pub.settings AS s);
BEGIN
    EXECUTE format(definition, app);
    INSERT INTO pub.capture_triggers AS r (table_name, trigger_name, definition)
    SELECT c.relname, t.tgname, pg_catalog.pg_get_triggerdef(t.oid)
    FROM pg_catalog.pg_trigger AS t
    JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    WHERE n.nspname = app AND c.relname = source AND t.tgname = trigger_name
    ON CONFLICT ON CONSTRAINT capture_triggers_pkey
        DO UPDATE SET definition = EXCLUDED.definition;
END;
$$;

-- Remove a capture trigger and its record (a kind or source no longer defined).
CREATE FUNCTION pub.detach_capture_trigger(source text, trigger_name text) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I.%I', trigger_name,
                   (SELECT s.app_schema FROM pub.settings AS s), source);
    DELETE FROM pub.capture_triggers AS r
    WHERE r.table_name = source AND r.trigger_name = detach_capture_trigger.trigger_name;
END;
$$;

-- Who owns what a migration created. Everything in schema pub belongs to the owner of
-- schema pub, whoever ran the migration: a function a superuser created would otherwise
-- be the superuser's, and a SECURITY DEFINER one (pub.feed) would then run as the
-- superuser over tables the schema's owner controls (who could, for one, turn
-- pub.content into a view that calls code of its own). But capture functions go to
-- pubctl_capture when this install runs capture as that role (pub.refuse_truncate,
-- handed to it below, tells). The rendered objects end with a call of it.
CREATE FUNCTION pub.settle_ownership(capture_functions regprocedure[]) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    owner oid := (SELECT n.nspowner FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'pub');
    capture oid := (SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolname = 'pubctl_capture');
    object text;
BEGIN
    FOR object IN
        SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'pub'::regnamespace AND p.proowner <> owner
          AND p.proowner IS DISTINCT FROM capture
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO %s', object, owner::regrole);
    END LOOP;
    FOR object IN
        SELECT t.oid::regtype::text FROM pg_catalog.pg_type AS t
        WHERE t.typnamespace = 'pub'::regnamespace AND t.typowner <> owner AND t.typtype = 'c'
          AND NOT EXISTS (SELECT FROM pg_catalog.pg_class AS c
                          WHERE c.oid = t.typrelid AND c.relkind <> 'c')
    LOOP
        EXECUTE format('ALTER TYPE %s OWNER TO %s', object, owner::regrole);
    END LOOP;
    IF (SELECT p.proowner FROM pg_catalog.pg_proc AS p
        WHERE p.oid = 'pub.refuse_truncate()'::regprocedure) IS DISTINCT FROM capture THEN
        RETURN;
    END IF;
    FOREACH object IN ARRAY capture_functions::text[] LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO pubctl_capture', object);
    END LOOP;
END;
$$;

REVOKE ALL ON FUNCTION pub.attach_capture_trigger(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.detach_capture_trigger(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.settle_ownership(regprocedure[]) FROM PUBLIC;

-- Hand capture to the NOLOGIN role pubctl_capture, holding exactly what
-- capture needs, when this role may create it (superuser or CREATEROLE) or already
-- belongs to it; otherwise they stay with this role. An existing pubctl_capture that
-- can log in, or has any right beyond NOLOGIN, is refused: someone could act as it.
DO $owner$
DECLARE
    me record;
    capture record;
BEGIN
    SELECT r.* INTO me FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user;
    SELECT r.* INTO capture FROM pg_catalog.pg_roles AS r WHERE r.rolname = 'pubctl_capture';
    IF capture IS NULL THEN
        IF NOT (me.rolsuper OR me.rolcreaterole) THEN
            RETURN;  -- capture runs as this role
        END IF;
        BEGIN
            CREATE ROLE pubctl_capture NOLOGIN NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- another database's migration created it meanwhile
        END;
        SELECT r.* INTO capture FROM pg_catalog.pg_roles AS r WHERE r.rolname = 'pubctl_capture';
    END IF;
    IF capture.rolcanlogin OR capture.rolsuper OR capture.rolcreaterole OR capture.rolcreatedb
       OR capture.rolreplication OR capture.rolbypassrls THEN
        RAISE EXCEPTION 'pubctl: role pubctl_capture exists and is not safe to run capture as'
            USING ERRCODE = 'PB005',
                  DETAIL = 'It can log in or holds rights beyond NOLOGIN: whoever can act as '
                           'it could write the outbox.',
                  HINT = 'ALTER ROLE pubctl_capture NOLOGIN NOSUPERUSER NOCREATEROLE '
                         'NOCREATEDB NOREPLICATION NOBYPASSRLS, or drop it, then migrate again.';
    END IF;
    IF NOT pg_catalog.pg_has_role(current_user, 'pubctl_capture', 'MEMBER') THEN
        IF NOT me.rolcreaterole THEN
            RETURN;  -- not ours to use: capture runs as this role
        END IF;
        GRANT pubctl_capture TO CURRENT_USER;
    END IF;
    GRANT USAGE ON SCHEMA pub TO pubctl_capture;
    GRANT SELECT, INSERT, DELETE ON pub.outbox TO pubctl_capture;
    GRANT SELECT ON pub.settings TO pubctl_capture;
    GRANT SELECT ON SEQUENCE pub.publishing_epoch TO pubctl_capture;
    GRANT USAGE ON SEQUENCE pub.outbox_id_seq TO pubctl_capture;
    GRANT INSERT ON pub.unpublished_writers TO pubctl_capture;
    GRANT EXECUTE ON FUNCTION pub.unpublished_write_allowed(), pub.notify_outbox(),
        pub.capture_current_items(text, text[], bigint[])
        TO pubctl_capture;
    -- The rendered capture functions follow (pub.settle_ownership, called at the end
    -- of 75_kinds_attach.sql).
    ALTER FUNCTION pub.refuse_truncate() OWNER TO pubctl_capture;
END;
$owner$;
