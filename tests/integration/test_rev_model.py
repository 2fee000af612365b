"""Property: an item's rev moves exactly when its (payload_hash, deleted) changes.

Random sequences of writes on one topic (insert, rename to one of a few names so that
A -> B -> A happens, no-op updates, soft delete, restore, hard delete) with applies in
between, checked against a Python model built on the reference projection.
"""

from __future__ import annotations

from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from pubctl.projection import items_of, payload_hash

from support.db import Database

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.sampled_from(["A", "B"])),
        st.tuples(st.just("rename"), st.sampled_from(["A", "B", "C"])),
        st.tuples(st.just("touch"), st.none()),
        st.tuples(st.just("soft_delete"), st.none()),
        st.tuples(st.just("restore"), st.none()),
        st.tuples(st.just("hard_delete"), st.none()),
        st.tuples(st.just("apply"), st.none()),
    ),
    max_size=25,
)


def run_op(conn: psycopg.Connection, op: str, arg: Any) -> None:
    if op == "insert":
        conn.execute(
            "INSERT INTO study_topic (id, name) VALUES (1, %s) ON CONFLICT DO NOTHING", (arg,)
        )
    elif op == "rename":
        conn.execute("UPDATE study_topic SET name = %s", (arg,))
    elif op == "touch":
        conn.execute("UPDATE study_topic SET updated_at = now()")
    elif op == "soft_delete":
        conn.execute("UPDATE study_topic SET deleted_at = now() WHERE deleted_at IS NULL")
    elif op == "restore":
        conn.execute("UPDATE study_topic SET deleted_at = NULL")
    elif op == "hard_delete":
        conn.execute("DELETE FROM study_topic")


def expected(conn: psycopg.Connection) -> tuple[str, bool] | None:
    """(hash, deleted) the source says, or None for "nothing to publish"."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM study_topic").fetchone()
    if row is None:
        return None
    (item,) = items_of("study_topic", row)
    return (item.payload_hash, item.deleted)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_rev_moves_exactly_on_change(pub_db: Database, ops: list[tuple[str, Any]]) -> None:
    with pub_db.connect() as conn:
        conn.execute("UPDATE pub.settings SET publishing_enabled = false")
        conn.execute("DELETE FROM study_topic")
        conn.execute("UPDATE pub.settings SET publishing_enabled = true")
        conn.execute("DELETE FROM pub.outbox; DELETE FROM pub.content")
        published: tuple[str, bool] | None = None  # the model's published (hash, deleted)
        last_rev: int | None = None
        for op, arg in [*ops, ("apply", None)]:
            if op != "apply":
                run_op(conn, op, arg)
                continue
            conn.execute("SELECT pub.apply_batch(1000)")
            row = conn.execute(
                "SELECT rev, payload_hash, deleted FROM pub.content WHERE kind = 'topic'"
            ).fetchone()
            now = expected(conn)
            if now is None and published is not None:  # hard-deleted after publishing
                now = (payload_hash({}), True)
            if published is None and (now is None or now[1]):
                assert row is None, "a tombstone of a never-published item is dropped"
                continue
            assert row is not None
            rev, payload_hash_, deleted = row
            assert (payload_hash_, deleted) == now
            if now != published:
                assert last_rev is None or rev > last_rev, "a real change gets a new rev"
            else:
                assert rev == last_rev, "no change, no new rev"
            published, last_rev = now, rev
