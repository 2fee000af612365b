"""Crash campaign: writers, a worker and backfills run at once while the worker and the
backfill are killed with SIGKILL at random moments. Each run must end with `pubctl
verify` clean, a feed reader holding exactly the reference state, no rev given to an
unchanged item, and no rev seen twice or out of order.

`make test` runs a few short runs; `make soak` runs many (PUBCTL_CRASH_RUNS,
PUBCTL_CRASH_SECONDS). Each run prints a one-line report (shown with `pytest -s`).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.campaign_report import TOTALS
from support.cli import run_subprocess, spawn
from support.db import Database
from support.workload import Reader, Writers, install_churn_audit, reference_state, unchanged_revs

RUNS = int(os.environ.get("PUBCTL_CRASH_RUNS", "3"))
SECONDS = float(os.environ.get("PUBCTL_CRASH_SECONDS", "4"))
MAX_ID = 400


@dataclass
class RunReport:
    seed: int
    writes: int = 0
    worker_kills: int = 0
    kills_inside_a_batch: int = 0
    revs_before_final_apply: int = 0
    backfill_kills: int = 0
    backfills_started: int = 0
    revs: int = 0
    unchanged_revs: int = 0
    out_of_order: int = 0
    lost: int = 0
    verify_code: int = -1

    def line(self) -> str:
        return (
            f"crash run seed={self.seed}: {self.writes} writes, {self.worker_kills} worker"
            f" kills ({self.kills_inside_a_batch} inside a batch), {self.backfill_kills} backfill kills ({self.backfills_started} started),"
            f" {self.revs} revs read; duplicates {self.unchanged_revs}, out of order"
            f" {self.out_of_order}, lost {self.lost}, verify exit {self.verify_code}"
        )


LOG = Path(tempfile.gettempdir()) / "pubctl-crash-campaign.log"


def _pubctl(db: Database, *args: str) -> subprocess.Popen[str]:
    """Start pubctl; its stderr is appended to LOG (shown when a run fails)."""
    with LOG.open("a") as log:
        log.write(f"--- pubctl {' '.join(args)}\n")
        log.flush()
        return spawn(db.url, *args, stderr=log)


def _seed_existing_rows(db: Database, rng: random.Random) -> None:
    """Rows written before publishing was switched on: only a backfill publishes them."""
    with db.connect() as conn:
        conn.execute("UPDATE pub.settings SET publishing_enabled = false")
        conn.execute(
            "INSERT INTO study_topic (id, name) SELECT g, 'topic ' || g FROM generate_series(1, 3) g"
        )
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status, deleted_at)"
            " SELECT g, 1 + g %% 3, 'existing ' || g, '[\"a\", \"b\"]', 'because ' || g,"
            " CASE WHEN g %% 2 = 0 THEN 'ready' ELSE 'draft' END,"
            " CASE WHEN g %% 11 = 0 THEN now() END"
            " FROM generate_series(1, %s) g",
            (rng.randint(150, 300),),
        )
        conn.execute("UPDATE pub.settings SET publishing_enabled = true")


def _backfill_states(db: Database) -> list[str]:
    with db.connect() as conn:
        return [str(s) for (s,) in conn.execute("SELECT state FROM pub.backfill_runs")]


def _backfill_finished(db: Database) -> bool:
    return _backfill_states(db) == ["finished", "finished"]


def _next_backfill(db: Database) -> list[str]:
    """Resume a killed backfill; start over when one was killed before its first page
    (nothing to resume), or start a new one over unchanged rows after a finished run."""
    states = _backfill_states(db)
    if len(states) < 2 or states == ["finished", "finished"]:
        return []
    return ["--resume"]


def _wait_for_a_batch(db: Database, seconds: float) -> int:
    """1 as soon as a pubctl session of this database is seen running an apply batch
    (within ``seconds``), else 0."""
    deadline = time.monotonic() + seconds
    with db.connect() as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'pubctl' AND state = 'active'"
                " AND query LIKE '%%apply_batch%%'"
            ).fetchone()
            if row and row[0]:
                return 1
    return 0


def _worker_joined(db: Database) -> bool:
    """Whether a worker holds its presence lock (it has connected and will apply)."""
    with db.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pub.lock_holders('worker') WHERE granted"
        ).fetchone()
    return bool(row and row[0])


def crash_run(db: Database, seed: int, seconds: float) -> RunReport:
    """One randomized run; returns what it observed."""
    rng = random.Random(seed)
    report = RunReport(seed)
    LOG.write_text(f"crash run seed={seed}\n")
    install_churn_audit(db)
    _seed_existing_rows(db, rng)
    batch = str(rng.choice([7, 50, 500]))
    worker = _pubctl(db, "worker", "--poll-interval", "0.2", "--batch-size", batch)
    worker_started = time.monotonic()
    page = str(rng.choice([13, 64, 250]))
    backfill = _pubctl(db, "backfill", "all", "--batch-size", page)
    report.backfills_started = 1
    reader = Reader(db)
    try:
        with Writers(db, 2, seed, MAX_ID, pause_s=0.002) as writers:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                reader.poll()
                time.sleep(rng.uniform(0.02, 0.15))
                # A worker needs about half a second to start (more on a loaded
                # machine): killing one that has not yet joined the database would
                # kill an interpreter, not a worker.
                if (
                    time.monotonic() - worker_started > 0.8
                    and _worker_joined(db)
                    and rng.random() < 0.25
                ):
                    assert worker.poll() is None, "the worker died on its own"
                    # Aim at a batch in progress when there is one soon (a batch
                    # takes milliseconds); otherwise the kill lands between batches.
                    report.kills_inside_a_batch += _wait_for_a_batch(db, 0.2)
                    worker.kill()
                    worker.wait()
                    report.worker_kills += 1
                    worker = _pubctl(db, "worker", "--poll-interval", "0.2", "--batch-size", batch)
                    worker_started = time.monotonic()
                if backfill.poll() is None and rng.random() < 0.1:
                    backfill.kill()
                    backfill.wait()
                    report.backfill_kills += 1
                if backfill.poll() is not None and rng.random() < 0.2:
                    # Resume what was killed (refused while the killed one's session
                    # still holds its lock: then it is simply tried again later), or
                    # start a new full backfill of unchanged rows after a finished one.
                    again = _next_backfill(db)
                    backfill = _pubctl(db, "backfill", "all", "--batch-size", page, *again)
                    report.backfills_started += 1
            report.writes = writers.writes
        assert not writers.errors, writers.errors
        backfill.wait(60)
        deadline = time.monotonic() + 60
        resumed = None
        while not _backfill_finished(db) and time.monotonic() < deadline:
            resumed = run_subprocess(
                "--database-url", db.url, "backfill", "all", *_next_backfill(db)
            )
            time.sleep(0.1)
        assert _backfill_finished(db), resumed
    finally:
        backfill.kill()
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    reader.poll()
    report.revs_before_final_apply = len(reader.revs)
    assert run_subprocess("--database-url", db.url, "apply").code == 0
    reader.poll()
    report.revs = len(reader.revs)
    report.out_of_order = reader.out_of_order
    report.unchanged_revs = unchanged_revs(db)
    report.lost = reader.missing_and_wrong(reference_state(db))
    verify = run_subprocess("--database-url", db.url, "verify", "--fail-on", "pending")
    report.verify_code = verify.code
    print(report.line())
    TOTALS.crash_runs.append(
        {
            "writes": report.writes,
            "worker_kills": report.worker_kills,
            "kills_inside_a_batch": report.kills_inside_a_batch,
            "backfill_kills": report.backfill_kills,
            "revs_read": report.revs,
            "duplicates": report.unchanged_revs,
            "out_of_order": report.out_of_order,
            "lost": report.lost,
            "verify_failures": int(report.verify_code != 0),
        }
    )
    assert verify.code == 0, verify.out
    return report


@pytest.mark.parametrize("run", range(RUNS))
def test_crash_run(pub_db: Database, run: int) -> None:
    seed = int(os.environ.get("PUBCTL_CRASH_SEED", "20261127")) + run
    report = crash_run(pub_db, seed, SECONDS)
    assert report.worker_kills > 0
    assert report.revs_before_final_apply > 0, (
        "the workers applied nothing themselves:\n" + LOG.read_text()[-3000:]
    )
    assert (report.unchanged_revs, report.out_of_order, report.lost) == (0, 0, 0), report.line()


PAUSE_AT_COMMIT = """
CREATE FUNCTION public.test_pause_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Runs at COMMIT (deferred): the batch's work is done, its commit is not.
    IF current_setting('test.paused', true) IS DISTINCT FROM 'yes' THEN
        PERFORM set_config('test.paused', 'yes', true);
        PERFORM pg_sleep(3);
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER test_pause_at_commit AFTER INSERT OR UPDATE ON pub.content
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.test_pause_at_commit();
"""


@pytest.mark.parametrize(
    "server_notices", [True, False], ids=["backend-rolls-back", "backend-commits"]
)
def test_worker_killed_between_its_apply_and_its_commit(
    pub_db: Database, server_notices: bool
) -> None:
    """SIGKILL while the batch's transaction is committing. Whether the server notices
    the dead client (and rolls the batch back) or finishes the commit, a viewer ends
    with every change exactly once."""
    install_churn_audit(pub_db)
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status)"
            " SELECT g, 1, 'q' || g, '[]', 'e', 'ready' FROM generate_series(1, 50) g"
        )
        conn.execute(PAUSE_AT_COMMIT)
    env = dict(os.environ)
    if server_notices:
        env["PGOPTIONS"] = "-c client_connection_check_interval=100"
    worker = spawn(pub_db.url, "worker", "--poll-interval", "0.2", env=env)
    pausing = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event = 'PgSleep'"
    )
    pubctl_sessions = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'pubctl'"
    )
    with pub_db.connect() as conn:
        deadline = time.monotonic() + 30
        while conn.execute(pausing).fetchone() != (1,):
            assert worker.poll() is None, "the worker exited before reaching the commit"
            assert time.monotonic() < deadline, "the worker never reached the commit"
            time.sleep(0.02)
        worker.kill()  # inside the commit of the first batch
        worker.wait()
        conn.execute("DROP TRIGGER test_pause_at_commit ON pub.content")
        # The killed worker's backend either notices and rolls back, or commits; then
        # it ends.
        deadline = time.monotonic() + 30
        while conn.execute(pubctl_sessions).fetchone() != (0,):
            assert time.monotonic() < deadline, "the killed worker's session lingers"
            time.sleep(0.05)
        applied = conn.execute("SELECT last_rev FROM pub.rev_counter").fetchone()
    assert applied == ((0,) if server_notices else (101,))
    reader = Reader(pub_db)
    reader.poll()
    assert run_subprocess("--database-url", pub_db.url, "apply").code == 0
    reader.poll()
    assert reader.revs == list(range(1, 102)), "every item once, in order"
    assert reader.state == reference_state(pub_db)
    assert unchanged_revs(pub_db) == 0
    verify = run_subprocess("--database-url", pub_db.url, "verify", "--fail-on", "pending")
    assert verify.code == 0, verify.out
