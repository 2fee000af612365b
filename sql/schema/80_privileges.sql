-- Schema pub's privileges are pubctl's alone.
--
-- Objects are created with whatever the migrating role's default privileges say
-- (ALTER DEFAULT PRIVILEGES ... GRANT ALL ON TABLES TO writer is a common convenience),
-- and anyone with a grant option could hand out more. So every `pubctl migrate`
-- (install, upgrade, or a run with nothing to do) ends by setting the ACLs explicitly
-- (pub.revoke_undocumented_grants), and `pubctl status` and `pubctl verify` report any
-- grant beyond the documented ones (pub.undocumented_grants, through
-- pub.capture_problems). The documented ones, as docs/operations.md's role table has
-- them, are listed once, here.

SET LOCAL search_path = pg_catalog, pg_temp;

-- Every privilege on pub and its objects that docs/operations.md documents, besides
-- what each object's owner holds. grantee '*' is any role (the feed reader's rights,
-- which an operator grants to the viewers' roles) and 'PUBLIC' is PUBLIC.
CREATE FUNCTION pub.documented_privileges()
    RETURNS TABLE (object text, grantee text, privilege text)
    LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT d.object, d.grantee, d.privilege
    FROM (VALUES
        -- A feed reader: USAGE on pub, EXECUTE on the feed, its identity and health.
        ('schema pub', '*', 'USAGE'),
        ('pub.feed(bigint,integer,text[])', '*', 'EXECUTE'),
        ('pub.feed_id()', '*', 'EXECUTE'),
        ('pub.health()', '*', 'EXECUTE'),
        -- The role the capture functions run as: what capture needs, nothing more.
        ('schema pub', 'pubctl_capture', 'USAGE'),
        ('pub.outbox', 'pubctl_capture', 'SELECT'),
        ('pub.outbox', 'pubctl_capture', 'INSERT'),
        ('pub.outbox', 'pubctl_capture', 'DELETE'),
        ('pub.settings', 'pubctl_capture', 'SELECT'),
        ('pub.publishing_epoch', 'pubctl_capture', 'SELECT'),
        ('pub.outbox_id_seq', 'pubctl_capture', 'USAGE'),
        ('pub.unpublished_writers', 'pubctl_capture', 'INSERT'),
        ('pub.unpublished_write_allowed()', 'pubctl_capture', 'EXECUTE'),
        ('pub.notify_outbox()', 'pubctl_capture', 'EXECUTE'),
        ('pub.capture_current_items(text,text[],bigint[])', 'pubctl_capture', 'EXECUTE')
    ) AS d(object, grantee, privilege)
    UNION ALL
    -- PUBLIC keeps EXECUTE on the functions that compute and check, the Postgres
    -- default for a function: reaching them takes USAGE on pub, and they change nothing.
    SELECT p.oid::pg_catalog.regprocedure::text, 'PUBLIC', 'EXECUTE'
    FROM pg_catalog.pg_proc AS p
    WHERE p.pronamespace = 'pub'::pg_catalog.regnamespace
      AND NOT p.prosecdef AND p.provolatile <> 'v'
      AND p.oid::pg_catalog.regprocedure::text NOT IN (
          'pub.apply_batch(integer)', 'pub.source_page_bound(text,bigint,integer)',
          'pub.source_projection(text,bigint,bigint)', 'pub.verify_range(text,bigint,bigint)');
END;

-- Every grant on pub or one of its objects that the list above does not document
-- (to whom, and whether with grant option). Owners' own rights are not grants.
CREATE FUNCTION pub.undocumented_grants()
    RETURNS TABLE (object text, kind text, grantee text, privilege text, grantable boolean)
    LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH objects AS (
        SELECT 'schema pub' AS object, 'SCHEMA' AS kind, n.nspowner AS owner,
               COALESCE(n.nspacl, pg_catalog.acldefault('n', n.nspowner)) AS acl
        FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'pub'
        UNION ALL
        SELECT c.oid::pg_catalog.regclass::text,
               CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.relowner,
               COALESCE(c.relacl, pg_catalog.acldefault(
                   CASE c.relkind WHEN 'S' THEN 's'::"char" ELSE 'r'::"char" END, c.relowner))
        FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = 'pub'::pg_catalog.regnamespace
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
        UNION ALL
        SELECT p.oid::pg_catalog.regprocedure::text, 'FUNCTION', p.proowner,
               COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner))
        FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'pub'::pg_catalog.regnamespace
    ), granted AS (
        SELECT o.object, o.kind, a.grantee, a.privilege_type AS privilege, a.is_grantable
        FROM objects AS o, pg_catalog.aclexplode(o.acl) AS a
        WHERE a.grantee <> o.owner
    ), named AS (
        SELECT g.*, CASE WHEN g.grantee = 0 THEN 'PUBLIC'
                         ELSE g.grantee::pg_catalog.regrole::text END AS role
        FROM granted AS g
    )
    SELECT n.object, n.kind, n.role, n.privilege, n.is_grantable
    FROM named AS n
    WHERE n.is_grantable
       OR NOT EXISTS (
              SELECT FROM pub.documented_privileges() AS d
              WHERE d.object = n.object AND d.privilege = n.privilege
                AND (d.grantee = n.role OR (d.grantee = '*' AND n.role <> 'PUBLIC')))
    ORDER BY 1, 3, 4;
