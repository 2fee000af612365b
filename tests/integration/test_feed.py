"""The feed's surface: kind filters as index ranges, the feed identity, health, and the
notification each applied batch sends."""

from __future__ import annotations

import itertools
from typing import Any

import psycopg
import pytest

from pubctl import migrate

from support.db import Database

KINDS = ("topic", "question", "explanation")


@pytest.fixture
def conn(pub_db: Database) -> Any:
    with pub_db.connect() as connection:
        yield connection


def _publish_mixed(conn: psycopg.Connection, topics: int = 7, questions: int = 60) -> None:
    """Items of all three kinds, interleaved in rev order, with some tombstones."""
    for t in range(1, topics + 1):
        conn.execute("INSERT INTO study_topic (id, name) VALUES (%s, %s)", (t, f"t{t}"))
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status)"
            " SELECT g, %s, 'Q' || g, '[\"a\"]', 'why', CASE WHEN g %% 3 = 0 THEN 'draft' ELSE 'ready' END"
            " FROM generate_series(%s::int, %s::int) g",
            (t, t * 1000, t * 1000 + questions // topics),
        )
    conn.execute("UPDATE study_question SET deleted_at = now() WHERE id % 7 = 0")
    conn.execute("UPDATE study_topic SET name = name || '!' WHERE id % 2 = 0")
    conn.execute("SELECT pub.apply_batch(100000)")


def _page_through(conn: psycopg.Connection, kinds: list[str] | None, page: int) -> list[Any]:
    seen: list[Any] = []
    after = 0
    while True:
        rows = conn.execute(
            "SELECT rev, kind, pub_id, source_id, payload_hash, deleted FROM pub.feed(%s, %s, %s)",
            (after, page, kinds),
        ).fetchall()
        seen += rows
        if len(rows) < page:
            return seen
        after = rows[-1][0]


def test_every_subset_of_kinds_pages_as_the_filtered_unfiltered_feed(
    conn: psycopg.Connection,
) -> None:
    _publish_mixed(conn)
    everything = _page_through(conn, None, 1000)
    assert {row[1] for row in everything} == set(KINDS)
    assert [row[0] for row in everything] == sorted(row[0] for row in everything)
    for size in range(0, 4):
        for subset in itertools.combinations(KINDS, size):
            expected = [row for row in everything if row[1] in subset]
            for page in (1, 3, 7):
                assert _page_through(conn, list(subset), page) == expected, (subset, page)
    # Repeated and unknown kinds change nothing; NULL elements are ignored.
    assert _page_through(conn, ["topic", "topic", "nonsense", None], 4) == [
        row for row in everything if row[1] == "topic"
    ]


def _nested_plans(conn: psycopg.Connection, sql: str, params: tuple[Any, ...]) -> str:
    """The plans of the statements run inside ``sql`` (auto_explain, as notices)."""
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    try:
        conn.execute("LOAD 'auto_explain'")
    except psycopg.errors.InsufficientPrivilege:
        pytest.skip("auto_explain needs a superuser on this server")
    conn.execute("SET auto_explain.log_min_duration = 0")
    conn.execute("SET auto_explain.log_nested_statements = on")
    conn.execute("SET auto_explain.log_level = notice")
    conn.execute(sql, params).fetchall()
    return "\n".join(notices)


def _fill_content(conn: psycopg.Connection) -> None:
    """20,000 published items, 0.5% topics, so that the planner's choices are real ones."""
    conn.execute(
        "INSERT INTO pub.content (kind, source_id, rev, payload, payload_hash, schema_version, deleted)"
        " SELECT CASE WHEN g % 200 = 0 THEN 'topic' WHEN g % 2 = 0 THEN 'question'"
        "             ELSE 'explanation' END, g, g, '{}', '', 1, false"
        " FROM generate_series(1, 20000) g"
    )
    conn.execute("UPDATE pub.rev_counter SET last_rev = 20000")
    conn.execute("ANALYZE pub.content")


