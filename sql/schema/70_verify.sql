-- Verify: what is published against what the source says, set-based, by id range.
--
-- For one source table and one range of ids (lo, hi] (lo NULL: no lower bound, hi
-- NULL: no upper bound, so that a run's ranges cover every id, both ends of bigint
-- included) it projects the source rows with the same functions the triggers use,
-- joins them with pub.content over the same range, and returns one row per item that
-- differs:
--   missing   the source has a live item, nothing live is published
--   orphaned  something live is published, the source row is deleted, not ready or gone
--   stale     both live, but the published payload or hash is not the source's (the
--             payload compared as text: the stored bytes must be the canonical ones)
--   old_schema published under an older schema_version than the projection's
-- with pending = true when an outbox row for the item is still waiting to be applied
-- (the difference may be explained by it). detail names the differing payload keys.
-- The hash of each stored payload and the SQL projection itself are checked in
-- Python against the independent reference (pubctl/verify.py). Capture itself is
-- checked by pub.capture_problems (sql/schema/40_capture.sql).
--
-- A live row that breaks the payload rules makes the projection raise PB001, as it does
-- in capture and backfill. verify then asks pub.verify_rule_breaks which items of the
-- range break which rule, reports them as `invalid`, and compares the rest of the range
-- around their rows.

SET LOCAL search_path = pg_catalog, pg_temp;

-- Like backfill, verify reads only the projected columns, checks their types first
-- (pub.require_source), and runs with row-level security off: it must see every
-- row, and never run code of the table owner's making as the operator.
CREATE FUNCTION pub.verify_range(source text, lo bigint, hi bigint)
    RETURNS TABLE (kind text, source_id bigint, category text, pending boolean, detail text[])
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    SET row_security = off
AS $$
DECLARE
    app name := (SELECT s.app_schema FROM pub.settings s);
    kinds text[] := pub.require_source(source);
BEGIN

    RETURN QUERY EXECUTE format($q$
        WITH rows AS MATERIALIZED (
            SELECT %3$s FROM %1$I.%2$I AS r
            WHERE ($1 IS NULL OR r.id > $1) AND ($2 IS NULL OR r.id <= $2)
        ), expected AS MATERIALIZED (%4$s
        ), published AS (
            SELECT c.* FROM pub.content AS c
            WHERE c.kind = ANY ($3)
              AND ($1 IS NULL OR c.source_id > $1) AND ($2 IS NULL OR c.source_id <= $2)
        ), joined AS MATERIALIZED (
            SELECT COALESCE(e.kind, p.kind) AS kind, COALESCE(e.source_id, p.source_id) AS source_id,
                   e.canonical::text AS want, pub.payload_hash(e.canonical::text) AS want_hash,
                   p.payload::text AS have, p.payload_hash AS have_hash,
                   COALESCE(NOT p.deleted, false) AS have_live, p.schema_version
            FROM expected AS e
            FULL JOIN published AS p ON (p.kind, p.source_id) = (e.kind, e.source_id)
        ), waiting AS (
            -- Items with outbox rows not applied yet: one scan of the outbox per range.
            SELECT DISTINCT o.kind, o.source_id FROM pub.outbox AS o
            WHERE o.kind = ANY ($3)
              AND ($1 IS NULL OR o.source_id > $1) AND ($2 IS NULL OR o.source_id <= $2)
        ), judged AS (
            SELECT j.*,
                   CASE
                       WHEN j.want IS NOT NULL AND NOT j.have_live THEN 'missing'
                       WHEN j.want IS NULL AND j.have_live THEN 'orphaned'
                       WHEN j.want IS NOT NULL
                            AND (j.have_hash <> j.want_hash OR j.have <> j.want) THEN 'stale'
                       -- A tombstone is {} with the hash of {}.
                       WHEN j.want IS NULL AND j.have IS NOT NULL
                            AND (j.have <> '{}' OR j.have_hash <> pub.payload_hash('{}'))
                           THEN 'stale'
                   END AS category
            FROM joined AS j
        )
        SELECT j.kind, j.source_id, j.category, w.kind IS NOT NULL,
               CASE WHEN j.category = 'stale' THEN ARRAY(
                   SELECT COALESCE(a.key, b.key)
                   FROM jsonb_each(j.want::jsonb) AS a
                   FULL JOIN jsonb_each(j.have::jsonb) AS b ON b.key = a.key
                   WHERE a.value IS DISTINCT FROM b.value
                   ORDER BY 1)
               END
        FROM judged AS j
        LEFT JOIN waiting AS w ON (w.kind, w.source_id) = (j.kind, j.source_id)
        WHERE j.category IS NOT NULL
        UNION ALL
        SELECT j.kind, j.source_id, 'old_schema', false,
               ARRAY['schema_version ' || j.schema_version]
        FROM joined AS j
        WHERE j.schema_version < pub.schema_version()
    $q$, app, source, pub.source_select_list(source), pub.source_items_sql(source, 'rows'))
    USING lo, hi, kinds;
END;
$$;

REVOKE ALL ON FUNCTION pub.verify_range(text, bigint, bigint) FROM PUBLIC;

-- The upper bound of the next keyset page of a source table: the id of its
-- page_size-th row after after_id (after_id NULL: from the first row), and how many
-- rows the page has.
CREATE FUNCTION pub.source_page_bound(
    source text, after_id bigint, page_size integer, OUT rows_in_page integer, OUT last_id bigint
)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    SET row_security = off
AS $$
BEGIN
    PERFORM pub.require_source(source);
    EXECUTE format(
        'SELECT count(*)::integer, max(id)::bigint FROM '
        '(SELECT t.id FROM %I.%I AS t WHERE ($1 IS NULL OR t.id > $1) ORDER BY t.id LIMIT $2) '
        'AS page',
        (SELECT s.app_schema FROM pub.settings s), source)
    INTO rows_in_page, last_id
    USING after_id, page_size;