END;

-- Revoke every undocumented grant (see above), and, on the objects this transaction
-- created or replaced, the rights the migrating role's default privileges handed out
-- even where they look like a reader's: a role the operator means to read the feed is
-- granted that right by name (or holds pubctl_feed_reader), not by a default. Run by
-- `pubctl migrate` at the end of every run, as the owner of pub.
CREATE FUNCTION pub.revoke_undocumented_grants() RETURNS integer
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    g record;
    revoked integer := 0;
BEGIN
    FOR g IN
        SELECT u.object, u.kind, u.grantee, u.privilege, u.grantable,
               EXISTS (SELECT FROM pub.documented_privileges() AS d
                       WHERE d.object = u.object AND d.privilege = u.privilege
                         AND (d.grantee = u.grantee
                              OR (d.grantee = '*' AND u.grantee <> 'PUBLIC'))) AS documented
        FROM pub.undocumented_grants() AS u
        UNION ALL
        SELECT f.object, f.kind, f.grantee, f.privilege, false, false
        FROM pub.default_privilege_grants() AS f
    LOOP
        EXECUTE format('REVOKE %s %s ON %s %s FROM %s CASCADE',
                       CASE WHEN g.documented THEN 'GRANT OPTION FOR' ELSE '' END,
                       g.privilege, g.kind,
                       CASE WHEN g.kind = 'SCHEMA' THEN 'pub' ELSE g.object END,
                       CASE WHEN g.grantee = 'PUBLIC' THEN 'PUBLIC'
                            ELSE quote_ident(g.grantee) END);
        revoked := revoked + 1;
    END LOOP;
    RETURN revoked;
END;
$$;

-- Grants that the migrating role's default privileges put on objects of pub this
-- transaction created or replaced (their catalog row is this transaction's), other
-- than the documented ones of pubctl_capture.
CREATE FUNCTION pub.default_privilege_grants()
    RETURNS TABLE (object text, kind text, grantee text, privilege text)
    LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH defaulted AS (
        SELECT DISTINCT a.grantee
        FROM pg_catalog.pg_default_acl AS d, pg_catalog.aclexplode(d.defaclacl) AS a
        WHERE d.defaclrole = (SELECT r.oid FROM pg_catalog.pg_roles AS r
                              WHERE r.rolname = CURRENT_USER)
          AND d.defaclnamespace IN (0, 'pub'::pg_catalog.regnamespace)
          AND a.grantee <> d.defaclrole
    ), fresh AS (
        SELECT 'schema pub' AS object, 'SCHEMA' AS kind, n.nspowner AS owner, n.nspacl AS acl
        FROM pg_catalog.pg_namespace AS n
        WHERE n.nspname = 'pub' AND n.xmin = pg_catalog.pg_current_xact_id()::xid
        UNION ALL
        SELECT c.oid::pg_catalog.regclass::text,
               CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.relowner, c.relacl
        FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = 'pub'::pg_catalog.regnamespace
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          AND c.xmin = pg_catalog.pg_current_xact_id()::xid
        UNION ALL
        SELECT p.oid::pg_catalog.regprocedure::text, 'FUNCTION', p.proowner, p.proacl
        FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'pub'::pg_catalog.regnamespace
          AND p.xmin = pg_catalog.pg_current_xact_id()::xid
    )
    SELECT f.object, f.kind,
           CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::pg_catalog.regrole::text END,
           a.privilege_type
    FROM fresh AS f, pg_catalog.aclexplode(f.acl) AS a
    WHERE a.grantee IN (SELECT d.grantee FROM defaulted AS d)
      AND a.grantee <> f.owner
      AND NOT EXISTS (SELECT FROM pub.documented_privileges() AS d
                      WHERE d.object = f.object AND d.privilege = a.privilege_type
                        AND d.grantee IN ('pubctl_capture', 'PUBLIC')
                        AND d.grantee = CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                             ELSE a.grantee::pg_catalog.regrole::text END);
END;

REVOKE ALL ON FUNCTION pub.revoke_undocumented_grants() FROM PUBLIC;
