"""pubctl is harmless where it runs: it does not break the application's writes, and
no role without rights on schema pub can stop or steer it.

Real roles throughout: the application's owner (not a superuser), a writer with DML
only, an outsider that may only connect, and pubctl migrated by a superuser or by a
CREATEROLE role with the documented grants.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from pubctl.queries import read_sql_file
from pubctl.throwaway import ThrowawayPostgres

from support.cli import run_subprocess, spawn
from support.db import Database
from support.roles import Roles, role_url, roles

WRITER = "h_app_writer"
OUTSIDER = "h_outsider"


def pubctl(db: Database | str, *args: str, timeout: float = 90) -> Any:
    url = db if isinstance(db, str) else db.url
    return run_subprocess("--database-url", url, *args, timeout=timeout)


def status(db: Database | str) -> dict[str, Any]:
    return json.loads(pubctl(db, "status", "--json").out)  # type: ignore[no-any-return]


@pytest.fixture
def app(pub_db: Database) -> Iterator[Roles]:
    with roles(pub_db) as made:
        made.create(WRITER)
        made.create(OUTSIDER)
        made.admin.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON study_topic, study_question TO {WRITER}"
        )
        made.admin.execute(
            "INSERT INTO study_topic (id, name) SELECT g, 'topic ' || g FROM generate_series(1, 5) g"
        )
        yield made


def writer_url(app: Roles, options: str = "") -> str:
    params = conninfo.conninfo_to_dict(app.url(WRITER))
    if options:
        params["options"] = options
    return conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def two_phase_allowed(app: Roles) -> bool:
    row = app.admin.execute("SHOW max_prepared_transactions").fetchone()
    return int(row[0]) > 0


def outbox_names(app: Roles) -> list[str]:
    return [
        r[0]
        for r in app.admin.execute(
            "SELECT payload ->> 'name' FROM pub.outbox WHERE kind = 'topic' ORDER BY id"
        ).fetchall()
    ]


# --- Two-phase commit --------------------------------------------------------------


def test_prepare_transaction_fails_while_capture_notifies(app: Roles) -> None:
    """Why pubctl.notify exists: Postgres refuses PREPARE after a NOTIFY."""
    if not two_phase_allowed(app):
        pytest.skip("max_prepared_transactions is 0 on this server")
    with psycopg.connect(writer_url(app), autocommit=True) as writer:
        writer.execute("BEGIN")
        writer.execute("INSERT INTO study_topic (id, name) VALUES (40, 'notifying')")
        with pytest.raises(psycopg.Error, match="NOTIFY"):
            writer.execute("PREPARE TRANSACTION 'h_notify'")


@pytest.mark.parametrize("how", ["connection option", "ALTER ROLE"])
def test_two_phase_commit_with_notify_off_is_captured_and_rollback_is_not(
    app: Roles, how: str
) -> None:
    if not two_phase_allowed(app):
        pytest.skip("max_prepared_transactions is 0 on this server")
    assert pubctl(app.db, "apply").code == 0
    if how == "ALTER ROLE":
        app.admin.execute(f"ALTER ROLE {WRITER} SET pubctl.notify = off")
        url = writer_url(app)
    else:
        url = writer_url(app, "-c pubctl.notify=off")
    with psycopg.connect(url, autocommit=True) as writer:
        for gid, topic, end in (("h_commit", 41, "COMMIT"), ("h_rollback", 42, "ROLLBACK")):
            writer.execute("BEGIN")
            writer.execute("INSERT INTO study_topic (id, name) VALUES (%s, 'prepared')", (topic,))
            writer.execute("UPDATE study_topic SET name = %s WHERE id = 1", (f"by {gid}",))
            writer.execute("DELETE FROM study_topic WHERE id = 2")
            writer.execute(f"PREPARE TRANSACTION '{gid}'")
            app.admin.execute(f"{end} PREPARED '{gid}'")
    assert outbox_names(app) == ["prepared", "by h_commit", None]
    assert pubctl(app.db, "apply").code == 0
    published = dict(
        app.admin.execute(
            "SELECT source_id, payload ->> 'name' FROM pub.content WHERE kind = 'topic'"
            " AND NOT deleted"
        ).fetchall()
    )
    assert published[41] == "prepared" and published[1] == "by h_commit"
    assert 42 not in published and 2 not in published
    assert pubctl(app.db, "verify", "--fail-on", "pending").code == 0


def test_prepared_writes_are_applied_within_the_workers_poll_interval(app: Roles) -> None:
    if not two_phase_allowed(app):
        pytest.skip("max_prepared_transactions is 0 on this server")
    worker = spawn(app.db.url, "worker", "--poll-interval", "1")
    try:
        time.sleep(1.5)  # started and idle: no notification will come
        with psycopg.connect(writer_url(app, "-c pubctl.notify=off"), autocommit=True) as w:
            w.execute("BEGIN")
            w.execute("INSERT INTO study_topic (id, name) VALUES (43, 'two-phase')")
            w.execute("PREPARE TRANSACTION 'h_worker'")
        committed = time.monotonic()
        app.admin.execute("COMMIT PREPARED 'h_worker'")
        while not app.admin.execute(
            "SELECT count(*) FROM pub.content WHERE kind = 'topic' AND source_id = 43"
        ).fetchone()[0]:
            assert time.monotonic() - committed < 3, "not applied within the poll interval"
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0


def test_enable_names_a_prepared_transaction_by_its_gid(app: Roles) -> None:
    if not two_phase_allowed(app):
        pytest.skip("max_prepared_transactions is 0 on this server")
    assert pubctl(app.db, "disable").code == 0
    with psycopg.connect(writer_url(app, "-c pubctl.notify=off"), autocommit=True) as writer:
        writer.execute("BEGIN")
        writer.execute("UPDATE study_topic SET name = 'while off' WHERE id = 3")
        writer.execute("PREPARE TRANSACTION 'h_import_7'")
    try:
        result = pubctl(app.db, "enable", "--wait-timeout", "2")
        assert result.code != 0
        assert "prepared transaction 'h_import_7'" in result.err
        assert "COMMIT PREPARED 'h_import_7' or ROLLBACK PREPARED 'h_import_7'" in result.err
        assert "pid None" not in result.err
    finally:
        app.admin.execute("ROLLBACK PREPARED 'h_import_7'")
    assert pubctl(app.db, "enable").code == 0


def test_status_shows_that_two_phase_commit_is_allowed(app: Roles) -> None:
    report = status(app.db)
    allowed = two_phase_allowed(app)
    assert (report["max_prepared_transactions"] > 0) is allowed
    assert report["capture_ok"] is True
    human = pubctl(app.db, "status").out
    assert ("two-phase:" in human) is allowed


# --- Locks only pubctl's roles can take ---------------------------------------------

# The advisory keys pubctl took before its locks moved to objects of schema pub:
# "pubctl" in ASCII followed by 0001-0006.
OLD_KEYS = [8103491283817594881 + i for i in range(6)]


def advisory_keys(admin: psycopg.Connection[Any]) -> set[int]:
    rows = admin.execute(
        "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks"
        " WHERE locktype = 'advisory' AND database ="
        " (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchall()
    return {int(r[0]) for r in rows}


def test_a_role_that_may_only_connect_cannot_stop_pubctl(app: Roles) -> None:
    db = app.db
    seen: set[int] = set()
    # A first round with the worker and a backfill running, to see every advisory lock
    # pubctl takes.
    worker = spawn(db.url, "worker", "--poll-interval", "1")
    try:
        time.sleep(1.5)
        seen |= advisory_keys(app.admin)
        app.admin.execute("UPDATE study_topic SET name = 'seen' WHERE id = 1")
        time.sleep(0.5)
        seen |= advisory_keys(app.admin)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0

    with app.connect(OUTSIDER) as outsider:
        held = []
        for key in sorted(seen | set(OLD_KEYS)):
            if outsider.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                held.append(key)
        assert set(OLD_KEYS) <= set(held)
        # Postgres checks no privilege on advisory locks, but every lock pubctl waits
        # for is a lock on an object of schema pub, which the outsider cannot name.
        with pytest.raises(psycopg.errors.InsufficientPrivilege), outsider.transaction():
            outsider.execute("LOCK TABLE pub.applier_lock IN EXCLUSIVE MODE")

        started = time.monotonic()
        app.admin.execute("UPDATE study_topic SET name = 'held' WHERE id = 2")
        assert pubctl(db, "apply", timeout=30).code == 0
        assert pubctl(db, "disable", timeout=30).code == 0
        assert pubctl(db, "enable", "--wait-timeout", "5", timeout=30).code == 0
        assert pubctl(db, "backfill", "all", timeout=30).code == 0
        report = status(db)
        assert report["applier_busy"] is False and report["workers_running"] == 0
        worker = spawn(db.url, "worker", "--poll-interval", "1")
        try:
            deadline = time.monotonic() + 15
            while status(db)["workers_running"] != 1:
                assert time.monotonic() < deadline, "the worker never registered"
                time.sleep(0.2)
            app.admin.execute("UPDATE study_topic SET name = 'worker ran' WHERE id = 3")
            while app.admin.execute("SELECT count(*) FROM pub.outbox").fetchone()[0]:
                assert time.monotonic() < deadline, "the worker did not apply"
                time.sleep(0.1)
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(15) == 0
        assert pubctl(db, "migrate", "--revision", "0101", timeout=60).code == 0
        assert pubctl(db, "migrate", timeout=60).code == 0
        assert pubctl(db, "verify", "--fail-on", "pending").code == 0
        assert time.monotonic() - started < 90


def test_a_second_backfill_of_the_same_table_is_refused_naming_the_first(app: Roles) -> None:
    with app.admin.cursor() as cur:
        cur.execute("SELECT * FROM pub.take_lease('backfill:study_topic', true)")
        assert cur.fetchone()[0] is True
        pid = app.admin.info.backend_pid
        result = pubctl(app.db, "backfill", "topics")
        assert result.code != 0
        assert f"another backfill of study_topic is running on this database (pid {pid})" in (
            result.err
        )
        cur.execute("SELECT pub.drop_lease('backfill:study_topic')")
    assert pubctl(app.db, "backfill", "topics").code == 0


# --- pub's privileges are pubctl's alone --------------------------------------------


def test_default_privileges_hand_the_writer_nothing_in_pub(app_db: Database) -> None:
    with roles(app_db) as made:
        made.create(WRITER)
        reader = made.create("h_feed_reader")
        admin = made.admin
        for objects in ("TABLES", "SEQUENCES", "FUNCTIONS", "SCHEMAS"):
            admin.execute(f"ALTER DEFAULT PRIVILEGES GRANT ALL ON {objects} TO {WRITER}")
        assert pubctl(app_db, "migrate").code == 0
        admin.execute(f"GRANT USAGE ON SCHEMA pub TO {reader}")
        admin.execute(f"GRANT EXECUTE ON FUNCTION pub.feed, pub.feed_id TO {reader}")

        with made.connect(WRITER) as writer:
            for attempt in (
                "INSERT INTO pub.outbox (kind, source_id, payload, payload_hash,"
                " schema_version, deleted) VALUES ('topic', 1, '{}', 'f00d', 1, false)",
                "UPDATE pub.settings SET publishing_enabled = false",
                "SELECT nextval('pub.outbox_id_seq')",
                "SELECT * FROM pub.content",
                "SELECT * FROM pub.feed(0)",
                "CREATE TABLE pub.planted (x int)",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    writer.execute(attempt)
        assert status(app_db)["capture_ok"] is True

        # A grant added by hand afterwards is reported, and the next migrate revokes it.
        admin.execute(f"GRANT INSERT ON pub.outbox TO {WRITER}")
        report = status(app_db)
        assert report["capture_ok"] is False
        assert any(
            p["subject"] == "pub.outbox" and "INSERT granted to h_app_writer" in p["problem"]
            for p in report["capture_problems"]
        )
        assert pubctl(app_db, "verify").code == 1
        assert pubctl(app_db, "migrate").code == 0
        assert status(app_db)["capture_ok"] is True
        # The reader's documented rights survive that migrate.
        with made.connect(reader) as conn:
            conn.execute("SELECT * FROM pub.feed(0)").fetchall()
        admin.execute(f"ALTER DEFAULT PRIVILEGES REVOKE ALL ON TABLES FROM {WRITER}")
        admin.execute(f"ALTER DEFAULT PRIVILEGES REVOKE ALL ON SEQUENCES FROM {WRITER}")
        admin.execute(f"ALTER DEFAULT PRIVILEGES REVOKE ALL ON FUNCTIONS FROM {WRITER}")
        admin.execute(f"ALTER DEFAULT PRIVILEGES REVOKE ALL ON SCHEMAS FROM {WRITER}")


# --- The CREATEROLE install ---------------------------------------------------------

DOCUMENTED_GRANTS = """
GRANT CREATE ON DATABASE {db} TO {role};
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT, UPDATE, TRIGGER ON study_topic, study_question TO {role};
"""


def test_createrole_install_with_and_without_an_existing_capture_role(
    pg_server: Any,
) -> None:
    """A fresh cluster, so that pubctl_capture does not exist yet: the first install
    creates it, the second (another database, another CREATEROLE role that is not a
    member) finds it."""
    if pg_server.throwaway is None:
        pytest.skip("needs a throwaway server of its own (PUBCTL_TEST_DATABASE_URL is set)")
    with ThrowawayPostgres() as pg, psycopg.connect(pg.url, autocommit=True) as admin:
        # First, an owner that may not create roles: no pubctl_feed_reader; migrate says
        # which grants a viewer's role needs.
        admin.execute("CREATE DATABASE study_zero")
        admin.execute("CREATE ROLE owner_zero LOGIN")
        with psycopg.connect(pg.url_for("study_zero"), autocommit=True) as conn:
            conn.execute(read_sql_file("sample_app_schema.sql").encode())
            conn.execute("ALTER TABLE study_topic OWNER TO owner_zero")
            conn.execute("ALTER TABLE study_question OWNER TO owner_zero")
            conn.execute("GRANT CREATE ON DATABASE study_zero TO owner_zero")
        params = conninfo.conninfo_to_dict(pg.url_for("study_zero"))
        params["user"] = "owner_zero"
        result = pubctl(conninfo.make_conninfo(**params), "migrate")  # type: ignore[arg-type]
        assert result.code == 0, result.err
        assert "may not create pubctl_feed_reader" in result.out
        assert "GRANT EXECUTE ON FUNCTION pub.feed(bigint, integer, text[])" in result.out
        assert not admin.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname = 'pubctl_feed_reader'"
        ).fetchone()[0]
        for n, dbname in enumerate(("study_one", "study_two")):
            role = f"publisher_{n}"
            admin.execute(f"CREATE DATABASE {dbname}")
            admin.execute(f"CREATE ROLE {role} LOGIN CREATEROLE")
            with psycopg.connect(pg.url_for(dbname), autocommit=True) as conn:
                conn.execute(read_sql_file("sample_app_schema.sql").encode())
                conn.execute(DOCUMENTED_GRANTS.format(db=dbname, role=role).encode())
            params = conninfo.conninfo_to_dict(pg.url_for(dbname))
            params["user"] = role
            url = conninfo.make_conninfo(**params)  # type: ignore[arg-type]
            result = pubctl(url, "migrate")
            assert result.code == 0, result.err
            with psycopg.connect(pg.url_for(dbname), autocommit=True) as conn:
                owner = conn.execute(
                    "SELECT proowner::regrole::text FROM pg_proc"
                    " WHERE oid = 'pub.capture_topic_insert()'::regprocedure"
                ).fetchone()[0]
                assert owner == "pubctl_capture"
                assert not conn.execute(
                    "SELECT has_schema_privilege('pubctl_capture', 'pub', 'CREATE')"
                ).fetchone()[0], "the run's temporary CREATE on pub was not revoked"
                conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'captured')")
            assert "pubctl_feed_reader holds their rights" in result.out
            report = json.loads(pubctl(url, "status", "--json").out)
            assert report["capture_ok"] is True, report["capture_problems"]
            assert report["outbox_backlog"] == 1
            assert pubctl(url, "migrate", "--revision", "base").code == 0
            assert pubctl(url, "migrate").code == 0


# --- Projected columns guarded at DDL time ------------------------------------------


@pytest.mark.parametrize(
    ("ddl", "sqlstate"),
    [
        ("ALTER TABLE study_question RENAME COLUMN body TO question_text", "PB007"),
        ("ALTER TABLE study_topic RENAME COLUMN deleted_at TO removed_at", "PB007"),
        # DROP ... CASCADE would take the capture trigger with it, silently.
        ("ALTER TABLE study_question DROP COLUMN explanation_status CASCADE", "PB007"),
        # Postgres itself refuses these: the UPDATE trigger's WHEN clause uses the column.
        ("ALTER TABLE study_topic DROP COLUMN deleted_at", "2BP01"),
        ("ALTER TABLE study_topic ALTER COLUMN exam_round_size TYPE numeric", "0A000"),
    ],
)
def test_a_projected_column_change_is_refused_naming_pubctl(
    pub_db: Database, ddl: str, sqlstate: str
) -> None:
    with pub_db.connect() as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(ddl)
        assert info.value.sqlstate == sqlstate
        if sqlstate == "PB007":
            assert str(info.value).startswith("pubctl: column ")
            assert "Renaming a projected column" in (info.value.diag.message_hint or "")
        assert status(pub_db)["capture_ok"] is True
        # Other DDL of the same tables goes through.
        conn.execute("ALTER TABLE study_question ADD COLUMN reviewed_by text")
        conn.execute("ALTER TABLE study_question RENAME COLUMN reviewed_by TO reviewer")
        conn.execute("ALTER TABLE study_question DROP COLUMN reviewer")


RENAME_PROCEDURE = """
BEGIN;
SET LOCAL pubctl.allow_column_change = 'study_question.body';
ALTER TABLE study_question RENAME COLUMN body TO question_text;
ALTER TABLE study_question ADD COLUMN body text GENERATED ALWAYS AS (question_text) STORED;
SELECT pub.reattach_capture_triggers('study_question');
COMMIT;
"""


def test_the_documented_rename_procedure_keeps_writes_working(pub_db: Database) -> None:
    with pub_db.connect() as admin:
        admin.execute(
            "INSERT INTO study_topic (id, name) VALUES (1, 't');"
            " INSERT INTO study_question (id, topic_id, body, choices, explanation_status)"
            " SELECT g, 1, 'q' || g, '[\"a\"]', 'ready' FROM generate_series(1, 50) g"
        )
    failures: list[str] = []
    stop = threading.Event()
    writes = 0

    def write() -> None:
        nonlocal writes
        with pub_db.connect() as conn:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    conn.execute(
                        "UPDATE study_question SET answer = %s, explanation = %s WHERE id = %s",
                        (n, f"e{n}", n % 50 + 1),
                    )
                    writes += 1
                except psycopg.Error as exc:
                    failures.append(str(exc))

    thread = threading.Thread(target=write)
    thread.start()
    try:
        time.sleep(0.3)
        with pub_db.connect() as conn:
            conn.execute(RENAME_PROCEDURE.encode())
            conn.execute(
                "INSERT INTO study_question (id, topic_id, question_text, choices,"
                " explanation_status) VALUES (51, 1, 'new name', '[\"b\"]', 'draft')"
            )
            conn.execute("UPDATE study_question SET question_text = 'renamed' WHERE id = 2")
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(10)
    assert failures == [] and writes > 0
    report = status(pub_db)
    assert report["capture_ok"] is True, report["capture_problems"]
    assert pubctl(pub_db, "apply").code == 0
    assert pubctl(pub_db, "verify", "--fail-on", "pending").code == 0
    with pub_db.connect() as conn:
        bodies = dict(
            conn.execute(
                "SELECT source_id, payload ->> 'body' FROM pub.content"
                " WHERE kind = 'question' AND source_id IN (2, 51)"
            ).fetchall()
        )
    assert bodies == {2: "renamed", 51: "new name"}


def test_without_a_superuser_there_is_no_guard_and_status_reports(app_db: Database) -> None:
    with roles(app_db) as made:
        owner = made.create("h_app_owner")
        dbname = conninfo.conninfo_to_dict(app_db.url)["dbname"]
        made.admin.execute(f'GRANT CREATE ON DATABASE "{dbname}" TO {owner}')
        made.admin.execute(f"ALTER TABLE study_topic OWNER TO {owner}")
        made.admin.execute(f"ALTER TABLE study_question OWNER TO {owner}")
        url = role_url(app_db, owner)
        assert pubctl(url, "migrate").code == 0
        assert not made.admin.execute("SELECT count(*) FROM pg_event_trigger").fetchone()[0]
        with made.connect(owner) as conn:
            conn.execute("ALTER TABLE study_question RENAME COLUMN body TO question_text")
        report = status(url)
        assert report["capture_ok"] is False
        assert any("body is missing" in p["problem"] for p in report["capture_problems"])
        assert pubctl(url, "verify").code == 1


def test_the_guard_runs_without_a_superusers_rights(pub_db: Database) -> None:
    with pub_db.connect() as conn:
        owner = conn.execute(
            "SELECT p.proowner::regrole::text, r.rolsuper FROM pg_proc p"
            " JOIN pg_roles r ON r.oid = p.proowner"
            " WHERE p.oid = 'pub.guard_projected_columns()'::regprocedure"
        ).fetchone()
    assert owner == ("pubctl_capture", False)


def test_worker_status_and_applier_use_no_advisory_key_of_their_own(app: Roles) -> None:
    """The only advisory locks left are the leases' random keys."""
    worker = spawn(app.db.url, "worker", "--poll-interval", "1")
    try:
        time.sleep(1.5)
        keys = advisory_keys(app.admin)
        leases = {
            int(r[0]) for r in app.admin.execute("SELECT lock_key FROM pub.leases").fetchall()
        }
        assert keys and keys == leases
        assert not keys & set(OLD_KEYS)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0


