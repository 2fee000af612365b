"""Adversarial campaign: writers at READ COMMITTED and REPEATABLE READ (some holding
their transactions open), primary-key updates, soft and hard deletes, publishing
switched off and on, backfills with small pages and an applier, all at once.

Each run ends (publishing on, a backfill, the outbox applied) with `pubctl verify`
clean, a feed reader holding exactly the source's state, and no item ever published as
deleted that no committed write had made non-live.

`make test` runs a few short runs; `make soak` runs many (PUBCTL_ADVERSARIAL_RUNS,
PUBCTL_ADVERSARIAL_SECONDS). Each run prints a one-line report (shown with `pytest -s`).
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from pubctl import apply, capture
from pubctl import verify as verifier
from pubctl.backfill import Backfill, Options

from support.cli import run_subprocess
from support.db import Database
from support.workload import Reader, reference_state

RUNS = int(os.environ.get("PUBCTL_ADVERSARIAL_RUNS", "2"))
SECONDS = float(os.environ.get("PUBCTL_ADVERSARIAL_SECONDS", "6"))
TOPICS = 5
MAX_ID = 150
EXPECTED = {"40001", "40P01", "23505", "23503", "55P03"}  # retried, as an application would


class Gate:
    """Writers pass it for each transaction; the operator closes it to check a quiet
    database (it waits for the transactions in flight to end, and holds new ones)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._inside = 0
        self._closed = False

    def enter(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._closed)
            self._inside += 1

    def leave(self) -> None:
        with self._cond:
            self._inside -= 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.wait_for(lambda: self._inside == 0)

    def open(self) -> None:
        with self._cond:
            self._closed = False
            self._cond.notify_all()


@dataclass
class Log:
    """What committed writes did: the items any of them made non-live."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    made_non_live: set[tuple[str, int]] = field(default_factory=set)
    commits: int = 0
    rollbacks: int = 0
    rr_commits: int = 0
    errors: list[BaseException] = field(default_factory=list)

    def committed(self, non_live: set[tuple[str, int]], rr: bool) -> None:
        with self.lock:
            self.made_non_live |= non_live
            self.commits += 1
            self.rr_commits += rr


class TombstoneReader(Reader):
    """A viewer that also remembers every item it was told is deleted."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.tombstones: set[tuple[str, int]] = set()

    def _receive(self, change: dict[str, Any]) -> None:
        if change["deleted"]:
            self.tombstones.add((change["kind"], change["source_id"]))
        super()._receive(change)


def _question(rng: random.Random) -> int:
    return rng.randint(1, MAX_ID)


def _one_operation(
    conn: psycopg.Connection[Any], rng: random.Random, non_live: set[tuple[str, int]]
) -> None:
    qid = _question(rng)
    action = rng.random()
    if action < 0.25:
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status)"
            " VALUES (%s, %s, %s, '[\"a\"]', 'e', %s) ON CONFLICT (id) DO UPDATE"
            " SET body = EXCLUDED.body, deleted_at = NULL",
            (qid, rng.randint(1, TOPICS), f"b{rng.random()}", rng.choice(["ready", "draft"])),
        )
    elif action < 0.45:
        conn.execute("UPDATE study_question SET body = %s WHERE id = %s", (f"u{rng.random()}", qid))
    elif action < 0.55:
        conn.execute("UPDATE study_question SET deleted_at = now() WHERE id = %s", (qid,))
        non_live |= {("question", qid), ("explanation", qid)}
    elif action < 0.62:
        conn.execute("UPDATE study_question SET deleted_at = NULL WHERE id = %s", (qid,))
    elif action < 0.72:
        status = rng.choice(["ready", "review"])
        conn.execute(
            "UPDATE study_question SET explanation_status = %s, explanation = %s WHERE id = %s",
            (status, f"x{rng.random()}", qid),
        )
        if status != "ready":
            non_live.add(("explanation", qid))
    elif action < 0.82:
        conn.execute("DELETE FROM study_question WHERE id = %s", (qid,))
        non_live |= {("question", qid), ("explanation", qid)}
    elif action < 0.92:
        new = _question(rng)
        conn.execute("UPDATE study_question SET id = %s WHERE id = %s", (new, qid))
        if new != qid:
            non_live |= {("question", qid), ("explanation", qid)}
    elif action < 0.97:
        tid = rng.randint(1, TOPICS)
        conn.execute("UPDATE study_topic SET name = %s WHERE id = %s", (f"t{rng.random()}", tid))
    else:
        tid = rng.randint(1, TOPICS)
        deleted = rng.random() < 0.5
        conn.execute(
            "UPDATE study_topic SET deleted_at = CASE WHEN %s THEN now() END WHERE id = %s",
            (deleted, tid),
        )
        if deleted:
            non_live.add(("topic", tid))


def _writer(db: Database, seed: int, stop: threading.Event, gate: Gate, log: Log) -> None:
    rng = random.Random(seed)
    try:
        with db.connect(autocommit=False) as conn:
            while not stop.is_set():
                rr = rng.random() < 0.4
                non_live: set[tuple[str, int]] = set()
                gate.enter()
                try:
                    conn.execute(
                        "SET TRANSACTION ISOLATION LEVEL "
                        + ("REPEATABLE READ" if rr else "READ COMMITTED")
                    )
                    if rr:
                        conn.execute("SELECT count(*) FROM study_topic")  # take the snapshot
                    if rng.random() < 0.1:
                        # A straggler: a new row, held open long enough for publishing
                        # to be switched on and a backfill to pass its id meanwhile.
                        conn.execute(
                            "INSERT INTO study_question (id, topic_id, body, choices)"
                            " VALUES (%s, 1, 'straggler', '[]') ON CONFLICT (id) DO NOTHING",
                            (rng.randint(MAX_ID + 1, 3 * MAX_ID),),
                        )
                        time.sleep(rng.uniform(0.3, 1.5))
                    for _ in range(rng.randint(1, 3)):
                        _one_operation(conn, rng, non_live)
                        if rng.random() < 0.2:
                            time.sleep(rng.uniform(0.05, 0.5))  # held open across switches
                    conn.commit()
                    log.committed(non_live, rr)
                except psycopg.Error as exc:
                    conn.rollback()
                    if exc.sqlstate not in EXPECTED:
                        raise
                    with log.lock:
                        log.rollbacks += 1
                finally:
                    gate.leave()
    except BaseException as exc:
        log.errors.append(exc)


