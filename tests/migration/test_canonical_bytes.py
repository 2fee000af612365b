"""Canonical bytes from the trigger to the viewer (contract sections 2 and 4).

Every place that carries a payload carries the RFC 8785 text the trigger built: the
``payload`` columns of pub.outbox and pub.content (``sha256(payload::text)`` is
``payload_hash``), ``pub.feed``, the lines of ``pubctl feed`` and serve's pages. An
upgrade from a release that stored jsonb turns stored payloads, published and pending,
back into their canonical text.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import conninfo

from pubctl import migrate

from support.cli import run_subprocess
from support.db import Database
from support.roles import role_url, roles
from support.serve import Served, reader_url

# Rows whose canonical text and jsonb's text differ in every way they can: key order,
# spaces, escapes, non-ASCII, control characters, nulls, large integers.
TOPICS = [
    (1, "Anatomy", 12),
    (2, 'Quote " backslash \\ slash / tab \t', None),
    (3, "caf\u00e9 \U0001f600 \u2028 \x01 \x1f", -5),
    (9007199254740991, "largest safe id", 9),
]
QUESTIONS = [
    (10, 1, "Round 1", 1, 1, "Body <b>", '["a", "b \\"c\\""]', 2, "Because", "ready"),
    (11, 2, None, None, None, "\u00fc\u00df\n", "[]", None, None, "ready"),
    (12, 3, "R", 2, 3, "draft one", '["x"]', 1, "not yet", "draft"),
]


def write_rows(conn: psycopg.Connection[Any], topics: list[Any], questions: list[Any]) -> None:
    for row in topics:
        conn.execute("INSERT INTO study_topic (id, name, exam_round_size) VALUES (%s, %s, %s)", row)
    for row in questions:
        conn.execute(
            "INSERT INTO study_question (id, topic_id, exam_name, exam_round, number, body,"
            " choices, answer, explanation, explanation_status)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            row,
        )


def hash_mismatches(conn: psycopg.Connection[Any], table: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        f"SELECT kind, source_id, payload::text FROM pub.{table}"
        " WHERE pub.payload_hash(payload::text) <> payload_hash ORDER BY 1, 2"
    ).fetchall()


def payload_bytes(line: bytes) -> bytes:
    """The exact bytes of an item's payload in a feed line or page item."""
    match = re.search(rb'"payload":(.*?),"payload_hash":"([0-9a-f]{64})"', line)
    assert match, line
    return match.group(1)


def items_of_body(body: bytes) -> list[bytes]:
    """Each item of a page body, as bytes (items hold no ``},{"rev":`` inside strings that
    would matter here: payload strings are escaped JSON)."""
    inner = body[body.index(b"[") + 1 : body.rindex(b'],"next_after"')]
    return [part for part in re.split(rb'(?<=\}),(?=\{"rev":)', inner) if part]


def assert_every_carrier_is_canonical(db: Database, skip: set[tuple[str, int]]) -> int:
    """SQL, CLI and HTTP: the payload bytes hash to payload_hash. Returns items seen."""
    with db.connect() as conn:
        assert [r for r in hash_mismatches(conn, "content") if (r[0], r[1]) not in skip] == []
        assert hash_mismatches(conn, "outbox") == []
        rows = conn.execute(
            "SELECT kind, source_id, payload::text, payload_hash FROM pub.feed(0, 10000)"
        ).fetchall()
        for kind, source_id, text, digest in rows:
            if (kind, source_id) not in skip:
                assert hashlib.sha256(text.encode()).hexdigest() == digest, (kind, source_id)
    result = run_subprocess("--database-url", db.url, "feed")
    assert result.code == 0, result.err
    # Split on newlines only: U+2028 inside a payload is not a line break.
    lines = [line.encode() for line in result.out.split("\n") if line]
    assert len(lines) == len(rows)
    for line in lines:
        item = json.loads(line)
        if (item["kind"], item["source_id"]) in skip:
            continue
        assert hashlib.sha256(payload_bytes(line)).hexdigest() == item["payload_hash"], line
    with Served(reader_url(db)) as served:
        body = httpx.get(served.url("/published/feed?limit=10000"), timeout=10).content
    items = items_of_body(body)
    assert len(items) == len(rows)
    for raw in items:
        item = json.loads(raw)
        if (item["kind"], item["source_id"]) in skip:
            continue
        assert hashlib.sha256(payload_bytes(raw)).hexdigest() == item["payload_hash"], raw
    return len(rows)


