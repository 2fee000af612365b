-- Revision 0101, down: the definition of 0100.

SET LOCAL search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION pub.unpublished_write_allowed() RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    seen bigint;
    latest bigint;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(pub.lock_key('unpublished_writers'));
    SELECT s.publishing_epoch INTO seen FROM pub.settings AS s;
    SELECT e.last_value INTO latest FROM pub.publishing_epoch AS e;
    RETURN seen IS NOT DISTINCT FROM latest;
END;
$$;
