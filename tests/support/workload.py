"""A random application workload, a feed reader that checks what it receives, and the
reference state it must end equal to. Shared by the concurrency, crash and load tests."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pubctl.feed import read
from pubctl.projection import items_of

from support.db import Database

Item = tuple[str, int]


def reference_state(db: Database) -> dict[Item, Any]:
    """Every live item's payload per the Python reference projection of the source."""
    items: dict[Item, Any] = {}
    with db.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
        for row in cur.execute("SELECT * FROM study_topic"):
            items.update(
                {
                    (i.kind, i.source_id): i.payload
                    for i in items_of("study_topic", row)
                    if i.payload
                }
            )
        for row in cur.execute("SELECT * FROM study_question"):
            items.update(
                {
                    (i.kind, i.source_id): i.payload
                    for i in items_of("study_question", row)
                    if i.payload
                }
            )
    return items


class Reader:
    """A viewer polling the feed with its cursor, as docs/viewer.md describes.

    It also counts what a viewer must never see: a rev at or below its cursor
    (reordered or repeated). The feed is compacted (an item's newest state only), so an
    item may legitimately come back equal to what the reader holds after changing
    twice between two polls; unchanged items getting revs is checked on the database
    side, by ``install_churn_audit``.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.cursor = 0
        self.state: dict[Item, Any] = {}
        self.revs: list[int] = []
        self.out_of_order = 0
        self.received_at: dict[int, float] = {}

    def poll(self) -> int:
        """Read everything after the cursor; returns the number of changes read."""
        count = 0
        with self.db.connect() as conn:
            for line in read(conn, self.cursor):
                self._receive(json.loads(line))
                count += 1
        return count

    def _receive(self, change: dict[str, Any]) -> None:
        rev = change["rev"]
        if rev <= self.cursor:
            self.out_of_order += 1
        self.revs.append(rev)
        self.received_at[rev] = time.monotonic()
        self.cursor = max(self.cursor, rev)
        key = (change["kind"], change["source_id"])
        if change["deleted"]:
            self.state.pop(key, None)
        else:
            self.state[key] = change["payload"]

    def missing_and_wrong(self, reference: dict[Item, Any]) -> int:
        """Items whose state here differs from the reference (lost changes)."""
        keys = set(reference) | set(self.state)
        return sum(1 for key in keys if reference.get(key) != self.state.get(key))


CHURN_AUDIT = """
CREATE TABLE public.test_churn_audit (kind text, source_id bigint, old_rev bigint, new_rev bigint);
CREATE FUNCTION public.test_churn_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A new rev for an item whose published (hash, deleted) did not change is a
    -- duplicate a viewer would receive for nothing; a smaller rev is a regression.
    IF NEW.rev <> OLD.rev AND (NEW.payload_hash, NEW.deleted) IS NOT DISTINCT FROM
                              (OLD.payload_hash, OLD.deleted)
       OR NEW.rev < OLD.rev THEN
        INSERT INTO public.test_churn_audit VALUES (NEW.kind, NEW.source_id, OLD.rev, NEW.rev);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER test_churn_audit AFTER UPDATE ON pub.content
    FOR EACH ROW EXECUTE FUNCTION public.test_churn_audit();
"""


def install_churn_audit(db: Database) -> None:
    """Record, in the test database, every rev given to an unchanged item."""
    with db.connect() as conn:
        conn.execute(CHURN_AUDIT)


def unchanged_revs(db: Database) -> int:
    """How many revs went to items whose published state did not change."""
    with db.connect() as conn:
        row = conn.execute("SELECT count(*) FROM public.test_churn_audit").fetchone()
    return int(row[0]) if row else 0


def random_write(conn: psycopg.Connection[Any], rng: random.Random, max_id: int) -> None:
    """One application write: inserts, edits, no-op touches, soft and hard deletes,
    explanation status changes, and multi-statement transactions."""
    qid = rng.randint(1, max_id)
    action = rng.random()
    if action < 0.35:
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status)"
            " VALUES (%s, 1, %s, '[\"a\"]', 'e', %s) ON CONFLICT (id) DO UPDATE"
            " SET body = EXCLUDED.body, deleted_at = NULL",
            (qid, f"b{rng.random()}", rng.choice(["ready", "draft"])),
        )
    elif action < 0.6:
        conn.execute("UPDATE study_question SET body = %s WHERE id = %s", (f"u{rng.random()}", qid))
    elif action < 0.7:
        conn.execute("UPDATE study_question SET updated_at = now() WHERE id = %s", (qid,))
    elif action < 0.8:
        conn.execute("UPDATE study_question SET deleted_at = now() WHERE id = %s", (qid,))
    elif action < 0.9:
        conn.execute(
            "UPDATE study_question SET explanation_status = %s, explanation = %s WHERE id = %s",
            (rng.choice(["ready", "review"]), f"x{rng.random()}", qid),
        )
    else:
        with conn.transaction():
            conn.execute("UPDATE study_question SET body = body || '+' WHERE id = %s", (qid,))
            conn.execute("UPDATE study_question SET body = body || '-' WHERE id = %s", (qid,))
            if rng.random() < 0.3:
                conn.execute("DELETE FROM study_question WHERE id = %s", (qid,))


class Writers:
    """Writer threads, each on its own connection, until stopped."""

    def __init__(
        self,
        db: Database,
        count: int,
        seed: int,
        max_id: int,
        *,
        on_commit: Callable[[float], None] | None = None,
        pause_s: float = 0.0,
    ) -> None:
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.writes = 0
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(
                target=self._run, args=(db, seed * 1000 + n, max_id, on_commit, pause_s)
            )
            for n in range(count)
        ]

    def _run(
        self,
        db: Database,
        seed: int,
        max_id: int,
        on_commit: Callable[[float], None] | None,
        pause_s: float,
    ) -> None:
        rng = random.Random(seed)
        try:
            with db.connect() as conn:
                while not self.stop.is_set():
                    random_write(conn, rng, max_id)
                    if on_commit is not None:
                        on_commit(time.monotonic())
                    with self._lock:
                        self.writes += 1
                    if pause_s:
                        time.sleep(pause_s)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(30)
            if thread.is_alive():
                self.errors.append(TimeoutError("a writer did not stop within 30 s"))
