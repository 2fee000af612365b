-- Rendered from the definition in pubctl/sources.py by pubctl/rendering.py: do not
-- edit; change the definition and run `make revision` (docs/operations.md,
-- "Changing a payload"). Each object follows a marker line naming it.

SET LOCAL search_path = pg_catalog, pg_temp;

-- object: trigger pub_capture_insert on study_topic
-- drop: SELECT pub.detach_capture_trigger('study_topic', 'pub_capture_insert');
SELECT pub.attach_capture_trigger('study_topic', 'pub_capture_insert', $t$
CREATE OR REPLACE TRIGGER pub_capture_insert AFTER INSERT ON %I.study_topic
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pub.capture_topic_insert()$t$);

-- object: trigger pub_capture_update on study_topic
-- drop: SELECT pub.detach_capture_trigger('study_topic', 'pub_capture_update');
SELECT pub.attach_capture_trigger('study_topic', 'pub_capture_update', $t$
CREATE OR REPLACE TRIGGER pub_capture_update AFTER UPDATE ON %I.study_topic
    FOR EACH ROW
    WHEN ((OLD.id, OLD.name COLLATE "C", OLD.exam_round_size, OLD.deleted_at IS NULL)
          IS DISTINCT FROM
          (NEW.id, NEW.name COLLATE "C", NEW.exam_round_size, NEW.deleted_at IS NULL))
    EXECUTE FUNCTION pub.capture_topic_update()$t$);

-- object: trigger pub_capture_delete on study_topic
-- drop: SELECT pub.detach_capture_trigger('study_topic', 'pub_capture_delete');
SELECT pub.attach_capture_trigger('study_topic', 'pub_capture_delete', $t$
CREATE OR REPLACE TRIGGER pub_capture_delete AFTER DELETE ON %I.study_topic
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pub.capture_topic_delete()$t$);

-- object: trigger pub_refuse_truncate on study_topic
-- drop: SELECT pub.detach_capture_trigger('study_topic', 'pub_refuse_truncate'); DELETE FROM pub.backfill_runs WHERE source = 'study_topic';
SELECT pub.attach_capture_trigger('study_topic', 'pub_refuse_truncate', $t$
CREATE OR REPLACE TRIGGER pub_refuse_truncate BEFORE TRUNCATE ON %I.study_topic
    FOR EACH STATEMENT EXECUTE FUNCTION pub.refuse_truncate()$t$);

-- object: trigger pub_capture_insert on study_question
-- drop: SELECT pub.detach_capture_trigger('study_question', 'pub_capture_insert');
SELECT pub.attach_capture_trigger('study_question', 'pub_capture_insert', $t$
CREATE OR REPLACE TRIGGER pub_capture_insert AFTER INSERT ON %I.study_question
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pub.capture_question_insert()$t$);

-- object: trigger pub_capture_update on study_question
-- drop: SELECT pub.detach_capture_trigger('study_question', 'pub_capture_update');
SELECT pub.attach_capture_trigger('study_question', 'pub_capture_update', $t$
CREATE OR REPLACE TRIGGER pub_capture_update AFTER UPDATE ON %I.study_question
    FOR EACH ROW
    WHEN ((OLD.id, OLD.topic_id, OLD.exam_name COLLATE "C", OLD.exam_round, OLD.number, OLD.body COLLATE "C", OLD.choices, OLD.answer, OLD.explanation COLLATE "C", OLD.explanation_status COLLATE "C", OLD.deleted_at IS NULL)
          IS DISTINCT FROM
          (NEW.id, NEW.topic_id, NEW.exam_name COLLATE "C", NEW.exam_round, NEW.number, NEW.body COLLATE "C", NEW.choices, NEW.answer, NEW.explanation COLLATE "C", NEW.explanation_status COLLATE "C", NEW.deleted_at IS NULL))
    EXECUTE FUNCTION pub.capture_question_update()$t$);

-- object: trigger pub_capture_delete on study_question
-- drop: SELECT pub.detach_capture_trigger('study_question', 'pub_capture_delete');
SELECT pub.attach_capture_trigger('study_question', 'pub_capture_delete', $t$
CREATE OR REPLACE TRIGGER pub_capture_delete AFTER DELETE ON %I.study_question
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pub.capture_question_delete()$t$);

-- object: trigger pub_refuse_truncate on study_question
-- drop: SELECT pub.detach_capture_trigger('study_question', 'pub_refuse_truncate'); DELETE FROM pub.backfill_runs WHERE source = 'study_question';
SELECT pub.attach_capture_trigger('study_question', 'pub_refuse_truncate', $t$
CREATE OR REPLACE TRIGGER pub_refuse_truncate BEFORE TRUNCATE ON %I.study_question
    FOR EACH STATEMENT EXECUTE FUNCTION pub.refuse_truncate()$t$);