END;
$$;

-- The source rows of a range, each with its items' canonical text from the SQL
-- projection and their published hashes: what the Python reference projection and its
-- own RFC 8785 hashes are held against. row_data holds what the reference needs to judge
-- what the row publishes, and nothing it does not publish: the id and deleted_at of
-- every row; the other projected columns only while the row is live; the explanation
-- only while it is 'ready'; of explanation_status (a liveness input, never published)
-- at most 64 characters, which tells 'ready' from anything else. So a huge draft
-- explanation, or anything in a soft-deleted row, is neither read nor shipped.
CREATE FUNCTION pub.source_projection(source text, lo bigint, hi bigint)
    RETURNS TABLE (source_id bigint, row_data jsonb, canonicals jsonb, published_hashes jsonb)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    SET row_security = off
AS $$
DECLARE
    app name := (SELECT s.app_schema FROM pub.settings s);
    kinds text[] := pub.require_source(source);
    -- "'name', value, ..." for jsonb_build_object: each projected column, as far as
    -- the row publishes it (rendered from the definition).
    published_values text := pub.source_row_data_sql(source);
BEGIN
    RETURN QUERY EXECUTE format($q$
        WITH rows AS MATERIALIZED (
            SELECT %3$s FROM %1$I.%2$I AS r
            WHERE ($1 IS NULL OR r.id > $1) AND ($2 IS NULL OR r.id <= $2)
        ), items AS (%4$s
        ), canonicals AS (
            SELECT i.source_id, jsonb_object_agg(i.kind, i.canonical::text) AS canonicals
            FROM items AS i GROUP BY i.source_id
        )
        SELECT r.id::bigint, jsonb_build_object(%5$s), k.canonicals,
               (SELECT jsonb_object_agg(c.kind, c.payload_hash) FROM pub.content AS c
                WHERE c.kind = ANY ($3) AND c.source_id = r.id)
        FROM rows AS r
        JOIN canonicals AS k ON k.source_id = r.id
        ORDER BY r.id
    $q$, app, source, pub.source_select_list(source), pub.source_items_sql(source, 'rows'),
       published_values)
    USING lo, hi, kinds;
END;
$$;

REVOKE ALL ON FUNCTION pub.source_page_bound(text, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION pub.source_projection(text, bigint, bigint) FROM PUBLIC;

-- The items of a range (lo, hi] whose projection breaks the payload rules (the error
-- PB001 that capture and backfill raise for them), each with the rule it names. verify
-- calls it only for a range whose comparison raised that error. Each kind is projected
-- on its own (a question with bad choices may still have a good explanation), over all
-- the range's rows and then over halves of the failing ones, each try in a
-- subtransaction of its own: k such rows among n cost about 2k * log2(n) small
-- projections per kind.
CREATE FUNCTION pub.verify_rule_breaks(source text, lo bigint, hi bigint)
    RETURNS TABLE (kind text, source_id bigint, rule text)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    SET row_security = off
AS $$
DECLARE
    app name := (SELECT s.app_schema FROM pub.settings s);
    kinds text[] := pub.require_source(source);
    ids bigint[];
    probe text;
    one_kind text;
    todo integer[];  -- pairs of positions in ids: the slices still to try
    first integer;
    last integer;
    message text;
    detail text;
BEGIN
    EXECUTE format(
        'SELECT COALESCE(array_agg(r.id::bigint ORDER BY r.id), ''{}'') FROM %I.%I AS r '
        'WHERE ($1 IS NULL OR r.id > $1) AND ($2 IS NULL OR r.id <= $2)', app, source)
    INTO ids
    USING lo, hi;
    -- The other kinds' projection is never evaluated: the kind filter is a constant
    -- in each branch of the items' UNION ALL.
    probe := format($q$
        WITH rows AS MATERIALIZED (
            SELECT %3$s FROM %1$I.%2$I AS r WHERE r.id = ANY ($1)
        )
        SELECT count(i.canonical) FROM (%4$s) AS i WHERE i.kind = $2
    $q$, app, source, pub.source_select_list(source), pub.source_items_sql(source, 'rows'));
    FOREACH one_kind IN ARRAY kinds LOOP
        todo := ARRAY[1, cardinality(ids)];
        WHILE cardinality(todo) > 0 LOOP
            first := todo[cardinality(todo) - 1];
            last := todo[cardinality(todo)];
            todo := todo[1:cardinality(todo) - 2];
            CONTINUE WHEN first > last;
            BEGIN
                EXECUTE probe USING ids[first:last], one_kind;
            EXCEPTION WHEN SQLSTATE 'PB001' THEN
                IF first = last THEN
                    GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
                    kind := one_kind;
                    source_id := ids[first];
                    rule := COALESCE(substring(detail FROM 'rule=(.*)$'), message);
                    RETURN NEXT;
                ELSE
                    -- Both halves, the lower one tried first.
                    todo := todo || ARRAY[(first + last) / 2 + 1, last, first, (first + last) / 2];
                END IF;
            END;
        END LOOP;
    END LOOP;
END;
$$;

REVOKE ALL ON FUNCTION pub.verify_rule_breaks(text, bigint, bigint) FROM PUBLIC;
