-- Back to the element check of 0002 (lax JSON path).
CREATE OR REPLACE FUNCTION pub.json_string_array(value jsonb) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN pg_catalog.jsonb_typeof(value) = 'array'
             AND NOT pg_catalog.jsonb_path_exists(value, '$[*] ? (@.type() != "string")')
        THEN pg_catalog.to_json(
                 (pg_catalog.jsonb_populate_record(
                      NULL::pub.string_list,
                      pg_catalog.jsonb_build_object('items', value))).items)::text
    END;
END;