-- object: index pub.content_topic_rev_idx
-- drop: SELECT pub.forget_kind('topic'); DROP INDEX pub.content_topic_rev_idx;
CREATE INDEX content_topic_rev_idx ON pub.content (rev) WHERE kind = 'topic';

-- object: index pub.content_question_rev_idx
-- drop: SELECT pub.forget_kind('question'); DROP INDEX pub.content_question_rev_idx;
CREATE INDEX content_question_rev_idx ON pub.content (rev) WHERE kind = 'question';

-- object: index pub.content_explanation_rev_idx
-- drop: SELECT pub.forget_kind('explanation'); DROP INDEX pub.content_explanation_rev_idx;
CREATE INDEX content_explanation_rev_idx ON pub.content (rev) WHERE kind = 'explanation';

-- object: constraint outbox_kind_check on pub.outbox
-- drop: ALTER TABLE pub.outbox DROP CONSTRAINT outbox_kind_check;
ALTER TABLE pub.outbox DROP CONSTRAINT IF EXISTS outbox_kind_check,
    ADD CONSTRAINT outbox_kind_check CHECK (kind IN ('topic', 'question', 'explanation'));

-- object: constraint content_kind_check on pub.content
-- drop: ALTER TABLE pub.content DROP CONSTRAINT content_kind_check;
ALTER TABLE pub.content DROP CONSTRAINT IF EXISTS content_kind_check,
    ADD CONSTRAINT content_kind_check CHECK (kind IN ('topic', 'question', 'explanation'));

-- object: constraint backfill_runs_source_check on pub.backfill_runs
-- drop: ALTER TABLE pub.backfill_runs DROP CONSTRAINT backfill_runs_source_check;
ALTER TABLE pub.backfill_runs DROP CONSTRAINT IF EXISTS backfill_runs_source_check,
    ADD CONSTRAINT backfill_runs_source_check CHECK (source IN ('study_topic', 'study_question'));

-- object: constraint leases_name_check on pub.leases
-- drop: ALTER TABLE pub.leases DROP CONSTRAINT leases_name_check;
ALTER TABLE pub.leases DROP CONSTRAINT IF EXISTS leases_name_check,
    ADD CONSTRAINT leases_name_check CHECK (name IN ('worker', 'backfill:study_topic', 'backfill:study_question'));

-- object: function pub.feed(bigint, integer, text[])
-- drop: DROP FUNCTION pub.feed(bigint, integer, text[]);
-- The feed: item changes in rev order, for viewers (50_apply.sql says why one
-- branch per kind, each reading its kind's partial rev index).
CREATE OR REPLACE FUNCTION pub.feed(
    after_rev bigint, max_rows integer DEFAULT 1000, kinds text[] DEFAULT NULL
)
    RETURNS TABLE (
        rev bigint, kind text, pub_id uuid, source_id bigint, payload json,
        payload_hash text, schema_version integer, deleted boolean
    )
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT f.rev, f.kind, f.pub_id, f.source_id, f.payload, f.payload_hash,
           f.schema_version, f.deleted
    FROM (
        (SELECT c.* FROM pub.content AS c
         WHERE feed.kinds IS NULL AND c.rev > COALESCE(feed.after_rev, 0)
         ORDER BY c.rev LIMIT GREATEST(COALESCE(feed.max_rows, 1000), 0))
        UNION ALL
        (SELECT c.* FROM pub.content AS c
         WHERE 'topic' = ANY (feed.kinds) AND c.kind = 'topic'
           AND c.rev > COALESCE(feed.after_rev, 0)
         ORDER BY c.rev LIMIT GREATEST(COALESCE(feed.max_rows, 1000), 0))
        UNION ALL
        (SELECT c.* FROM pub.content AS c
         WHERE 'question' = ANY (feed.kinds) AND c.kind = 'question'
           AND c.rev > COALESCE(feed.after_rev, 0)
         ORDER BY c.rev LIMIT GREATEST(COALESCE(feed.max_rows, 1000), 0))
        UNION ALL
        (SELECT c.* FROM pub.content AS c
         WHERE 'explanation' = ANY (feed.kinds) AND c.kind = 'explanation'
           AND c.rev > COALESCE(feed.after_rev, 0)
         ORDER BY c.rev LIMIT GREATEST(COALESCE(feed.max_rows, 1000), 0))
    ) AS f
    ORDER BY f.rev
    LIMIT GREATEST(COALESCE(feed.max_rows, 1000), 0);
END;

REVOKE ALL ON FUNCTION pub.feed(bigint, integer, text[]) FROM PUBLIC;

-- object: ownership
-- drop: SELECT 1;
SELECT pub.settle_ownership(ARRAY[
    'pub.capture_topic_insert()',
    'pub.capture_topic_delete()',
    'pub.capture_topic_update()',
    'pub.capture_question_insert()',
    'pub.capture_question_delete()',
    'pub.capture_question_update()'
]::regprocedure[]);

-- object: shape check
-- drop: SELECT 1;
SELECT pub.require_source(s) FROM unnest(pub.source_tables()) AS s;
