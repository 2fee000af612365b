"""What the docs show runs: the viewer example, and the Debezium connector's columns."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from pubctl import migrate
from pubctl.backfill import Backfill, Options

from support.db import Database
from support.serve import Served, reader_url

DOCS = Path(__file__).resolve().parents[2] / "docs"


def load_consumer() -> Any:
    spec = importlib.util.spec_from_file_location(
        "viewer_consumer", DOCS / "examples" / "viewer_consumer.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def _grant_viewer(conn: psycopg.Connection[Any]) -> None:
    conn.execute("GRANT USAGE ON SCHEMA pub TO docs_viewer")
    conn.execute(
        "GRANT EXECUTE ON FUNCTION pub.feed(bigint, integer, text[]), pub.feed_id() TO docs_viewer"
    )


def test_viewer_example_follows_the_feed_with_the_two_grants(pub_db: Database) -> None:
    consumer = load_consumer()
    with pub_db.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS docs_viewer")
        conn.execute("CREATE ROLE docs_viewer LOGIN")
        _grant_viewer(conn)
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy'), (2, 'Gone')")
        conn.execute(
            "INSERT INTO study_question (id, topic_id, exam_name, exam_round, number, body, choices, explanation_status)"
            " SELECT g, 1 + g % 2, 'Exam', 1, g, 'q' || g, '[\"a\"]', 'draft' FROM generate_series(1, 2500) g"
        )
        conn.execute("SELECT pub.apply_batch(10000)")
    url = pub_db.url.replace("user=postgres", "user=docs_viewer")
    copy = consumer.Copy()
    assert consumer.sync(url, copy) is False
    assert len(copy.items) == 2502
    with pub_db.connect() as conn:
        conn.execute("UPDATE study_question SET deleted_at = now() WHERE id = 2")
        conn.execute("UPDATE study_topic SET deleted_at = now() WHERE id = 2")
        conn.execute("SELECT pub.apply_batch(10000)")
    assert consumer.sync(url, copy) is False
    assert ("question", 2) not in copy.items
    assert consumer.questions_of_topic(copy, 2) == []
    assert len(consumer.questions_of_topic(copy, 1)) == 1249  # question 2 was deleted
    with psycopg.connect(url) as viewer:
        assert viewer.execute("SELECT max(rev) FROM pub.feed(0, 100000)").fetchone() == (
            copy.cursor,
        )

    # An operator replaces the published state: removed, installed again, republished
    # with fewer items (a topic hard-deleted meanwhile). Revs start again from 1, so a
    # cursor kept from before would skip them; the example notices the new identity.
    migrate.migrate(pub_db.url, "base", drop_published_state=True)
    with pub_db.connect() as conn:
        conn.execute("DELETE FROM study_question WHERE topic_id = 2")
        conn.execute("DELETE FROM study_topic WHERE id = 2")
    migrate.migrate(pub_db.url)
    with pub_db.connect() as conn:
        _grant_viewer(conn)
        Backfill(conn, Options()).run(["topics", "questions"])
        conn.execute("SELECT pub.apply_batch(10000)")
        expected = {
            (kind, source_id): payload
            for kind, source_id, payload in conn.execute(
                "SELECT kind, source_id, payload FROM pub.content WHERE NOT deleted"
            )
        }
    before = copy.feed_id
    assert consumer.sync(url, copy) is True
    assert copy.feed_id != before
    assert copy.items == expected
    assert ("topic", 2) not in copy.items and len(copy.items) == 1 + 1249
    with pub_db.connect() as conn:
        conn.execute("REVOKE ALL ON SCHEMA pub FROM docs_viewer")
        conn.execute(
            "REVOKE ALL ON FUNCTION pub.feed(bigint, integer, text[]), pub.feed_id() FROM docs_viewer"
        )
        conn.execute("DROP ROLE docs_viewer")


def test_debezium_connector_names_real_outbox_columns(pub_db: Database) -> None:
    config = json.loads((DOCS / "debezium-outbox-connector.json").read_text())["config"]
    with pub_db.connect() as conn:
        columns = {
            name: type_
            for name, type_ in conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = 'pub.outbox'::regclass AND attnum > 0 AND NOT attisdropped"
            )
        }
    named = [config[k] for k in config if k.startswith("transforms.outbox.table.field.event.")]
    named.append(config["transforms.outbox.route.by.field"])
    named += [
        part.split(":")[0]
        for part in config["transforms.outbox.table.fields.additional.placement"].split(",")
    ]
    assert set(named) <= set(columns), set(named) - set(columns)
    assert columns["payload"] == "json"
    assert config["table.include.list"] == "pub.outbox"


def load_http_viewer() -> Any:
    spec = importlib.util.spec_from_file_location(
        "http_viewer", DOCS / "examples" / "http_viewer.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_http_viewer_example_keeps_a_copy_of_the_kinds_it_wants(pub_db: Database) -> None:
    viewer = load_http_viewer()
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy ✓'), (2, 'Gone')")
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status)"
            " SELECT g, 1 + g % 2, 'q \"' || g || '\" é', '[\"a\"]', 'why', 'ready' FROM generate_series(1, 1200) g"
        )
        conn.execute("SELECT pub.apply_batch(10000)")
    with Served(reader_url(pub_db), env={"PUBCTL_FEED_TOKENS": "docs-token"}) as served:
        headers = {"Authorization": "Bearer docs-token"}
        with httpx.Client(base_url=served.base, headers=headers, timeout=30) as client:
            copy = viewer.Copy()
            viewer.sync(client, copy, ["topic", "question"], page=500)
            assert len(copy.items) == 1202 and not any(
                k.startswith("explanation/") for k in copy.items
            )
            with pub_db.connect() as conn:
                conn.execute("UPDATE study_question SET deleted_at = now() WHERE id = 2")
                conn.execute("UPDATE study_topic SET name = 'Renamed' WHERE id = 1")
                conn.execute("SELECT pub.apply_batch(10000)")
            viewer.sync(client, copy, ["topic", "question"], wait=5)
            assert "question/2" not in copy.items and copy.items["topic/1"]["name"] == "Renamed"
            with pub_db.connect() as conn:
                (last,) = conn.execute("SELECT last_rev FROM pub.rev_counter").fetchone()
            assert copy.cursor == last
            # A tampered payload is refused, not applied.
            with pub_db.connect() as conn:
                conn.execute(
                    "UPDATE pub.content SET payload = jsonb_set(payload::jsonb, '{name}', '\"x\"')::json WHERE kind = 'topic' AND source_id = 2"
                )
            fresh = viewer.Copy()
            with pytest.raises(ValueError, match="does not match its payload_hash"):
                viewer.sync(client, fresh, ["topic"])
