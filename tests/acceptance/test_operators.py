"""Run it like a DBA would: options where users type them, scriptable status, signals,
a safe demo, reset detection, and privilege errors that name the grant."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import psycopg
import pytest

from support.cli import run_subprocess, spawn
from support.db import Database
from support.roles import role_url, roles

UNREACHABLE = "postgresql://someone:s3cr3t-pw@127.0.0.1:1/nowhere"


def pubctl(db: Database, *args: str, **kw: Any) -> Any:
    return run_subprocess(*args, "--database-url", db.url, **kw)


def seed_rows(db: Database, questions: int = 200, publishing: bool = False) -> None:
    """Rows written with publishing off (only a backfill publishes them)."""
    with db.connect() as conn:
        conn.execute("UPDATE pub.settings SET publishing_enabled = %s", (publishing,))
        conn.execute(
            "INSERT INTO study_topic (id, name) SELECT g, 't' || g FROM generate_series(1, 3) g"
        )
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status)"
            " SELECT g, 1, 'q' || g, '[\"a\"]', 'e', 'ready' FROM generate_series(1, %s) g",
            (questions,),
        )
        conn.execute("UPDATE pub.settings SET publishing_enabled = true")


# --- options where users type them --------------------------------------------------


def test_global_options_after_the_command_name(pub_db: Database) -> None:
    result = run_subprocess("status", "--json", "--database-url", pub_db.url)
    assert result.code == 0, result
    assert json.loads(result.out)["revision"]
    result = run_subprocess("migrate", "--database-url", pub_db.url, "--debug")
    assert result.code == 0 and "nothing to do" in result.out
    # The one after the command wins over the environment.
    result = run_subprocess(
        "status", "--database-url", pub_db.url, env={"PUBCTL_DATABASE_URL": UNREACHABLE}
    )
    assert result.code == 0, result


@pytest.mark.parametrize("command", ["status", "backfill all", "verify", "apply", "feed"])
def test_app_schema_is_refused_where_it_would_be_ignored(pub_db: Database, command: str) -> None:
    result = run_subprocess(*command.split(), "--app-schema", "study", "--database-url", pub_db.url)
    assert result.code == 2
    assert "--app-schema does not apply" in result.err
    if command == "feed":
        return  # a feed reader may not read pub.settings: the environment is not checked
    mismatch = run_subprocess(
        "--database-url", pub_db.url, *command.split(), env={"PUBCTL_APP_SCHEMA": "study"}
    )
    assert mismatch.code == 3
    assert "PUBCTL_APP_SCHEMA is 'study', but pubctl is installed for 'public'" in mismatch.err
    same = run_subprocess(
        "--database-url", pub_db.url, *command.split(), env={"PUBCTL_APP_SCHEMA": "public"}
    )
    assert same.code == 0, same


@pytest.mark.parametrize(
    "url",
    ["host=127.0.0.1 port=54x2 dbname=x", "postgresql://u:s3cr3t@h:99999/db", "port=0"],
)
def test_malformed_port_is_a_usage_error(url: str) -> None:
    result = run_subprocess("status", "--database-url", url)
    assert result.code == 2
    assert "invalid port" in result.err and "s3cr3t" not in result.err


# --- scriptable status -------------------------------------------------------------------


def test_status_exits_1_when_capture_is_not_ok(pub_db: Database) -> None:
    with pub_db.connect() as conn:
        conn.execute("ALTER TABLE study_topic DISABLE TRIGGER pub_capture_insert")
    result = pubctl(pub_db, "status")
    assert result.code == 1 and "NOT CAPTURING" in result.out
    result = pubctl(pub_db, "status", "--json")
    assert result.code == 1 and json.loads(result.out)["capture_ok"] is False


def test_status_json_is_one_object_in_every_failure(app_db: Database, pub_db: Database) -> None:
    def status(*args: str) -> tuple[int, dict[str, Any]]:
        result = run_subprocess(*args, "status", "--json")
        assert result.err == "", result.err
        return result.code, json.loads(result.out)

    code, report = status("--database-url", UNREACHABLE)
    assert code == 3 and report["exit_code"] == 3
    assert "cannot connect" in report["error"] and "s3cr3t-pw" not in report["error"]
    code, report = status("--database-url", app_db.url)
    assert code == 3 and "pubctl migrate" in report["error"]
    with pub_db.connect() as conn:
        conn.execute("UPDATE pub.alembic_version SET version_num = '9999'")
    code, report = status("--database-url", pub_db.url)
    assert code == 4 and "newer pubctl" in report["error"]


def test_status_fields_tell_idle_from_stuck(pub_db: Database) -> None:
    report = json.loads(pubctl(pub_db, "status", "--json").out)
    assert report["outbox_oldest_age_s"] is None, "idle: nothing waiting"
    assert report["feed_id"] and report["workers_running"] == 0
    assert "last_apply_age_s" not in report
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'waiting')")
    time.sleep(1.1)
    report = json.loads(pubctl(pub_db, "status", "--json").out)
    assert report["outbox_oldest_age_s"] >= 1.0, "stuck: a change waits for an applier"
    worker = spawn(pub_db.url, "worker", "--poll-interval", "0.2")
    try:
        deadline = time.monotonic() + 20
        while True:
            report = json.loads(pubctl(pub_db, "status", "--json").out)
            if report["workers_running"] == 1 and report["outbox_backlog"] == 0:
                break
            assert time.monotonic() < deadline, report
            time.sleep(0.2)
        assert report["worker_last_active_s"] is not None and report["worker_last_active_s"] < 5
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(15)


# --- signals -----------------------------------------------------------------------------


def _wait_for_progress(db: Database, pages: int = 2) -> None:
    deadline = time.monotonic() + 30
    with db.connect() as conn:
        while True:
            row = conn.execute(
                "SELECT rows_done FROM pub.backfill_runs WHERE source = 'study_question'"
            ).fetchone()
            if row and row[0] >= pages * 20:
                return
            assert time.monotonic() < deadline, "the backfill made no progress"
            time.sleep(0.02)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_backfill_stops_at_a_page_on_a_signal_and_resumes(
    pub_db: Database, sig: signal.Signals, code: int
) -> None:
    seed_rows(pub_db, questions=3000)
    with pub_db.connect() as conn:
        # Slow pages down, so that the signal lands in the middle of the run.
        conn.execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_sleep(0.02); RETURN NULL; END $$;"
            "CREATE TRIGGER slow AFTER INSERT ON pub.outbox FOR EACH STATEMENT"
            " EXECUTE FUNCTION slow()"
        )
    backfill = spawn(
        pub_db.url, "backfill", "all", "--batch-size", "20",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _wait_for_progress(pub_db)
    backfill.send_signal(sig)
    out, err = backfill.communicate(timeout=30)
    assert backfill.returncode == code, (out, err)
    assert "`pubctl backfill all --resume`" in err and "Traceback" not in err
    with pub_db.connect() as conn:
        state, rows = conn.execute(
            "SELECT state, rows_done FROM pub.backfill_runs WHERE source = 'study_question'"
        ).fetchone()
        assert state == "stopped" and 0 < rows < 3000
        conn.execute("DROP TRIGGER slow ON pub.outbox")
    resumed = pubctl(pub_db, "backfill", "all", "--resume")
    assert resumed.code == 0 and "finished" in resumed.out, resumed
    assert pubctl(pub_db, "apply").code == 0
    verify = pubctl(pub_db, "verify", "--fail-on", "pending")
    assert verify.code == 0, verify.out


def test_feed_follow_survives_a_server_restart(pub_db: Database) -> None:
    pg = pub_db.server.throwaway
    if pg is None:
        pytest.skip("needs the throwaway server, which the test can restart")
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'before')")
        conn.execute("SELECT pub.apply_batch(10)")
    follower = spawn(
        pub_db.url, "feed", "--follow", "--poll-interval", "0.2",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert follower.stdout is not None
    try:
        first = json.loads(follower.stdout.readline())
        assert first["payload"]["name"] == "before"
        pg.restart()
        with pub_db.connect() as conn:
            conn.execute("UPDATE study_topic SET name = 'after restart' WHERE id = 1")
            conn.execute("SELECT pub.apply_batch(10)")
        second = json.loads(follower.stdout.readline())
        assert second["payload"]["name"] == "after restart" and second["rev"] == 2
    finally:
        follower.send_signal(signal.SIGTERM)
        _out, err = follower.communicate(timeout=15)
    assert follower.returncode == 0, err
    assert "lost the database" in err and "reconnected after" in err


# --- a feed reader with exactly its grants ----------------------------------------------


def test_pubctl_feed_needs_only_the_reader_grants(pub_db: Database) -> None:
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'a'), (2, 'b')")
        conn.execute("SELECT pub.apply_batch(10)")
    with roles(pub_db) as made:
        reader = made.create("t_feed_reader")
        url = role_url(pub_db, reader)
        denied = run_subprocess("--database-url", url, "feed")
        assert denied.code == 3
        assert "GRANT USAGE ON SCHEMA pub" in denied.err, denied.err
        made.admin.execute(f"GRANT USAGE ON SCHEMA pub TO {reader}")
        made.admin.execute(
            f"GRANT EXECUTE ON FUNCTION pub.feed(bigint, integer, text[]), pub.feed_id() TO {reader}"
        )
        result = run_subprocess("--database-url", url, "feed")
        assert result.code == 0, result
        assert [json.loads(line)["source_id"] for line in result.out.splitlines()] == [1, 2]


# --- reset detection -------------------------------------------------------------------


def test_rollback_is_refused_unless_asked_and_viewers_notice_the_reset(
    pub_db: Database,
) -> None:
    seed_rows(pub_db, questions=10, publishing=True)
    assert pubctl(pub_db, "apply").code == 0
    with pub_db.connect() as conn:
        (old_id,) = conn.execute("SELECT pub.feed_id()::text").fetchone()
        (cursor,) = conn.execute("SELECT last_rev FROM pub.rev_counter").fetchone()
    refused = pubctl(pub_db, "migrate", "--revision", "base")
    assert refused.code == 3
    assert "drops the published state" in refused.err and "--drop-published-state" in refused.err
    with pub_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pub.content").fetchone()[0] > 0
    down = pubctl(pub_db, "migrate", "--revision", "base", "--drop-published-state")
    assert down.code == 0, down
    up = pubctl(pub_db, "migrate")
    assert up.code == 0
    assert "pubctl backfill all" in up.out and "start again from rev 0" in up.out
    assert pubctl(pub_db, "backfill", "all").code == 0
    assert pubctl(pub_db, "apply").code == 0
    # A viewer with a saved cursor and feed identity: the identity tells it to restart.
    with pub_db.connect() as conn:
        (new_id,) = conn.execute("SELECT pub.feed_id()::text").fetchone()
    assert new_id != old_id
    restarted = [json.loads(line) for line in pubctl(pub_db, "feed").out.splitlines()]
    assert len(restarted) == 3 + 10 + 10
    assert pubctl(pub_db, "feed", "--after", str(cursor)).out == "", (
        "the old cursor would have missed everything: the feed id is how a viewer knows"
    )


def test_reader_grants_survive_a_migrate_that_keeps_the_state(pub_db: Database) -> None:
    with roles(pub_db) as made:
        reader = made.create("t_kept_reader")
        made.admin.execute(f"GRANT USAGE ON SCHEMA pub TO {reader}")
        made.admin.execute(
            f"GRANT EXECUTE ON FUNCTION pub.feed(bigint, integer, text[]), pub.feed_id() TO {reader}"
        )
        assert pubctl(pub_db, "migrate").code == 0
        with psycopg.connect(role_url(pub_db, reader), autocommit=True) as conn:
            conn.execute("SELECT * FROM pub.feed(0)").fetchall()
            assert conn.execute("SELECT pub.feed_id()").fetchone()[0] is not None


# --- privileges: one line naming the grant ---------------------------------------------


def test_missing_table_privilege_names_the_grant(pub_db: Database) -> None:
    with roles(pub_db) as made:
        operator = made.create("t_no_select")
        made.admin.execute(f"GRANT USAGE ON SCHEMA pub TO {operator}")
        made.admin.execute(
            f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA pub TO {operator}"
        )
        made.admin.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pub TO {operator}")
        result = run_subprocess(
            "--database-url", role_url(pub_db, operator), "backfill", "all", "--dry-run"
        )
        assert result.code == 3
        assert len(result.err.strip().splitlines()) == 1, result.err
        assert f"GRANT SELECT, UPDATE ON study_topic TO {operator}" in result.err
        assert "QUERY" not in result.err and "CONTEXT" not in result.err


def test_init_sample_schema_needs_only_create_on_the_schema(app_db: Database) -> None:
    with roles(app_db) as made:
        role = made.create("t_schema_creator")
        made.admin.execute("DROP TABLE study_question, study_topic")
        made.admin.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
        result = run_subprocess("--database-url", role_url(app_db, role), "init-sample-schema")
        assert result.code == 0, result
        made.admin.execute("DROP TABLE study_question, study_topic")


def test_feed_follow_stops_when_the_state_is_replaced_behind_its_connection(
    pub_db: Database,
) -> None:
    """The follower's connection stays open while an operator drops the published state
    and installs it again; the new state's revs start from 1 again, below the follower's
    cursor. It must stop, naming the reset, and print nothing of the new state."""
    seed_rows(pub_db, questions=5, publishing=True)
    assert pubctl(pub_db, "apply").code == 0
    follower = spawn(
        pub_db.url, "feed", "--follow", "--poll-interval", "600",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert follower.stdout is not None
    try:
        before = [json.loads(follower.stdout.readline()) for _ in range(3 + 5 + 5)]
        assert [line["rev"] for line in before] == list(range(1, 14))
        assert pubctl(pub_db, "migrate", "--revision", "base", "--drop-published-state").code == 0
        assert pubctl(pub_db, "migrate").code == 0
        with pub_db.connect() as conn:
            for n in range(20):  # more revs than the follower's cursor
                conn.execute("UPDATE study_topic SET name = %s WHERE id = 1", (f"new {n}",))
                conn.execute("SELECT pub.apply_batch(10)")  # notifies: the follower wakes
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 3, err
    assert "was replaced while following it" in err and "--after 0" in err, err
    assert out == "", "nothing of the new state is printed after an old cursor"
