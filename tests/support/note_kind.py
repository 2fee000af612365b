"""A definition with one more kind, for the test that a kind is defined in one place:
``study_note`` rows (an id, a topic id, a text and a soft delete) publish kind ``note``.

Commands read it through ``PUBCTL_DEFINITION=support.note_kind:DEFINITION``."""

from __future__ import annotations

from pubctl.sources import (
    ID_TYPES,
    STUDY,
    TEXT_TYPES,
    TIMESTAMP_TYPES,
    Column,
    Definition,
    Field,
    Kind,
    Source,
)

NOTES = Source(
    table="study_note",
    target="notes",
    columns=(
        Column("id", ID_TYPES),
        Column("topic_id", ID_TYPES),
        Column("text", TEXT_TYPES),
        Column("deleted_at", TIMESTAMP_TYPES),
    ),
    publishes=(
        Kind(
            "note",
            fields=(Field("note_id", "id"), Field("topic_id", "topic_id"), Field("text", "text")),
        ),
    ),
)

DEFINITION = Definition((*STUDY.sources, NOTES))

TABLE_SQL = """
CREATE TABLE study_note (
    id         bigint PRIMARY KEY,
    topic_id   bigint NOT NULL,
    text       text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
)"""
