"""No role reaches beyond its rights, and no interleaving loses a change.

Each test reproduces an attack or a race as a review found it, with real roles: an
application owner that is not a superuser (it owns study_topic and study_question), an
application writer with DML only, and pubctl migrated by a superuser, the normal install.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from pubctl import migrate
from pubctl.errors import MissingSourceError

from support.cli import run_subprocess
from support.db import Database
from support.roles import Roles, roles

OWNER = "t_app_owner"
WRITER = "t_app_writer"


@dataclass
class App:
    db: Database
    roles: Roles

    def owner(self) -> psycopg.Connection:
        return self.roles.connect(OWNER)

    def writer(self, *, autocommit: bool = True) -> psycopg.Connection:
        return self.roles.connect(WRITER, autocommit=autocommit)

    def admin(self) -> psycopg.Connection:
        return self.roles.admin

    def pubctl(self, *args: str, timeout: float = 60) -> Any:
        return run_subprocess("--database-url", self.db.url, *args, timeout=timeout)


@pytest.fixture
def app(pub_db: Database) -> Iterator[App]:
    with roles(pub_db) as made:
        made.create(OWNER)
        made.create(WRITER)
        admin = made.admin
        admin.execute(f"GRANT CREATE ON SCHEMA public TO {OWNER}")
        admin.execute(f"ALTER TABLE study_topic OWNER TO {OWNER}")
        admin.execute(f"ALTER TABLE study_question OWNER TO {OWNER}")
        admin.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON study_topic, study_question TO {WRITER}"
        )
        admin.execute(
            "INSERT INTO study_topic (id, name) SELECT g, 'topic ' || g FROM generate_series(1, 10) g"
        )
        admin.execute("SELECT pub.apply_batch(1000)")
        yield App(pub_db, made)


def is_superuser(app: App, role: str) -> bool:
    row = app.admin().execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,))
    return bool(row.fetchone()[0])


def status(app: App) -> dict[str, Any]:
    result = app.pubctl("status", "--json")
    return json.loads(result.out)  # type: ignore[no-any-return]


def apply_and_verify(app: App) -> Any:
    assert app.pubctl("apply").code == 0
    return app.pubctl("verify", "--fail-on", "pending", "--json")


# --- 1. A table owner reaching the migrating role's rights ------------------------

EVIL_CAST = f"""
CREATE TYPE evil AS (v text);
CREATE FUNCTION evil_to_text(evil) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'ALTER ROLE {OWNER} SUPERUSER';
    RETURN ($1).v;
