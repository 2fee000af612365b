-- Revision 0101 (frozen): capture skips a write while publishing is off only if the
-- switch is still off once its transaction has marked itself. Before, under READ
-- COMMITTED, an `enable` committing between capture's read of the switch and the mark
-- was not waited for, and the write was skipped with publishing on: lost until a later
-- backfill. Replaces one function; takes no lock on the application's tables.

SET LOCAL search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION pub.unpublished_write_allowed() RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    still_off boolean;
    seen bigint;
    latest bigint;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(pub.lock_key('unpublished_writers'));
    SELECT NOT s.publishing_enabled, s.publishing_epoch INTO still_off, seen
    FROM pub.settings AS s;
    SELECT e.last_value INTO latest FROM pub.publishing_epoch AS e;
    RETURN still_off IS TRUE AND seen IS NOT DISTINCT FROM latest;
END;
$$;
