-- Revision 0002 (frozen), downgrade.
DROP FUNCTION pub.payload_hash(text);
DROP FUNCTION pub.explanation_canonical(bigint, text, text, timestamptz);
DROP FUNCTION pub.question_canonical(bigint, bigint, text, integer, integer, text, jsonb, integer, timestamptz);
DROP FUNCTION pub.topic_canonical(bigint, text, integer, timestamptz);
DROP FUNCTION pub.explanation_is_live(timestamptz, text);
DROP FUNCTION pub.question_is_live(timestamptz);
DROP FUNCTION pub.topic_is_live(timestamptz);
DROP FUNCTION pub.payload_rule_violation(text, bigint, text);
DROP FUNCTION pub.json_string_array(jsonb);
DROP TYPE pub.string_list;
DROP FUNCTION pub.is_json_safe_integer(bigint);
DROP FUNCTION pub.json_integer(bigint);
DROP FUNCTION pub.json_string(text);