END $$;
CREATE CAST (evil AS text) WITH FUNCTION evil_to_text(evil) AS IMPLICIT;
SET pubctl.allow_column_change = 'study_topic.name';  -- past the DDL guard
ALTER TABLE study_topic RENAME COLUMN name TO name_old;
ALTER TABLE study_topic ADD COLUMN name evil;
"""


def test_owner_column_with_an_implicit_cast_runs_nothing_as_capture(app: App) -> None:
    with app.owner() as owner:
        owner.execute(EVIL_CAST)
        # The reproduction: insert a topic, as the owner.
        with pytest.raises(psycopg.Error) as info:
            owner.execute("INSERT INTO study_topic (id, name_old, name) VALUES (20, 'x', ROW('y'))")
        assert info.value.sqlstate == "PB004"
        assert "study_topic" in str(info.value)
        # The UPDATE (row trigger) and DELETE paths check before they read, too.
        for write in (
            "UPDATE study_topic SET name_old = 'changed' WHERE id = 1",
            "DELETE FROM study_topic WHERE id = 2",
        ):
            with pytest.raises(psycopg.Error) as info:
                owner.execute(write)
            assert info.value.sqlstate == "PB004", write
    assert not is_superuser(app, OWNER), "the owner's cast ran with capture's rights"

    # Status and verify name the cause; backfill refuses; none runs the cast as the
    # operator (a superuser here).
    report = status(app)
    assert report["capture_ok"] is False
    assert any(
        p["subject"] == "study_topic" and "name is public.evil" in p["problem"]
        for p in report["capture_problems"]
    ), report["capture_problems"]
    verify = app.pubctl("verify", "--json")
    assert verify.code == 1
    assert "name is public.evil" in verify.out
    backfill = app.pubctl("backfill", "topics")
    assert backfill.code == 3 and "PB004" in backfill.err, backfill
    assert not is_superuser(app, OWNER)


def test_capture_runs_as_a_nologin_role_with_only_what_it_needs(app: App) -> None:
    owner, can_login, superuser = (
        app.admin()
        .execute(
            "SELECT r.rolname, r.rolcanlogin, r.rolsuper FROM pg_proc p"
            " JOIN pg_roles r ON r.oid = p.proowner"
            " WHERE p.oid = 'pub.capture_question_update()'::regprocedure"
        )
        .fetchone()
    )
    assert (owner, can_login, superuser) == ("pubctl_capture", False, False)
    privileges = {
        (table, privilege)
        for table, privilege in app.admin().execute(
            "SELECT table_name, privilege_type FROM information_schema.role_table_grants"
            " WHERE grantee = 'pubctl_capture'"
        )
    }
    assert privileges == {
        ("outbox", "SELECT"),
        ("outbox", "INSERT"),
        ("outbox", "DELETE"),
        ("settings", "SELECT"),
        ("unpublished_writers", "INSERT"),
    }


def test_a_writers_temporary_table_cannot_stand_in_for_the_transition_table(app: App) -> None:
    with app.writer() as writer:
        writer.execute(
            "CREATE TEMP TABLE new_rows AS SELECT 999::bigint AS id, 'forged'::text AS name,"
            " 1 AS exam_round_size, NULL::timestamptz AS deleted_at"
        )
        writer.execute("INSERT INTO study_topic (id, name) VALUES (30, 'real')")
    rows = app.admin().execute("SELECT source_id, payload ->> 'name' FROM pub.outbox").fetchall()
    assert rows == [(30, "real")]


def test_row_level_security_never_runs_the_owners_policy_as_the_operator(app: App) -> None:
    operator = app.roles.create("t_operator")
    admin = app.admin()
    admin.execute(f"GRANT USAGE ON SCHEMA pub TO {operator}")
    admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA pub TO {operator}")
    admin.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pub TO {operator}")
    admin.execute(f"GRANT SELECT ON study_topic, study_question TO {operator}")
    with app.owner() as owner:
        owner.execute(
            "CREATE TABLE policy_calls (who text);"
            "GRANT INSERT ON policy_calls TO PUBLIC;"
            "CREATE FUNCTION record_caller() RETURNS boolean LANGUAGE plpgsql AS $$"
            " BEGIN INSERT INTO public.policy_calls VALUES (current_user); RETURN true; END $$;"
            "ALTER TABLE study_topic ENABLE ROW LEVEL SECURITY;"
            "ALTER TABLE study_topic FORCE ROW LEVEL SECURITY;"
            "CREATE POLICY everyone ON study_topic USING (record_caller());"
        )
    result = run_subprocess(
        "--database-url", app.roles.url(operator), "verify", "--kind", "topic", timeout=60
    )
    assert result.code == 3, result
    assert "row-level security" in result.err
    with app.owner() as owner:
        assert owner.execute("SELECT count(*) FROM policy_calls").fetchone() == (0,)


# --- 2. A primary-key update while a backfill page waits on it ---------------------


def _wait_until_blocked(admin: psycopg.Connection, pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        if row and row[0] == "Lock":
            return
        time.sleep(0.02)
    raise AssertionError("the page never waited")


def test_page_bounds_ignore_an_id_a_concurrent_update_produced(app: App) -> None:
    admin = app.admin()
    admin.execute(
        "INSERT INTO pub.backfill_runs (source, after_id, last_id, state)"
        " VALUES ('study_topic', 0, 0, 'running')"
    )
    page_result: list[Any] = []
    with app.writer(autocommit=False) as writer, app.db.connect() as pager:
        pid = pager.execute("SELECT pg_backend_pid()").fetchone()[0]
        writer.execute("UPDATE study_topic SET id = 100 WHERE id = 2")  # not committed yet

        def page() -> None:
            page_result.append(
                pager.execute(
                    "SELECT * FROM pub.backfill_page('study_topic', 0, 3, false, false)"
                ).fetchone()
            )

        thread = threading.Thread(target=page)
        thread.start()
        _wait_until_blocked(admin, pid)
        writer.commit()
        thread.join(10)
    rows_read, last_id, _enqueued, finished = page_result[0]
    assert (rows_read, last_id, finished) == (2, 3, False), page_result
    tombstoned = admin.execute(
        "SELECT source_id FROM pub.outbox WHERE deleted ORDER BY source_id"
    ).fetchall()
    assert tombstoned == [(2,)], "only the moved-away id is tombstoned (by its writer)"
    # The rest of the table: no id between 3 and 100 is skipped.
    after = last_id
    while True:
        rows_read, after, _e, finished = admin.execute(
            "SELECT * FROM pub.backfill_page('study_topic', %s, 3, false, false)", (after,)
        ).fetchone()
        if finished:
            break
    verify = apply_and_verify(app)
    assert verify.code == 0, verify.out
    live = admin.execute(
        "SELECT source_id FROM pub.content WHERE kind = 'topic' AND NOT deleted ORDER BY 1"
    ).fetchall()
    assert [s for (s,) in live] == [1, *range(3, 11), 100]


# --- 3. `pubctl enable` racing with writers in flight ------------------------------


def test_enable_and_backfill_wait_for_a_transaction_that_wrote_while_off(app: App) -> None:
    assert app.pubctl("disable").code == 0
    with app.writer(autocommit=False) as writer:
        writer.execute("INSERT INTO study_topic (id, name) VALUES (50, 'written while off')")
        pid = writer.execute("SELECT pg_backend_pid()").fetchone()[0]
        enable = app.pubctl("enable", "--wait-timeout", "1")
        assert enable.code == 3, enable
        assert f"pid {pid}" in enable.err and "wrote while publishing was off" in enable.err
        assert "publishing is on" in enable.out
        backfill = app.pubctl("backfill", "all", "--wait-timeout", "1")
        assert backfill.code == 3 and f"pid {pid}" in backfill.err, backfill
        writer.commit()
    assert app.pubctl("enable").code == 0
    assert app.pubctl("backfill", "all").code == 0
    verify = apply_and_verify(app)
    assert verify.code == 0, verify.out
    assert app.admin().execute(
        "SELECT payload ->> 'name' FROM pub.content WHERE kind = 'topic' AND source_id = 50"
    ).fetchone() == ("written while off",)


def test_enable_committing_while_a_writer_marks_itself_does_not_lose_its_write(
    app: App,
) -> None:
    """READ COMMITTED: the writer's capture reads "off", then `enable` commits, then the
    writer marks itself and reads the switch again. Enable found no mark and did not
    wait, so the second read must see "on" and publish, or the write is lost: no outbox
    row, and a backfill that already passed the row never comes back to it."""
    assert app.pubctl("disable").code == 0
    admin = app.admin()
    with app.db.connect() as gatekeeper:
        gatekeeper.autocommit = False
        # Holding the marker lock exclusively stops the writer's capture right after it
        # read "off" and before it marks itself (pub.unpublished_write_allowed).
        gatekeeper.execute("LOCK TABLE pub.unpublished_writers IN SHARE MODE")
        done = threading.Event()

        def write() -> None:
            with app.writer() as writer:
                writer.execute("UPDATE study_topic SET name = 'during enable' WHERE id = 3")
            done.set()

        writer_thread = threading.Thread(target=write)
        writer_thread.start()
        deadline = time.monotonic() + 10
        while not admin.execute(
            "SELECT count(*) FROM pub.lock_holders('unpublished_writers') WHERE NOT granted"
        ).fetchone()[0]:
            assert time.monotonic() < deadline, "the writer never reached the marker"
            time.sleep(0.02)
        # `enable` commits while the writer waits: it sees no writer to wait for.
        admin.execute("SELECT pub.set_publishing(true)")
        gatekeeper.rollback()
        writer_thread.join(10)
        assert done.is_set()
    assert admin.execute(
        "SELECT payload ->> 'name' FROM pub.outbox WHERE kind = 'topic' AND source_id = 3"
    ).fetchall() == [("during enable",)], "the write was skipped with publishing on"


def test_repeatable_read_transaction_from_before_enable_still_publishes(app: App) -> None:
    assert app.pubctl("disable").code == 0
    with app.writer(autocommit=False) as rr:
        rr.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        rr.execute("SELECT count(*) FROM study_topic")  # the snapshot: publishing off
        assert app.pubctl("enable").code == 0
        rr.execute("INSERT INTO study_topic (id, name) VALUES (60, 'after enable')")
        rr.execute("UPDATE study_topic SET name = 'renamed after enable' WHERE id = 1")
        rr.commit()
    captured = (
        app.admin()
        .execute("SELECT source_id, payload ->> 'name' FROM pub.outbox ORDER BY id")
        .fetchall()
    )
    assert captured == [(60, "after enable"), (1, "renamed after enable")]


def test_truncate_guard_holds_for_a_snapshot_from_before_enable(app: App) -> None:
    assert app.pubctl("disable").code == 0
    with app.owner() as owner:
        owner.autocommit = False
        owner.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        owner.execute("SELECT count(*) FROM study_question")
        assert app.pubctl("enable").code == 0
        with pytest.raises(psycopg.Error) as info:
            owner.execute("TRUNCATE study_question")
        assert info.value.sqlstate == "PB002"


def test_truncate_while_off_holds_enable_until_it_ends(app: App) -> None:
    assert app.pubctl("disable").code == 0
    with app.owner() as owner:
        owner.autocommit = False
        owner.execute("TRUNCATE study_question, study_topic")
        enable = app.pubctl("enable", "--wait-timeout", "1")
        assert enable.code == 3 and "wrote while publishing was off" in enable.err
        owner.commit()
    assert app.pubctl("enable").code == 0
    assert app.pubctl("backfill", "all").code == 0
    verify = apply_and_verify(app)
    assert verify.code == 0, verify.out


# --- 4. Capture bypassed without status or verify noticing ------------------------


def test_replica_role_of_a_writer_is_reported(app: App) -> None:
    app.admin().execute(f"ALTER ROLE {WRITER} SET session_replication_role = replica")
    with app.writer() as writer:
        writer.execute("INSERT INTO study_topic (id, name) VALUES (70, 'silent')")
    assert app.admin().execute("SELECT count(*) FROM pub.outbox").fetchone() == (0,)
    report = status(app)
    assert report["capture_ok"] is False
    assert {
        "subject": f"role {WRITER}",
        "problem": "session_replication_role = replica is set: its writes fire no trigger",
    } in report["capture_problems"]
    verify = app.pubctl("verify", "--json")
    assert verify.code == 1 and f"role {WRITER}" in verify.out


@pytest.mark.parametrize(
    "replacement",
    [
        "CREATE TRIGGER pub_capture_insert AFTER INSERT ON study_topic"
        " FOR EACH STATEMENT EXECUTE FUNCTION public.do_nothing()",
        "CREATE TRIGGER pub_capture_insert BEFORE INSERT ON study_topic"
        " FOR EACH STATEMENT EXECUTE FUNCTION pub.capture_topic_insert()",
        "CREATE TRIGGER pub_capture_insert AFTER INSERT ON study_topic"
        " FOR EACH ROW EXECUTE FUNCTION public.do_nothing()",
        "CREATE TRIGGER pub_capture_insert AFTER UPDATE ON study_topic"
        " FOR EACH STATEMENT EXECUTE FUNCTION public.do_nothing()",
    ],
    ids=["another function", "another timing", "another level", "another event"],
)
def test_a_replaced_trigger_is_reported(app: App, replacement: str) -> None:
    with app.owner() as owner:
        owner.execute(
            "CREATE FUNCTION public.do_nothing() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN RETURN NULL; END $$"
        )
        owner.execute("DROP TRIGGER pub_capture_insert ON study_topic")
        try:
            owner.execute(replacement)
        except psycopg.errors.InsufficientPrivilege:
            # EXECUTE on pub's functions is not the owner's: the superuser does it.
            app.admin().execute(replacement)
    report = status(app)
    assert report["capture_ok"] is False
    problems = [
        p for p in report["capture_problems"] if p["subject"] == "study_topic.pub_capture_insert"
    ]
    assert problems and problems[0]["problem"].startswith("defined otherwise"), report
    verify = app.pubctl("verify", "--json")
    assert verify.code == 1 and "study_topic.pub_capture_insert" in verify.out


def test_a_changed_when_clause_is_reported(app: App) -> None:
    with app.owner() as owner:
        owner.execute("DROP TRIGGER pub_capture_update ON study_topic")
    app.admin().execute(
        "CREATE TRIGGER pub_capture_update AFTER UPDATE ON study_topic FOR EACH ROW"
        " WHEN (false) EXECUTE FUNCTION pub.capture_topic_update()"
    )
    assert status(app)["capture_ok"] is False


def test_a_renamed_column_is_reported(app: App) -> None:
    """The WHEN clause follows the old column; capture would read the new one."""
    with app.owner() as owner:
        owner.execute("SET pubctl.allow_column_change = 'study_topic.name'")  # past the guard
        owner.execute("ALTER TABLE study_topic RENAME COLUMN name TO name_old")
        owner.execute("ALTER TABLE study_topic ADD COLUMN name text")
    problems = status(app)["capture_problems"]
    assert any("old.name_old" in p["problem"].lower() for p in problems), problems


# --- 5. DEFERRABLE primary keys -----------------------------------------------------

DEFERRABLE_PK = """
ALTER TABLE study_question DROP CONSTRAINT study_question_topic_id_fkey;
ALTER TABLE study_topic DROP CONSTRAINT study_topic_pkey;
ALTER TABLE study_topic ADD PRIMARY KEY (id) DEFERRABLE INITIALLY IMMEDIATE;
"""


def test_deferrable_primary_key_is_refused_at_migrate(app_db: Database) -> None:
    with app_db.connect() as conn:
        conn.execute(DEFERRABLE_PK)
    with pytest.raises(MissingSourceError) as info:
        migrate.migrate(app_db.url)
    assert "primary key of public.study_topic is DEFERRABLE" in info.value.message


def test_deferrable_primary_key_added_later_is_reported(app: App) -> None:
    with app.owner() as owner:
        owner.execute(DEFERRABLE_PK)
    problems = status(app)["capture_problems"]
    assert {
        "subject": "study_topic",
        "problem": "the primary key of public.study_topic is DEFERRABLE",
    } in problems


# --- The UPDATE path's one-row-per-item rule trusts no setting ----------------------


@pytest.mark.parametrize(
    "key", ["topic:1", "topic:2", "nonsense"], ids=["other item", "same item, older txn", "junk"]
)
def test_forged_last_enqueued_setting_removes_nothing_else(app: App, key: str) -> None:
    with app.writer() as writer:
        writer.execute("UPDATE study_topic SET name = 'pending change' WHERE id = 2")
    (pending_id,) = app.admin().execute("SELECT id FROM pub.outbox WHERE source_id = 2").fetchone()
    with app.writer(autocommit=False) as writer:
        writer.execute(
            "SELECT set_config('pubctl.last_enqueued', %s, true)",
            (json.dumps({key: pending_id}) if key != "nonsense" else "{not json",),
        )
        writer.execute("UPDATE study_topic SET name = 'forger' WHERE id IN (1, 2)")
        writer.commit()
    rows = app.admin().execute("SELECT id, source_id FROM pub.outbox ORDER BY id").fetchall()
    assert rows[0] == (pending_id, 2), "the other transaction's pending row survives"
    assert sorted(s for _i, s in rows[1:]) == [1, 2]
    verify = apply_and_verify(app)
    assert verify.code == 0, verify.out
