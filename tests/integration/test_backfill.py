"""Backfill: every existing row published, bounded, resumable, safe beside live writes."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from typing import Any

import pytest

from support.cli import run_inprocess, run_subprocess, spawn
from support.db import Database
from support.workload import reference_state


def seed(db: Database, questions: int, *, publishing: bool = False) -> None:
    """Rows that existed before pubctl (inserted with publishing off)."""
    with db.connect() as conn:
        conn.execute("UPDATE pub.settings SET publishing_enabled = %s", (publishing,))
        conn.execute(
            "INSERT INTO study_topic (id, name) SELECT g, 't' || g FROM generate_series(1, 3) g"
        )
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status, deleted_at)"
            " SELECT g, 1, 'q' || g, '[\"a\"]', 'e' || g,"
            " CASE WHEN g %% 2 = 0 THEN 'ready' ELSE 'draft' END,"
            " CASE WHEN g %% 10 = 0 THEN now() END FROM generate_series(1, %s) g",
            (questions,),
        )
        conn.execute("UPDATE pub.settings SET publishing_enabled = true")


def published(db: Database) -> dict[tuple[str, int], Any]:
    """Live items in pub.content."""
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT kind, source_id, payload FROM pub.content WHERE NOT deleted"
        ).fetchall()
    return {(k, s): p for k, s, p in rows}


def without_topics(items: dict[tuple[str, int], Any]) -> dict[tuple[str, int], Any]:
    return {k: v for k, v in items.items() if k[0] != "topic"}


def apply_all(db: Database) -> None:
    with db.connect() as conn:
        while conn.execute("SELECT consumed FROM pub.apply_batch(10000)").fetchone() != (0,):
            pass


def assert_verify_clean(capsys: pytest.CaptureFixture[str], db: Database, *kinds: str) -> None:
    """`pubctl verify` finds nothing wrong (for these kinds; all when none are named)."""
    kind_args = [arg for kind in kinds for arg in ("--kind", kind)]
    result = run_inprocess(
        capsys, "--database-url", db.url, "verify", "--fail-on", "pending", "--json", *kind_args
    )
    assert result.code == 0, result.out


def backfill(capsys: pytest.CaptureFixture[str], db: Database, *args: str) -> Any:
    result = run_inprocess(capsys, "--database-url", db.url, "backfill", *args, "--json")
    assert result.code == 0, result
    return json.loads(result.out)


def test_backfill_publishes_rows_that_existed_before(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    seed(pub_db, 1000)
    with pub_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pub.outbox").fetchone() == (0,)
    results = backfill(capsys, pub_db, "all", "--batch-size", "128")
    assert [r["state"] for r in results] == ["finished", "finished"]
    assert [r["rows"] for r in results] == [3, 1000]
    apply_all(pub_db)
    assert published(pub_db) == reference_state(pub_db)
    assert_verify_clean(capsys, pub_db)
    again = backfill(capsys, pub_db, "all")
    with pub_db.connect() as conn:
        last = conn.execute("SELECT last_rev FROM pub.rev_counter").fetchone()
        apply_all(pub_db)
        assert conn.execute("SELECT last_rev FROM pub.rev_counter").fetchone() == last, "churn 0"
    assert again[1]["enqueued"] == 900 + 400


def test_backfill_tombstones_what_changed_while_publishing_was_off(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    seed(pub_db, 50, publishing=True)
    apply_all(pub_db)
    with pub_db.connect() as conn:
        conn.execute("UPDATE pub.settings SET publishing_enabled = false")
        conn.execute("DELETE FROM study_question WHERE id IN (1, 2, 49, 50)")  # 50 is the last id
        conn.execute("UPDATE study_question SET deleted_at = now() WHERE id = 3")
        conn.execute("UPDATE study_question SET explanation_status = 'review' WHERE id = 4")
        conn.execute("UPDATE study_question SET body = 'changed while off' WHERE id = 5")
        conn.execute("UPDATE study_topic SET deleted_at = now() WHERE id = 3")
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation_status) VALUES (51, 1, 'new', '[]', 'draft')"
        )
        conn.execute("UPDATE pub.settings SET publishing_enabled = true")
    backfill(capsys, pub_db, "all", "--batch-size", "7")
    apply_all(pub_db)
    assert published(pub_db) == reference_state(pub_db)
    assert_verify_clean(capsys, pub_db)
    with pub_db.connect() as conn:
        tombstones = conn.execute(
            "SELECT kind, source_id FROM pub.content WHERE deleted ORDER BY 1, 2"
        ).fetchall()
    assert set(tombstones) >= {("question", 1), ("question", 49), ("explanation", 4), ("topic", 3)}


def test_row_updated_while_a_page_reads_it_ends_at_its_newest_payload(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    seed(pub_db, 10)
    with pub_db.connect(autocommit=False) as page, pub_db.connect() as writer:
        page.execute(
            "INSERT INTO pub.backfill_runs (source, after_id, last_id, state) VALUES ('study_question', 0, 0, 'running')"
        )
        page.execute(
            "SELECT * FROM pub.backfill_page('study_question', 0, 100, false, false)"
        )  # read v1
        blocked_for: list[float] = []

        def write_v2() -> None:
            started = time.monotonic()
            writer.execute("UPDATE study_question SET body = 'v2' WHERE id = 4")
            blocked_for.append(time.monotonic() - started)

        thread = threading.Thread(target=write_v2)
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive(), "the writer waits for the page's FOR SHARE lock"
        page.commit()
        thread.join(10)
    assert blocked_for and blocked_for[0] >= 0.4
    apply_all(pub_db)
    assert published(pub_db)[("question", 4)]["body"] == "v2"
    assert published(pub_db) == without_topics(reference_state(pub_db))
    assert_verify_clean(capsys, pub_db, "question", "explanation")


def test_page_waits_for_a_writer_in_progress_and_reads_its_version(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    seed(pub_db, 10)
    with pub_db.connect(autocommit=False) as writer, pub_db.connect() as page:
        writer.execute("UPDATE study_question SET body = 'v2' WHERE id = 4")  # not committed
        results: list[Any] = []
        thread = threading.Thread(
            target=lambda: results.append(
                page.execute(
                    "SELECT * FROM pub.backfill_page('study_question', 0, 100, false, false)"
                ).fetchone()
            )
        )
        page_pid = page.info.backend_pid
        thread.start()
        with pub_db.connect() as observer:
            deadline = time.monotonic() + 10
            while observer.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (page_pid,)
            ).fetchone() != ("Lock",):
                assert time.monotonic() < deadline, "the page never waited for the row lock"
                time.sleep(0.02)
        assert thread.is_alive()
        writer.commit()
        thread.join(10)
    assert results, "the page finished once the writer committed"
    apply_all(pub_db)
    assert published(pub_db)[("question", 4)]["body"] == "v2"
    assert_verify_clean(capsys, pub_db, "question", "explanation")


def test_backfill_beside_concurrent_writers(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    seed(pub_db, 20000)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(seed_: int) -> None:
        rng = random.Random(seed_)
        try:
            with pub_db.connect() as conn:
                while not stop.is_set():
                    qid = rng.randint(1, 20000)
                    if rng.random() < 0.7:
                        conn.execute(
                            "UPDATE study_question SET body = %s WHERE id = %s",
                            (f"w{rng.random()}", qid),
                        )
                    elif rng.random() < 0.5:
                        conn.execute(
                            "UPDATE study_question SET deleted_at = now() WHERE id = %s", (qid,)
                        )
                    else:
                        conn.execute("DELETE FROM study_question WHERE id = %s", (qid,))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        backfill(capsys, pub_db, "questions", "--batch-size", "500")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    apply_all(pub_db)
    ref = reference_state(pub_db)
    assert {k: v for k, v in published(pub_db).items() if k[0] != "topic"} == {
        k: v for k, v in ref.items() if k[0] != "topic"
    }
    assert_verify_clean(capsys, pub_db, "question", "explanation")


def test_resume_after_a_killed_backfill(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    seed(pub_db, 60000)
    proc = spawn(pub_db.url, "backfill", "questions", "--batch-size", "1000")
    with pub_db.connect() as conn:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT rows_done FROM pub.backfill_runs WHERE source = 'study_question'"
            ).fetchone()
            if row and row[0] >= 5000:
                break
            time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    with pub_db.connect() as conn:
        # The killed client's backend may still commit the page it was running: wait
        # until the server has noticed the client is gone.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pubctl'"
        ).fetchone() != (0,):
            time.sleep(0.05)
        done, last_id, state = conn.execute(
            "SELECT rows_done, last_id, state FROM pub.backfill_runs WHERE source = 'study_question'"
        ).fetchone()
    assert state == "running" and done == last_id
    if done == 60000:
        pytest.skip("the backfill finished before it could be killed")
    (result,) = backfill(capsys, pub_db, "questions", "--resume")
    assert result["state"] == "finished"
    assert result["started_after_id"] == last_id
    assert result["rows"] == 60000 - last_id, (
        "resumes after the last committed page, re-reads nothing"
    )
    apply_all(pub_db)
    assert published(pub_db) == without_topics(reference_state(pub_db))


def test_max_rows_stops_exactly_and_resume_continues(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    seed(pub_db, 100)
    first = backfill(capsys, pub_db, "all", "--max-rows", "50", "--batch-size", "7")
    assert [(r["source"], r["state"], r["rows"]) for r in first] == [
        ("study_topic", "finished", 3),
        ("study_question", "stopped", 47),
    ]
    text = run_inprocess(
        capsys, "--database-url", pub_db.url, "backfill", "all", "--resume", "--max-rows", "20"
    )
    assert text.code == 0
    assert "study_topic: nothing to resume" in text.out
    assert "study_question: stopped, 20 rows read" in text.out and "--resume" in text.out
    last = backfill(capsys, pub_db, "all", "--resume")
    assert last[1]["rows"] == 33 and last[1]["state"] == "finished"
    nothing = run_inprocess(
        capsys, "--database-url", pub_db.url, "backfill", "questions", "--resume"
    )
    assert nothing.code == 0 and "nothing to resume" in nothing.out


def test_dry_run_writes_nothing(capsys: pytest.CaptureFixture[str], pub_db: Database) -> None:
    seed(pub_db, 100)
    (result,) = backfill(capsys, pub_db, "questions", "--dry-run")
    assert result["state"] == "dry run" and result["enqueued"] == 90 + 40
    with pub_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pub.outbox").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pub.backfill_runs").fetchone() == (0,)


def test_include_deleted_enqueues_tombstones(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    seed(pub_db, 20)
    (result,) = backfill(capsys, pub_db, "questions", "--include-deleted")
    assert result["enqueued"] == 40
    with pub_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pub.outbox WHERE deleted").fetchone() == (
            2 + 10 + 2,
        )


def test_two_backfills_of_one_source_are_refused(pub_db: Database) -> None:
    seed(pub_db, 10)
    with pub_db.connect() as holder:
        holder.execute(
            "SELECT pub.take_lease('backfill:study_question', true)"
        )  # what a running backfill holds
        result = run_subprocess("--database-url", pub_db.url, "backfill", "questions")
        assert result.code == 3
        assert "another backfill of study_question is running" in result.err
        assert run_subprocess("--database-url", pub_db.url, "backfill", "topics").code == 0


def test_backfill_refuses_while_publishing_is_off(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    seed(pub_db, 10)
    assert run_inprocess(capsys, "--database-url", pub_db.url, "disable").code == 0
    result = run_inprocess(capsys, "--database-url", pub_db.url, "backfill", "all")
    assert result.code == 3 and "pubctl enable" in result.err
    with pub_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pub.outbox").fetchone() == (0,)


def test_max_backlog_waits_for_the_applier(pub_db: Database) -> None:
    seed(pub_db, 300)
    proc = spawn(
        pub_db.url,
        "backfill",
        "questions",
        "--batch-size",
        "100",
        "--max-backlog",
        "100",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(2.0)
    assert proc.poll() is None, "paused while the backlog is above --max-backlog"
    with pub_db.connect() as conn:
        backlog = conn.execute("SELECT count(*) FROM pub.outbox").fetchone()
    assert backlog is not None and 100 < backlog[0] <= 300
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        apply_all(pub_db)
        time.sleep(0.2)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "waiting for the applier" in err
    assert "finished, 300 rows read" in out


@pytest.mark.parametrize(
    "args",
    [
        ["backfill", "questions", "--batch-size", "0"],
        ["backfill", "questions", "--batch-size", "-1"],
        ["backfill", "questions", "--after-id", "-1"],
        ["backfill", "questions", "--max-rows", "0"],
        ["backfill", "answers"],
        ["backfill"],
        ["backfill", "all", "--resume", "--after-id", "5"],
    ],
)
def test_bad_backfill_input_exits_2_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], pub_db: Database, args: list[str]
) -> None:
    seed(pub_db, 10)
    result = run_inprocess(capsys, "--database-url", pub_db.url, *args)
    assert result.code == 2, result
    with pub_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pub.outbox").fetchone() == (0,)
