-- The projection: what each source row publishes, as RFC 8785 canonical JSON text.
--
-- This is the one source of truth inside the database; triggers, backfill and verify
-- all call these functions. Each returns the canonical text of the item's payload, or
-- NULL when the item is not live (a tombstone). The payload column is that text cast
-- to jsonb, and the hash (pub.payload_hash, at the end of this file) is computed over
-- that same text, so the two can never disagree.
--
-- Why the text is built by concatenation per kind: the keys of each kind are fixed
-- and ASCII, so their RFC 8785 order is known in advance; strings are escaped by
-- to_json(text), whose escaping is exactly RFC 8785's (\" \\ \b \f \n \r \t, other
-- control characters as \u00xx lowercase, everything else literal); integers print
-- as digits, which is RFC 8785's form for integers within +-(2^53-1). A generic
-- recursive canonicaliser in SQL measured about 45x slower.
--
-- Why these are LANGUAGE sql STABLE functions with a BEGIN ATOMIC body and no SET
-- search_path: the planner inlines them into the calling query (no call overhead per
-- row; a SET clause prevents inlining and measured 2.4x slower), and a BEGIN ATOMIC
-- body is parsed when the function is created, with every name resolved then, so the
-- caller's search_path cannot change what they call. They are created with
-- search_path = pg_catalog, pg_temp. STABLE, not IMMUTABLE: to_json is STABLE, and an
-- IMMUTABLE function whose body is not is never inlined.

SET LOCAL search_path = pg_catalog, pg_temp;

-- JSON text of a nullable string / integer.
CREATE FUNCTION pub.json_string(value text) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT COALESCE(pg_catalog.to_json(value)::text, 'null');
END;

CREATE FUNCTION pub.json_integer(value bigint) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT COALESCE(value::text, 'null');
END;

-- Integers RFC 8785 can carry exactly (IEEE double): beyond them a number would be
-- published as a different number, so such rows are refused instead.
CREATE FUNCTION pub.is_json_safe_integer(value bigint) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT value IS NULL OR value BETWEEN -9007199254740991 AND 9007199254740991;
END;

-- A JSON array of strings, as canonical text; NULL when it is anything else.
CREATE TYPE pub.string_list AS (items text[]);

CREATE FUNCTION pub.json_string_array(value jsonb) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        -- strict: a lax JSON path would unwrap nested arrays and let [["a"]] through.
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

-- Raises the payload-rule error (SQLSTATE PB001). Declared STABLE so that the
-- projection functions calling it stay inlinable; it is only reached for a bad row.
CREATE FUNCTION pub.payload_rule_violation(kind text, source_id bigint, rule text)
    RETURNS text
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'pubctl: % % breaks the payload rules: %', kind, source_id, rule
        USING ERRCODE = 'PB001',
              DETAIL = format('kind=%s source_id=%s rule=%s', kind, source_id, rule),
              HINT = 'Fix the row: the write is refused rather than published wrong.';
END;
$$;

-- Liveness, each row's own (a deleted topic does not tombstone its questions).
CREATE FUNCTION pub.topic_is_live(deleted_at timestamptz) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT deleted_at IS NULL;
END;

CREATE FUNCTION pub.question_is_live(deleted_at timestamptz) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT deleted_at IS NULL;
END;

-- The explanation is live while its question is live and explanation_status is
-- 'ready' (a ready explanation with NULL text publishes "explanation": null).
CREATE FUNCTION pub.explanation_is_live(deleted_at timestamptz, explanation_status text)
    RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT pub.question_is_live(deleted_at) AND explanation_status IS NOT DISTINCT FROM 'ready';
END;

CREATE FUNCTION pub.topic_canonical(
    topic_id bigint, name text, exam_round_size integer, deleted_at timestamptz
) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN NOT pub.topic_is_live(deleted_at) THEN NULL
        WHEN NOT pub.is_json_safe_integer(topic_id)
            THEN pub.payload_rule_violation('topic', topic_id, 'id must be within +-(2^53-1)')
        ELSE '{"exam_round_size":' || pub.json_integer(exam_round_size)
            || ',"name":' || pub.json_string(name)
            || ',"topic_id":' || pub.json_integer(topic_id)
            || '}'
    END;
END;

CREATE FUNCTION pub.question_canonical(
    question_id bigint, topic_id bigint, exam_name text, exam_round integer,
    number integer, body text, choices jsonb, answer integer, deleted_at timestamptz
) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN NOT pub.question_is_live(deleted_at) THEN NULL
        WHEN NOT (pub.is_json_safe_integer(question_id) AND pub.is_json_safe_integer(topic_id))
            THEN pub.payload_rule_violation('question', question_id,
                                            'id and topic_id must be within +-(2^53-1)')
        ELSE '{"answer":' || pub.json_integer(answer)
            || ',"body":' || pub.json_string(body)
            -- Checked and printed in one evaluation: the rule error only when NULL.
            || ',"choices":' || COALESCE(
                   pub.json_string_array(choices),
                   pub.payload_rule_violation('question', question_id,
                                              'choices must be a JSON array of strings'))
            || ',"exam_name":' || pub.json_string(exam_name)
            || ',"exam_round":' || pub.json_integer(exam_round)
            || ',"number":' || pub.json_integer(number)
            || ',"question_id":' || pub.json_integer(question_id)
            || ',"topic_id":' || pub.json_integer(topic_id)
            || '}'
    END;
END;

CREATE FUNCTION pub.explanation_canonical(
    question_id bigint, explanation text, explanation_status text, deleted_at timestamptz
) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN NOT pub.explanation_is_live(deleted_at, explanation_status) THEN NULL
        WHEN NOT pub.is_json_safe_integer(question_id)
            THEN pub.payload_rule_violation('explanation', question_id,
                                            'id must be within +-(2^53-1)')
        ELSE '{"explanation":' || pub.json_string(explanation)
            || ',"question_id":' || pub.json_integer(question_id)
            || '}'
    END;
END;

-- The one place the payload hash is defined: lowercase hex SHA-256 of the UTF-8
-- bytes of the canonical text.
CREATE FUNCTION pub.payload_hash(canonical text) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(canonical, 'UTF8')), 'hex');
END;
