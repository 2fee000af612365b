-- The element check of 0002 ran its JSON path in lax mode, which unwraps nested
-- arrays before filtering: [["a"]] passed as an array of strings and was published
-- as a nested array. Strict mode looks at each element as it is. The signature is
-- unchanged, so the projection functions that inline this one keep working.
CREATE OR REPLACE FUNCTION pub.json_string_array(value jsonb) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN pg_catalog.jsonb_typeof(value) = 'array'
             AND NOT pg_catalog.jsonb_path_exists(value, 'strict $[*] ? (@.type() != "string")')
        -- jsonb_populate_record turns the array into text[] without a subquery per
        -- row; to_json(text[]) prints it compact, each element escaped like to_json(text).
        THEN pg_catalog.to_json(
                 (pg_catalog.jsonb_populate_record(
                      NULL::pub.string_list,
                      pg_catalog.jsonb_build_object('items', value))).items)::text
    END;
END;