def test_payload_columns_hold_the_canonical_text(pub_db: Database) -> None:
    with pub_db.connect() as conn:
        write_rows(conn, TOPICS, QUESTIONS)
        types = conn.execute(
            "SELECT c.relname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
            " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'pub' AND a.attname = 'payload' AND c.relkind = 'r' ORDER BY 1"
        ).fetchall()
        assert types == [("content", "json"), ("outbox", "json")]
        (text,) = conn.execute(
            "SELECT payload::text FROM pub.outbox WHERE kind = 'question' AND source_id = 10"
        ).fetchone() or (None,)
        assert text == (
            '{"answer":2,"body":"Body <b>","choices":["a","b \\"c\\""],"exam_name":"Round 1",'
            '"exam_round":1,"number":1,"question_id":10,"topic_id":1}'
        )
        conn.execute("SELECT pub.apply_batch(1000)")
        conn.execute("UPDATE study_topic SET deleted_at = now() WHERE id = 1")
        conn.execute("SELECT pub.apply_batch(1000)")
        # Pending rows too.
        conn.execute("UPDATE study_topic SET name = 'pending \u00e9' WHERE id = 2")
        # SQL viewers: ->> works on json; @> needs a cast to jsonb.
        (name,) = conn.execute(
            "SELECT payload ->> 'name' FROM pub.content WHERE kind = 'topic' AND source_id = 3"
        ).fetchone() or (None,)
        assert name == TOPICS[2][1]
        assert conn.execute(
            "SELECT count(*) FROM pub.content WHERE payload::jsonb @> '{\"question_id\": 11}'"
        ).fetchone() == (2,)
    assert assert_every_carrier_is_canonical(pub_db, set()) == 9


@pytest.mark.parametrize("start", ["0101", "0103"])
def test_upgrade_turns_stored_payloads_into_their_canonical_text(
    app_db: Database, start: str
) -> None:
    migrate.migrate(app_db.url, start)
    with app_db.connect() as conn:
        write_rows(conn, TOPICS, QUESTIONS)
        conn.execute("UPDATE study_question SET deleted_at = now() WHERE id = 11")
        conn.execute("SELECT pub.apply_batch(1000)")
        # A payload edited by hand keeps its values (verify reports it, as before).
        conn.execute(
            "UPDATE pub.content SET payload = jsonb_set(payload, '{name}', '\"edited\"')"
            " WHERE kind = 'topic' AND source_id = 1"
        )
        # Pending outbox rows: an edit and a tombstone not applied yet.
        conn.execute("UPDATE study_topic SET name = 'pending \u00e9 \"q\"' WHERE id = 2")
        conn.execute("DELETE FROM study_question WHERE id = 12")
        # A viewer's role granted the feed directly (not through pubctl_feed_reader).
        conn.execute("DROP ROLE IF EXISTS direct_viewer")
        conn.execute("CREATE ROLE direct_viewer NOLOGIN")
        conn.execute("GRANT USAGE ON SCHEMA pub TO direct_viewer")
        conn.execute("GRANT EXECUTE ON FUNCTION pub.feed(bigint, integer, text[]) TO direct_viewer")
        before = conn.execute(
            "SELECT kind, source_id, rev, payload_hash FROM pub.content ORDER BY 1, 2"
        ).fetchall()
        pending = conn.execute("SELECT count(*) FROM pub.outbox").fetchone()
        assert pending and pending[0] > 0
    migrate.migrate(app_db.url)
    edited = {("topic", 1)}
    try:
        with app_db.connect() as conn:
            assert (
                conn.execute(
                    "SELECT kind, source_id, rev, payload_hash FROM pub.content ORDER BY 1, 2"
                ).fetchall()
                == before
            ), "the upgrade changes no rev and no hash"
            assert [r[:2] for r in hash_mismatches(conn, "content")] == [("topic", 1)]
            (kept,) = conn.execute(
                "SELECT payload ->> 'name' FROM pub.content WHERE kind = 'topic' AND source_id = 1"
            ).fetchone() or (None,)
            assert kept == "edited"
            conn.execute("SET ROLE direct_viewer")
            assert conn.execute("SELECT count(*) FROM pub.feed(0, 10)").fetchone() == (7,)
            conn.execute("RESET ROLE")
            conn.execute("SELECT pub.apply_batch(1000)")
        assert_every_carrier_is_canonical(app_db, edited)
        verified = run_subprocess("--database-url", app_db.url, "verify", "--json")
        findings = json.loads(verified.out)["examples"]
        assert {(f["category"], f["kind"], f["source_id"]) for f in findings} == {
            ("stale", "topic", 1),
            ("hash_mismatch", "topic", 1),
        }, verified.out
        # And down to where it came from and up again: still canonical.
        migrate.migrate(app_db.url, start)
        with app_db.connect() as conn:
            conn.execute("UPDATE study_topic SET name = 'written below' WHERE id = 3")
        migrate.migrate(app_db.url)
        with app_db.connect() as conn:
            conn.execute("SELECT pub.apply_batch(1000)")
        assert_every_carrier_is_canonical(app_db, edited)
    finally:
        with app_db.connect() as conn:
            conn.execute("REVOKE ALL ON SCHEMA pub FROM direct_viewer")
            conn.execute(
                "REVOKE ALL ON FUNCTION pub.feed(bigint, integer, text[]) FROM direct_viewer"
            )
            conn.execute("DROP ROLE direct_viewer")


