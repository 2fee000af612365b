-- Revision 0100 (frozen), downgrade to base: everything of pubctl's in schema pub
-- (schema pub itself, and Alembic's version table, go after the last step).

SET LOCAL search_path = pg_catalog, pg_temp;

-- Detach: dropping the capture functions drops the triggers that call them, which,
-- unlike DROP TRIGGER, does not require owning the application's tables.
DROP FUNCTION pub.capture_topic_insert(), pub.capture_question_insert(),
    pub.capture_topic_delete(), pub.capture_question_delete(),
    pub.capture_topic_update(), pub.capture_question_update(),
    pub.refuse_truncate() CASCADE;

DROP FUNCTION
    pub.apply_batch(integer),
    pub.backfill_page(text,bigint,integer,boolean,boolean),
    pub.capture_problems(),
    pub.explanation_canonical(bigint,text,text,timestamp with time zone),
    pub.explanation_is_live(timestamp with time zone,text),
    pub.feed(bigint,integer,text[]),
    pub.feed_id(),
    pub.health(),
    pub.is_json_safe_integer(bigint),
    pub.json_integer(bigint),
    pub.json_string(text),
    pub.json_string_array(jsonb),
    pub.lock_holders(text),
    pub.lock_key(text),
    pub.notify_outbox(),
    pub.outbox_payload(text),
    pub.outbox_payload_hash(text),
    pub.payload_hash(text),
    pub.payload_rule_violation(text,bigint,text),
    pub.publishing_enabled(),
    pub.question_canonical(bigint,bigint,text,integer,integer,text,jsonb,integer,timestamp with time zone),
    pub.question_is_live(timestamp with time zone),
    pub.require_question_shape(regtype,regtype,regtype,regtype,regtype,regtype,regtype,regtype,regtype,regtype,regtype),
    pub.require_source(text),
    pub.require_topic_shape(regtype,regtype,regtype,regtype),
    pub.schema_version(),
    pub.set_publishing(boolean),
    pub.source_column_problems(text),
    pub.source_columns(text),
    pub.source_items_sql(text,text),
    pub.source_kinds(text),
    pub.source_page_bound(text,bigint,integer),
    pub.source_projection(text,bigint,bigint),
    pub.source_select_list(text),
    pub.source_shape_problems(text),
    pub.source_shape_violation(text),
    pub.topic_canonical(bigint,text,integer,timestamp with time zone),
    pub.topic_is_live(timestamp with time zone),
    pub.unknown_lock(text),
    pub.unpublished_write_allowed(),
    pub.verify_range(text,bigint,bigint);

DROP TABLE pub.backfill_runs, pub.capture_triggers, pub.content, pub.outbox, pub.rev_counter,
    pub.settings;
DROP SEQUENCE pub.publishing_epoch;
DROP TYPE pub.string_list;

-- The capture role keeps no right in this database; it goes when no other database
-- still uses it.
DO $role$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pubctl_capture') THEN
        REVOKE ALL ON SCHEMA pub FROM pubctl_capture;
        BEGIN
            DROP ROLE pubctl_capture;
        EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
            NULL;  -- still used by another database, or not ours to drop
        END;
    END IF;
END;
$role$;