def _operator(
    db: Database,
    rng: random.Random,
    stop: threading.Event,
    gate: Gate,
    log: Log,
    report: RunReport,
) -> None:
    """Switch publishing off and on, backfilling after each enable with small pages, the
    writers writing all along. After each backfill, with the writers held at the gate,
    everything must be published once the outbox is applied: a write the cycle lost
    shows there, before a later backfill could repair it."""
    try:
        with db.connect() as conn:
            while not stop.is_set():
                time.sleep(rng.uniform(0.1, 0.5))
                capture.set_publishing(conn, False)
                report.switches += 1
                time.sleep(rng.uniform(0.2, 0.8))
                capture.set_publishing(conn, True)
                capture.wait_for_unpublished_writers(conn, 60)
                options = Options(page_size=rng.choice([3, 7, 19]))
                Backfill(conn, options).run(["topics", "questions"])
                report.backfills += 1
                gate.close()
                try:
                    apply.drain(conn)
                    found = verifier.verify(conn, fail_on_pending=True)
                    assert found.clean, verifier.render(found)
                    report.checks += 1
                finally:
                    gate.open()
    except BaseException as exc:
        log.errors.append(exc)


def _applier(db: Database, stop: threading.Event, log: Log) -> None:
    try:
        with db.connect() as conn:
            while not stop.is_set():
                apply.drain(conn, 25)
                time.sleep(0.05)
    except BaseException as exc:
        log.errors.append(exc)


@dataclass
class RunReport:
    seed: int
    commits: int = 0
    rr_commits: int = 0
    rollbacks: int = 0
    switches: int = 0
    backfills: int = 0
    checks: int = 0
    revs: int = 0
    out_of_order: int = 0
    wrong_tombstones: int = 0
    lost: int = 0
    verify_code: int = -1

    def line(self) -> str:
        return (
            f"adversarial run seed={self.seed}: {self.commits} commits ({self.rr_commits}"
            f" repeatable read), {self.rollbacks} retried, {self.switches} off/on switches,"
            f" {self.backfills} backfills ({self.checks} checked clean), {self.revs} revs read;"
            f" out of order"
            f" {self.out_of_order}, wrong tombstones"
            f" {self.wrong_tombstones}, lost {self.lost}, verify exit {self.verify_code}"
        )


def adversarial_run(db: Database, seed: int, seconds: float) -> RunReport:
    rng = random.Random(seed)
    report = RunReport(seed)
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO study_topic (id, name) SELECT g, 'topic ' || g"
            " FROM generate_series(1, %s) g",
            (TOPICS,),
        )
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status)"
            " SELECT g, 1 + g %% %s, 'q' || g, '[\"a\"]', 'e', 'ready'"
            " FROM generate_series(1, %s, 2) g",
            (TOPICS, MAX_ID),
        )
    log = Log()
    stop_operator, stop_writers, stop_applier = (threading.Event() for _ in range(3))
    gate = Gate()
    reader = TombstoneReader(db)
    writers = [
        threading.Thread(target=_writer, args=(db, seed * 10 + n, stop_writers, gate, log))
        for n in range(4)
    ]
    operator = threading.Thread(target=_operator, args=(db, rng, stop_operator, gate, log, report))
    applier = threading.Thread(target=_applier, args=(db, stop_applier, log))
    for thread in [*writers, operator, applier]:
        thread.start()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and not log.errors:
            reader.poll()
            time.sleep(0.05)
    finally:
        # The operator's last cycle runs with the writers still writing; no backfill
        # follows it. Writes it missed would stay missing: verify would see them.
        for event, threads in ((stop_operator, [operator]), (stop_writers, writers),
                               (stop_applier, [applier])):  # fmt: skip
            event.set()
            for thread in threads:
                thread.join(120)
    assert not log.errors, log.errors
    with db.connect() as conn:
        apply.drain(conn)
    reader.poll()
    report.commits, report.rr_commits, report.rollbacks = log.commits, log.rr_commits, log.rollbacks
    report.revs = len(reader.revs)
    report.out_of_order = reader.out_of_order
    report.wrong_tombstones = len(reader.tombstones - log.made_non_live)
    report.lost = reader.missing_and_wrong(reference_state(db))
    verify = run_subprocess("--database-url", db.url, "verify", "--fail-on", "pending")
    report.verify_code = verify.code
    print(report.line())
    assert verify.code == 0, verify.out
    return report


@pytest.mark.parametrize("run", range(RUNS))
def test_adversarial_run(pub_db: Database, run: int) -> None:
    seed = int(os.environ.get("PUBCTL_ADVERSARIAL_SEED", "20261128")) + run
    report = adversarial_run(pub_db, seed, SECONDS)
    assert report.checks > 0 and report.rr_commits > 0
    assert (report.wrong_tombstones, report.lost, report.out_of_order) == (0, 0, 0), report.line()