def test_sessions_running_through_the_upgrade_keep_writing(app_db: Database) -> None:
    """A session keeps the trigger bodies it compiled before the upgrade (their variables
    held text): its writes after the upgrade are still published, canonical."""
    migrate.migrate(app_db.url, "0103")
    with app_db.connect() as writer:
        write_rows(writer, TOPICS[:2], QUESTIONS[:1])
        # Compile every capture path of this session at 0103.
        writer.execute("UPDATE study_topic SET name = 'before' WHERE id = 1")
        writer.execute("UPDATE study_question SET body = 'before' WHERE id = 10")
        writer.execute("UPDATE study_question SET id = 20 WHERE id = 10")
        writer.execute("DELETE FROM study_question WHERE id = 20")
        writer.execute("UPDATE study_topic SET id = 5 WHERE id = 1")
        migrate.migrate(app_db.url)
        writer.execute("UPDATE study_topic SET name = 'after \u00e9' WHERE id = 5")
        writer.execute("UPDATE study_topic SET id = 6 WHERE id = 5")
        write_rows(writer, [], QUESTIONS[1:2])
        writer.execute("UPDATE study_question SET body = 'after' WHERE id = 11")
        writer.execute("UPDATE study_question SET id = 21 WHERE id = 11")
        writer.execute("DELETE FROM study_question WHERE id = 21")
        assert hash_mismatches(writer, "outbox") == []
        writer.execute("SELECT pub.apply_batch(1000)")
        assert hash_mismatches(writer, "content") == []
    verified = run_subprocess("--database-url", app_db.url, "verify")
    assert verified.code == 0, verified.out


def test_an_upgrade_run_by_a_superuser_leaves_pub_to_its_owner(app_db: Database) -> None:
    """Installed by the table owner, upgraded by a superuser: every function of pub stays
    the owner's (or pubctl_capture's). A SECURITY DEFINER pub.feed of the superuser's
    would run the owner's code as the superuser (pub.content is the owner's). Feed
    grants carry over, a role name with a comma included."""
    dbname = conninfo.conninfo_to_dict(app_db.url)["dbname"]
    with roles(app_db) as made:
        owner = made.create("t_canon_owner")
        viewer = made.create("viewer, eu", "NOLOGIN")
        made.admin.execute(f'GRANT CREATE ON DATABASE "{dbname}" TO {owner}')
        made.admin.execute(f"ALTER TABLE study_topic OWNER TO {owner}")
        made.admin.execute(f"ALTER TABLE study_question OWNER TO {owner}")
        as_owner = run_subprocess("--database-url", role_url(app_db, owner), "migrate",
                                  "--revision", "0103")  # fmt: skip
        assert as_owner.code == 0, as_owner.err
        made.admin.execute('GRANT USAGE ON SCHEMA pub TO "viewer, eu"')
        made.admin.execute(
            'GRANT EXECUTE ON FUNCTION pub.feed(bigint, integer, text[]) TO "viewer, eu"'
        )
        migrate.migrate(app_db.url)  # as the superuser
        foreign = made.admin.execute(
            "SELECT p.oid::regprocedure::text, p.proowner::regrole::text FROM pg_proc p"
            " WHERE p.pronamespace = 'pub'::regnamespace"
            " AND p.proowner::regrole::text NOT IN (%s, 'pubctl_capture')",
            (owner,),
        ).fetchall()
        assert foreign == []
        types = made.admin.execute(
            "SELECT t.typname, t.typowner::regrole::text FROM pg_type t"
            " WHERE t.typnamespace = 'pub'::regnamespace AND t.typname LIKE '%%_payload'"
        ).fetchall()
        assert {o for _t, o in types} == {owner}, types
        (granted,) = made.admin.execute(
            "SELECT has_function_privilege(%s, 'pub.feed(bigint,integer,text[])', 'EXECUTE')",
            (viewer,),
        ).fetchone() or (None,)
        assert granted is True
        made.admin.execute(
            'REVOKE ALL ON FUNCTION pub.feed(bigint, integer, text[]) FROM "viewer, eu"'
        )
        made.admin.execute('REVOKE ALL ON SCHEMA pub FROM "viewer, eu"')
