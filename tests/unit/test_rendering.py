"""The SQL rendered from the definition: the schema files hold the current rendering
(so the definition cannot change without `make revision`), and migrations rendered
from a change hold only what changed."""

from __future__ import annotations

from pubctl import rendering, revision_sql, sources
from pubctl.sources import TEXT_TYPES, Column, Definition, Field, Kind, Source

from support.note_kind import NOTES


def test_the_schema_files_are_the_rendering_of_the_definition() -> None:
    """Edit pubctl/sources.py, then `make revision`: it renders these files again and
    freezes the change into a migration."""
    objects = rendering.render(sources.DEFINITION)
    for part, name in revision_sql.FILES.items():
        text = (revision_sql.SCHEMA / name).read_text()
        assert text == rendering.file_text(objects, part), f"{name}: run `make revision`"
    assert revision_sql.frozen_objects() == objects


def test_an_unchanged_definition_renders_no_migration() -> None:
    objects = rendering.render(sources.STUDY)
    assert revision_sql.delta(objects, objects) == ""


def test_a_new_kind_adds_its_objects_and_only_replaces_the_lists() -> None:
    before = rendering.render(sources.STUDY)
    after = rendering.render(Definition((*sources.STUDY.sources, NOTES)))
    up = revision_sql.delta(before, after)
    for created in (
        "CREATE TYPE pub.note_payload AS (note_id bigint, text text, topic_id bigint);",
        "CREATE INDEX content_note_rev_idx ON pub.content (rev) WHERE kind = 'note';",
        "CREATE OR REPLACE FUNCTION pub.capture_note_insert()",
        "CREATE OR REPLACE TRIGGER pub_capture_update AFTER UPDATE ON %I.study_note",
        "WHEN 'study_note' THEN '{note}'::text[]",
        "'note' = ANY (feed.kinds)",
    ):
        assert created in up
    # The existing kinds' objects are not touched.
    assert "pub.capture_question_insert()" not in up.split("settle_ownership")[0]
    assert "CREATE TYPE pub.question_payload" not in up
    down = revision_sql.delta(after, before)
    for dropped in (
        "DROP TYPE pub.note_payload;",
        "SELECT pub.forget_kind('note'); DROP INDEX pub.content_note_rev_idx;",
        "SELECT pub.detach_capture_trigger('study_note', 'pub_capture_insert');",
        "DROP FUNCTION pub.capture_note_insert();",
    ):
        assert dropped in down
    assert down.index("detach_capture_trigger") < down.index("DROP FUNCTION pub.capture_note")


def test_a_new_field_recreates_the_payload_type_and_what_uses_it() -> None:
    topics = sources.TOPICS
    wider = Source(
        topics.table,
        topics.target,
        topics.columns,
        (
            Kind(
                "topic",
                fields=(*topics.publishes[0].fields, Field("round_size", "exam_round_size")),
            ),
        ),
    )
    up = revision_sql.delta(
        rendering.render(sources.STUDY),
        rendering.render(Definition((wider, sources.QUESTIONS))),
    )
    # The function that uses the type goes first (no CASCADE), and comes back after.
    drop_function = up.index(
        "DROP FUNCTION pub.topic_canonical(bigint, text, integer, timestamptz);"
    )
    assert drop_function < up.index("DROP TYPE pub.topic_payload;")
    assert up.index("DROP TYPE pub.topic_payload;") < up.index(
        "CREATE TYPE pub.topic_payload AS (exam_round_size integer, name text, round_size"
    )
    assert "CREATE OR REPLACE FUNCTION pub.topic_canonical(" in up
    assert up.count("DROP FUNCTION pub.topic_canonical(") == 1
    assert "CREATE OR REPLACE FUNCTION pub.capture_topic_insert()" in up


def test_names_that_would_need_quoting_are_refused() -> None:
    for name in ("Body", "a b", "x'y", "body||evil()", "order", "", "x" * 64):
        try:
            Column(name, TEXT_TYPES)
        except ValueError:
            continue
        raise AssertionError(f"{name!r} was accepted")
    try:
        Kind("k" * 41, fields=())
    except ValueError:
        return
    raise AssertionError("a kind name too long for the names derived from it was accepted")


def test_a_renamed_column_is_read_under_its_new_name_and_published_under_its_key() -> None:
    renamed = sources.STUDY.renamed("study_question", "exam_name", "exam_title")
    objects = {o.identity: o.sql for o in rendering.render(renamed)}
    assert "r.exam_title AS exam_name" in objects["function pub.source_select_list(text)"]
    assert "NEW.exam_title" in objects["function pub.capture_question_update()"]
    assert "'study_question', 'exam_title'," in objects["function pub.source_columns(text)"]
    same = {o.identity: o.sql for o in rendering.render(sources.STUDY)}
    for identity in (
        "type pub.question_payload",
        next(i for i in same if "question_canonical" in i),
    ):
        assert objects[identity] == same[identity]


def test_make_revision_freezes_what_the_definition_changed(tmp_path, monkeypatch) -> None:
    """What `make revision` runs after Alembic wrote the script: the frozen SQL of the
    change beside it, and the schema files rendered again."""
    for name in revision_sql.FILES.values():
        (tmp_path / name).write_text((revision_sql.SCHEMA / name).read_text())
    wider = Definition((*sources.STUDY.sources, NOTES))
    monkeypatch.setattr(sources, "DEFINITION", wider)
    revision_sql.main([str(tmp_path / "0199_notes")], schema=tmp_path)
    up = (tmp_path / "0199_notes.up.sql").read_text()
    down = (tmp_path / "0199_notes.down.sql").read_text()
    assert "CREATE TYPE pub.note_payload" in up and "DROP TYPE pub.note_payload;" in down
    assert revision_sql.frozen_objects(tmp_path) == rendering.render(wider)
    # Nothing changed since: nothing to freeze.
    revision_sql.main([str(tmp_path / "0200_same")], schema=tmp_path)
    assert "did not change" in (tmp_path / "0200_same.up.sql").read_text()
