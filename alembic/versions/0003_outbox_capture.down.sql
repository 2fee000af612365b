-- Revision 0003 (frozen), downgrade: detach from the application's tables first.
DO $detach$
DECLARE
    app name := (SELECT s.app_schema FROM pub.settings s);
    tbl text;
    trg text;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['study_topic', 'study_question'] LOOP
        FOREACH trg IN ARRAY ARRAY['pub_capture_insert', 'pub_capture_update',
                                   'pub_capture_delete', 'pub_refuse_truncate'] LOOP
            IF pg_catalog.to_regclass(pg_catalog.format('%I.%I', app, tbl)) IS NOT NULL THEN
                EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %I.%I', trg, app, tbl);
            END IF;
        END LOOP;
    END LOOP;
END;
$detach$;

DROP FUNCTION pub.refuse_truncate();
DROP FUNCTION pub.capture_question_update();
DROP FUNCTION pub.capture_topic_update();
DROP FUNCTION pub.capture_question_delete();
DROP FUNCTION pub.capture_topic_delete();
DROP FUNCTION pub.capture_question_insert();
DROP FUNCTION pub.capture_topic_insert();
DROP FUNCTION pub.enqueue(text[], bigint[], text[]);
DROP FUNCTION pub.notify_outbox();
DROP FUNCTION pub.schema_version();
DROP FUNCTION pub.outbox_payload_hash(text);
DROP FUNCTION pub.outbox_payload(text);
DROP FUNCTION pub.publishing_enabled();
DROP TABLE pub.outbox;