@pytest.mark.parametrize(
    "kinds", [["topic"], ["question"], ["question", "explanation"], ["topic", "question"]]
)
def test_kind_filtered_feed_reads_one_index_range_per_kind(
    conn: psycopg.Connection, kinds: list[str]
) -> None:
    _fill_content(conn)
    for after in (0, 15000):
        plan = _nested_plans(conn, "SELECT * FROM pub.feed(%s, 100, %s)", (after, kinds))
        assert "Seq Scan" not in plan and "Filter: (kind" not in plan, plan
        for kind in kinds:
            assert f"Index Scan using content_{kind}_rev_idx on content" in plan, plan
        rows = conn.execute(
            "SELECT rev, kind FROM pub.feed(%s, 100, %s)", (after, kinds)
        ).fetchall()
        assert rows and {k for _r, k in rows} <= set(kinds)
        assert all(rev > after for rev, _k in rows)


def test_unfiltered_feed_reads_the_rev_index(conn: psycopg.Connection) -> None:
    _fill_content(conn)
    plan = _nested_plans(conn, "SELECT * FROM pub.feed(0, 100)", ())
    assert "Index Scan using content_rev_key on content" in plan, plan
    assert "Seq Scan" not in plan, plan


def test_feed_id_is_fixed_while_the_published_state_lives(pub_db: Database) -> None:
    with pub_db.connect() as conn:
        (first,) = conn.execute("SELECT pub.feed_id()").fetchone()
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'a')")
        conn.execute("SELECT pub.apply_batch(10)")
        assert conn.execute("SELECT pub.feed_id()").fetchone() == (first,)
    migrate.migrate(pub_db.url)  # a no-op migrate keeps it
    with pub_db.connect() as conn:
        assert conn.execute("SELECT pub.feed_id()").fetchone() == (first,)
    migrate.migrate(pub_db.url, "base", drop_published_state=True)
    migrate.migrate(pub_db.url)
    with pub_db.connect() as conn:
        (second,) = conn.execute("SELECT pub.feed_id()").fetchone()
    assert second != first, "a new published state has a new identity"


def test_health_and_feed_id_for_a_reader_only(pub_db: Database) -> None:
    with pub_db.connect() as conn:
        conn.execute("CREATE ROLE feed_health_reader LOGIN")
        url = pub_db.url.replace(f"user={pub_db.server.user}", "user=feed_health_reader")
        with psycopg.connect(url, autocommit=True) as reader:
            for call in ("SELECT pub.feed_id()", "SELECT * FROM pub.health()"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    reader.execute(call)
        conn.execute("GRANT USAGE ON SCHEMA pub TO feed_health_reader")
        conn.execute("GRANT EXECUTE ON FUNCTION pub.feed_id(), pub.health() TO feed_health_reader")
        with psycopg.connect(url, autocommit=True) as reader:
            revision, feed_id, last_rev = reader.execute("SELECT * FROM pub.health()").fetchone()
            assert revision == migrate.head_revision()
            assert feed_id == reader.execute("SELECT pub.feed_id()").fetchone()[0]
            assert last_rev == 0
        conn.execute("REVOKE ALL ON SCHEMA pub FROM feed_health_reader")
        conn.execute("REVOKE ALL ON FUNCTION pub.feed_id(), pub.health() FROM feed_health_reader")
        conn.execute("DROP ROLE feed_health_reader")


def test_each_batch_that_publishes_notifies_its_last_rev(pub_db: Database) -> None:
    with pub_db.connect() as listener, pub_db.connect() as conn:
        listener.execute("LISTEN pubctl_published")
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'a'), (2, 'b')")
        conn.execute("SELECT pub.apply_batch(10)")
        notes = list(listener.notifies(timeout=2, stop_after=1))
        assert [(n.channel, n.payload) for n in notes] == [("pubctl_published", "2")]
        # A batch that publishes nothing new (same payload again) wakes nobody.
        conn.execute("UPDATE study_topic SET name = name WHERE id = 1")
        conn.execute(
            "INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)"
            " SELECT kind, source_id, payload, payload_hash, schema_version, deleted"
            " FROM pub.content WHERE source_id = 1"
        )
        conn.execute("SELECT pub.apply_batch(10)")
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
        # Rolled back: the notification goes with it.
        with pub_db.connect(autocommit=False) as txn:
            txn.execute("UPDATE study_topic SET name = 'rolled back' WHERE id = 2")
            txn.execute("SELECT pub.apply_batch(10)")
            txn.rollback()
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
