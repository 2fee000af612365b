"""The applier and the feed, at the SQL level."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from support.db import Database


@pytest.fixture
def conn(pub_db: Database) -> Any:
    with pub_db.connect() as connection:
        connection.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
        yield connection


def apply(conn: psycopg.Connection, max_rows: int = 1000) -> tuple[int, int, int, int]:
    row = conn.execute("SELECT * FROM pub.apply_batch(%s)", (max_rows,)).fetchone()
    assert row is not None
    return tuple(int(x) for x in row)  # type: ignore[return-value]


def feed(
    conn: psycopg.Connection, after: int = 0, limit: int = 1000, kinds: list[str] | None = None
) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT rev, kind, source_id, deleted, pub_id FROM pub.feed(%s, %s, %s)",
        (after, limit, kinds),
    ).fetchall()


def content(conn: psycopg.Connection) -> dict[tuple[str, int], tuple[Any, ...]]:
    rows = conn.execute(
        "SELECT kind, source_id, rev, pub_id, deleted, payload FROM pub.content"
    ).fetchall()
    return {(k, s): (rev, pub_id, deleted, payload) for k, s, rev, pub_id, deleted, payload in rows}


def add_question(conn: psycopg.Connection, qid: int, status: str = "ready") -> None:
    conn.execute(
        "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status)"
        " VALUES (%s, 1, 'Q', '[\"a\"]', 'why', %s)",
        (qid, status),
    )


def test_apply_publishes_in_outbox_order(conn: psycopg.Connection) -> None:
    add_question(conn, 10)
    add_question(conn, 11, "draft")
    assert apply(conn) == (4, 4, 0, 0)
    assert [(rev, kind, sid) for rev, kind, sid, _d, _p in feed(conn)] == [
        (1, "topic", 1),
        (2, "question", 10),
        (3, "explanation", 10),
        (4, "question", 11),
    ]
    assert conn.execute("SELECT count(*) FROM pub.outbox").fetchone() == (0,)
    assert apply(conn) == (0, 0, 0, 0)


def test_reapplying_the_same_payload_is_churn_zero(conn: psycopg.Connection) -> None:
    apply(conn)
    before = content(conn)
    conn.execute("UPDATE study_topic SET name = 'Other'")
    conn.execute("UPDATE study_topic SET name = 'Anatomy'")
    assert apply(conn) == (2, 0, 1, 0), "A -> B -> A in one batch: newest equals published"
    conn.execute(
        "INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)"
        " SELECT kind, source_id, payload, payload_hash, schema_version, deleted FROM pub.content"
    )
    assert apply(conn) == (1, 0, 1, 0)
    assert content(conn) == before


def test_rev_moves_when_hash_or_deleted_changes(conn: psycopg.Connection) -> None:
    apply(conn)
    (rev1, pub_id, _d, _p) = content(conn)[("topic", 1)]
    conn.execute("UPDATE study_topic SET name = 'B'")
    apply(conn)
    (rev2, pub_id2, _d, payload) = content(conn)[("topic", 1)]
    assert rev2 > rev1 and pub_id2 == pub_id and payload["name"] == "B"
    conn.execute("UPDATE study_topic SET deleted_at = now()")
    apply(conn)
    (rev3, pub_id3, deleted, payload) = content(conn)[("topic", 1)]
    assert rev3 > rev2 and deleted and payload == {} and pub_id3 == pub_id
    conn.execute("UPDATE study_topic SET deleted_at = NULL")
    apply(conn)
    (rev4, pub_id4, deleted, _p) = content(conn)[("topic", 1)]
    assert rev4 > rev3 and not deleted and pub_id4 == pub_id, (
        "pub_id is stable across delete and restore"
    )


def test_a_new_schema_version_moves_the_rev_and_notifies(
    conn: psycopg.Connection, pub_db: Database
) -> None:
    """The same payload under another schema_version is a change a reader can see: a new
    rev (so no page answered before it can be answered again unchanged) and the
    notification long-polls wait for; the same version again is churn 0."""
    apply(conn)
    (rev1, pub_id, _d, payload) = content(conn)[("topic", 1)]
    with pub_db.connect() as listener:
        listener.execute("LISTEN pubctl_published")
        restamp = (
            "INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version,"
            " deleted) SELECT kind, source_id, payload, payload_hash, %s, deleted"
            " FROM pub.content WHERE kind = 'topic' AND source_id = 1"
        )
        conn.execute(restamp, (2,))
        assert apply(conn) == (1, 1, 0, 0)
        (rev2, pub_id2, _d, payload2) = content(conn)[("topic", 1)]
        assert rev2 > rev1 and pub_id2 == pub_id and payload2 == payload
        assert feed(conn, after=rev1) == [(rev2, "topic", 1, False, pub_id)]
        assert conn.execute(
            "SELECT schema_version FROM pub.feed(%s) WHERE rev = %s", (rev1, rev2)
        ).fetchone() == (2,)
        notes = list(listener.notifies(timeout=2, stop_after=1))
        assert [n.payload for n in notes] == [str(rev2)]
        conn.execute(restamp, (2,))
        assert apply(conn) == (1, 0, 1, 0), "the same version again is churn 0"
        assert content(conn)[("topic", 1)][0] == rev2


def test_tombstone_of_never_published_item_is_dropped(conn: psycopg.Connection) -> None:
    apply(conn)
    conn.execute(
        "INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version, deleted)"
        " VALUES ('question', 99, '{}', pub.payload_hash('{}'), 1, true)"
    )
    assert apply(conn) == (1, 0, 0, 1)
    assert ("question", 99) not in content(conn)


def test_newest_outbox_row_per_item_wins(conn: psycopg.Connection) -> None:
    for name in ("B", "C", "D"):
        conn.execute("UPDATE study_topic SET name = %s", (name,))
    assert apply(conn) == (4, 1, 0, 0)
    assert content(conn)[("topic", 1)][3]["name"] == "D"


def test_batch_size_bounds_each_batch(conn: psycopg.Connection) -> None:
    for qid in range(10, 20):
        add_question(conn, qid, "draft")
    assert apply(conn, 4) == (4, 4, 0, 0)
    assert apply(conn, 4) == (4, 4, 0, 0)
    assert apply(conn, 4) == (3, 3, 0, 0)
    with pytest.raises(psycopg.Error) as info:
        apply(conn, 0)
    assert info.value.sqlstate == "PB003"


def test_feed_pages_and_kinds(conn: psycopg.Connection) -> None:
    for qid in range(10, 15):
        add_question(conn, qid)
    apply(conn)
    revs = [r[0] for r in feed(conn, 0, 3)]
    assert revs == [1, 2, 3]
    assert [r[0] for r in feed(conn, 3, 3)] == [4, 5, 6]
    assert {r[1] for r in feed(conn, 0, 100, ["explanation"])} == {"explanation"}
    assert len(feed(conn, 0, 100, ["topic", "question"])) == 6
    assert feed(conn, 1000) == []


def test_reader_role_needs_only_usage_and_execute(
    pub_db: Database, conn: psycopg.Connection
) -> None:
    apply(conn)
    conn.execute("CREATE ROLE viewer LOGIN")
    url = pub_db.url.replace("user=postgres", "user=viewer")
    with (
        psycopg.connect(url, autocommit=True) as viewer,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        viewer.execute("SELECT * FROM pub.feed(0)")
    conn.execute("GRANT USAGE ON SCHEMA pub TO viewer")
    conn.execute("GRANT EXECUTE ON FUNCTION pub.feed(bigint, integer, text[]) TO viewer")
    with psycopg.connect(url, autocommit=True) as viewer:
        assert len(viewer.execute("SELECT * FROM pub.feed(0)").fetchall()) == 1
        for denied in (
            "SELECT * FROM pub.content",
            "SELECT * FROM pub.outbox",
            "SELECT * FROM study_topic",
            "SELECT * FROM study_question",
            "SELECT * FROM pub.apply_batch(10)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                viewer.execute(denied)


def test_second_applier_waits_for_the_first(pub_db: Database, conn: psycopg.Connection) -> None:
    with pub_db.connect(autocommit=False) as first, pub_db.connect() as second:
        apply(first)  # holds the applier lock until it commits
        second.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            apply(second)
        first.commit()
        assert apply(second) == (0, 0, 0, 0)


def test_late_commit_is_not_skipped_by_a_reader(pub_db: Database, conn: psycopg.Connection) -> None:
    apply(conn)
    cursor = max(r[0] for r in feed(conn))
    with pub_db.connect(autocommit=False) as slow_writer:
        slow_writer.execute("UPDATE study_topic SET name = 'late'")  # outbox id n, not committed
        add_question(conn, 20, "draft")  # outbox id n+1, committed first
        apply(conn)
        seen = feed(conn, cursor)
        assert [(k, s) for _r, k, s, _d, _p in seen] == [("question", 20)]
        cursor = seen[-1][0]
        slow_writer.commit()
    apply(conn)
    late = feed(conn, cursor)
    assert [(k, s) for _r, k, s, _d, _p in late] == [("topic", 1)]
    assert late[0][0] == cursor + 1


def test_without_one_applier_at_a_time_a_reader_would_skip_revs(
    pub_db: Database, conn: psycopg.Connection
) -> None:
    """Why the applier lock (and the transactional rev counter) exist.

    An applier variant with both safeguards removed (no applier lock, revs from a
    sequence, rows claimed with SKIP LOCKED) lets a second applier commit higher revs
    while the first is still open: a reader then moves its cursor past revs that
    appear later. The real pub.apply_batch makes the second applier wait instead
    (test_second_applier_waits_for_the_first)."""
    (definition,) = conn.execute(
        "SELECT pg_get_functiondef('pub.apply_batch(integer)'::regprocedure)"
    ).fetchone()
    unsafe = (
        definition.replace("pub.apply_batch(", "pub.apply_batch_unsafe(")
        .replace("LOCK TABLE pub.applier_lock IN EXCLUSIVE MODE;", "")
        .replace(
            "ORDER BY b.id LIMIT max_rows)", "ORDER BY b.id LIMIT max_rows FOR UPDATE SKIP LOCKED)"
        )
        .replace(
            "UPDATE pub.rev_counter AS r\n        SET last_rev = r.last_rev + (SELECT count(*) FROM judged WHERE verdict = 'changed')",
            "SELECT nextval('public.unsafe_rev') - 1 AS first_rev FROM pg_catalog.generate_series(1, 1)",
        )
    )
    assert (
        unsafe.count("apply_batch_unsafe") == 1
        and "applier_lock" not in unsafe
        and "SKIP LOCKED" in unsafe
    )
    unsafe = unsafe.replace(
        "        WHERE EXISTS (SELECT FROM judged WHERE verdict = 'changed')\n"
        "        RETURNING r.last_rev - (SELECT count(*) FROM judged WHERE verdict = 'changed') AS first_rev",
        "",
    )
    conn.execute("CREATE SEQUENCE unsafe_rev")
    conn.execute(unsafe)
    apply(conn)  # publish the topic with the real applier: rev 1
    conn.execute("SELECT setval('unsafe_rev', 10)")
    for qid in (20, 21):
        add_question(conn, qid, "draft")
    with pub_db.connect(autocommit=False) as first:
        first.execute("SELECT * FROM pub.apply_batch_unsafe(1)")  # question 20, rev 11, open
        conn.execute("SELECT * FROM pub.apply_batch_unsafe(1)")  # question 21, rev 12, committed
        cursor = max(row[0] for row in feed(conn))
        first.commit()
    later = [row[0] for row in feed(conn, cursor)]
    assert cursor == 12 and later == [], "rev 11 committed after the reader passed it: skipped"


def test_an_unknown_lock_name_is_an_error_not_an_empty_answer(pub_db: Database) -> None:
    with pub_db.connect() as conn:
        for name in (
            "applier",
            "worker",
            "backfill:study_topic",
            "backfill:study_question",
            "unpublished_writers",
            "migrate",
        ):
            conn.execute("SELECT * FROM pub.lock_holders(%s)", (name,)).fetchall()
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT * FROM pub.lock_holders('backfill:study_answer')")
        assert info.value.sqlstate == "PB003"