# --- The current-state path runs no code of the table owner's ------------------------

EVIL_NAME = """
CREATE TYPE h_evil AS (v text);
CREATE FUNCTION h_evil_to_text(h_evil) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'ALTER ROLE h_table_owner SUPERUSER';
    RETURN ($1).v;
END $$;
CREATE CAST (h_evil AS text) WITH FUNCTION h_evil_to_text(h_evil) AS IMPLICIT;
SET pubctl.allow_column_change = 'study_topic.name';
ALTER TABLE study_topic RENAME COLUMN name TO name_old;
ALTER TABLE study_topic ADD COLUMN name h_evil;
"""


def test_the_current_state_path_checks_types_before_it_reads(pub_db: Database) -> None:
    """An INSERT in a transaction that updated the table first takes the path that reads
    rows back (as the migrating role, a superuser here): the column types are checked
    first, so an implicit cast of the owner's never runs."""
    with roles(pub_db) as made:
        owner = made.create("h_table_owner")
        made.admin.execute(f"GRANT CREATE ON SCHEMA public TO {owner}")
        made.admin.execute(f"ALTER TABLE study_topic OWNER TO {owner}")
        made.admin.execute("INSERT INTO study_topic (id, name) VALUES (1, 'one')")
        with made.connect(owner) as conn:
            with pytest.raises(psycopg.Error) as info, conn.transaction():
                # Captured with the table as it was; the counter now says "updated".
                conn.execute("UPDATE study_topic SET name = 'uno' WHERE id = 1")
                conn.execute(EVIL_NAME)
                conn.execute(
                    "INSERT INTO study_topic (id, name_old, name) VALUES (2, 'y', ROW('z'))"
                )
            assert info.value.sqlstate == "PB004"
            assert "capture_topic_insert" in str(info.value.diag.context)
        superuser = made.admin.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (owner,)
        ).fetchone()[0]
        assert superuser is False
