"""Migrations: up, down to base, up again; concurrency; refusal on a missing source."""

from __future__ import annotations

import subprocess
import threading
import time

import psycopg
import pytest

from pubctl import migrate
from pubctl.errors import MissingSourceError, PubctlError, SchemaNewerError
from pubctl.queries import read_sql_file

from support.catalog import snapshot
from support.cli import pubctl_executable, run_subprocess
from support.db import Database


def _seed_app_rows(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE public.alembic_version (version_num varchar(32) PRIMARY KEY)")
    conn.execute("INSERT INTO public.alembic_version VALUES ('app_rev_42')")
    conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy'), (2, 'Physiology')")
    conn.execute(
        "INSERT INTO study_question (id, topic_id, body, choices) VALUES (10, 1, 'Q?', '[\"a\"]')"
    )


def _app_state(conn: psycopg.Connection) -> tuple:
    return (
        conn.execute("SELECT * FROM public.alembic_version").fetchall(),
        conn.execute("SELECT id, name FROM study_topic ORDER BY id").fetchall(),
        conn.execute("SELECT id, topic_id, body FROM study_question ORDER BY id").fetchall(),
    )


def _pub_schema_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'pub'").fetchone()
    return bool(row and row[0])


def test_up_down_up_keeps_application_rows(app_db: Database) -> None:
    with app_db.connect() as conn:
        _seed_app_rows(conn)
        before = _app_state(conn)

        migrate.migrate(app_db.url)
        assert migrate.current_revision(conn) == migrate.head_revision()
        migrated = snapshot(conn)

        migrate.migrate(app_db.url, "base", drop_published_state=True)
        assert migrate.current_revision(conn) is None
        assert not _pub_schema_exists(conn), "base must remove schema pub entirely"
        assert _app_state(conn) == before

        migrate.migrate(app_db.url)
        assert snapshot(conn) == migrated
        assert _app_state(conn) == before


def test_each_revision_steps_up_and_down(app_db: Database) -> None:
    """Each downgrade restores exactly the schema its revision's upgrade found."""
    known = migrate.revisions()
    on_the_way_up = {}
    for rev in known:
        migrate.migrate(app_db.url, rev)
        with app_db.connect() as conn:
            assert migrate.current_revision(conn) == rev
            on_the_way_up[rev] = snapshot(conn)
    for rev in reversed(known[:-1]):
        migrate.migrate(app_db.url, rev)
        with app_db.connect() as conn:
            assert migrate.current_revision(conn) == rev
            assert snapshot(conn) == on_the_way_up[rev], f"down to {rev} differs from up"
    migrate.migrate(app_db.url, "base", drop_published_state=True)
    with app_db.connect() as conn:
        assert not _pub_schema_exists(conn)


def test_migrating_twice_is_a_no_op(pub_db: Database) -> None:
    with pub_db.connect() as conn:
        before = snapshot(conn)
    run = migrate.migrate(pub_db.url)
    assert run.before == run.after == migrate.head_revision()
    assert run.steps == []
    with pub_db.connect() as conn:
        assert snapshot(conn) == before


def test_concurrent_migrates_are_serialised(app_db: Database) -> None:
    # Separate processes: Alembic's context is process-global, and this is how
    # two deploy jobs would really race.
    procs = [
        subprocess.Popen(
            [pubctl_executable(), "--database-url", app_db.url, "migrate"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(p.wait(60), *p.communicate()) for p in procs]
    assert [code for code, _out, _err in results] == [0, 0, 0, 0], results
    migrated = [out for _code, out, _err in results if "migrated" in out]
    assert len(migrated) == 1, results
    with app_db.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()
        assert conn.execute("SELECT count(*) FROM pub.alembic_version").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM pub.settings").fetchone() == (1,)


@pytest.mark.parametrize(
    ("ddl", "expected"),
    [
        ("DROP TABLE study_question", ["table public.study_question is missing"]),
        (
            "ALTER TABLE study_question DROP COLUMN explanation_status, DROP COLUMN choices",
            [
                "column public.study_question.choices is missing",
                "column public.study_question.explanation_status is missing",
            ],
        ),
        (
            "ALTER TABLE study_topic DROP COLUMN deleted_at",
            ["column public.study_topic.deleted_at is missing"],
        ),
        (
            "ALTER TABLE study_question ALTER COLUMN choices TYPE text",
            ["column public.study_question.choices is text, expected jsonb"],
        ),
    ],
)
def test_missing_source_is_refused_with_nothing_changed(
    app_db: Database, ddl: str, expected: list[str]
) -> None:
    with app_db.connect() as conn:
        conn.execute(ddl)
    with pytest.raises(MissingSourceError) as info:
        migrate.migrate(app_db.url)
    for line in expected:
        assert line in info.value.message
    with app_db.connect() as conn:
        assert not _pub_schema_exists(conn)


def test_integer_ids_and_extra_columns_in_any_order_are_accepted(empty_db: Database) -> None:
    with empty_db.connect() as conn:
        conn.execute(
            """
            CREATE TABLE study_topic (
                legacy_code text, deleted_at timestamptz, exam_round_size integer,
                name varchar(200) NOT NULL, id integer PRIMARY KEY);
            CREATE TABLE study_question (
                explanation_status text NOT NULL, deleted_at timestamptz, answer integer,
                explanation text, choices jsonb NOT NULL, body text NOT NULL, number integer,
                exam_round integer, exam_name text, topic_id integer NOT NULL,
                id integer PRIMARY KEY, extra jsonb);
            """
        )
    migrate.migrate(empty_db.url)
    with empty_db.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()


def test_other_app_schema_is_recorded(empty_db: Database) -> None:
    with empty_db.connect() as conn:
        conn.execute("CREATE SCHEMA study; SET search_path TO study")
        conn.execute(read_sql_file("sample_app_schema.sql").encode())
    with pytest.raises(MissingSourceError):
        migrate.migrate(empty_db.url)  # default schema public has no tables
    migrate.migrate(empty_db.url, app_schema="study")
    with empty_db.connect() as conn:
        assert conn.execute("SELECT app_schema::text FROM pub.settings").fetchone() == ("study",)
    # Later runs use the recorded schema without being told again.
    migrate.migrate(empty_db.url, "base", drop_published_state=True)
    migrate.migrate(empty_db.url, app_schema="study")


def test_database_migrated_by_newer_pubctl_is_refused(pub_db: Database) -> None:
    with pub_db.connect() as conn:
        conn.execute("UPDATE pub.alembic_version SET version_num = '9999'")
        before = snapshot(conn)
    with pytest.raises(SchemaNewerError):
        migrate.migrate(pub_db.url)
    with pytest.raises(SchemaNewerError):
        migrate.migrate(pub_db.url, "base", drop_published_state=True)
    with pub_db.connect() as conn:
        assert snapshot(conn) == before


def test_base_refuses_to_drop_foreign_objects_in_pub(pub_db: Database) -> None:
    with pub_db.connect() as conn:
        conn.execute("CREATE TABLE pub.someone_elses (x int)")
    with pytest.raises(PubctlError, match=r"cannot drop schema pub"):
        migrate.migrate(pub_db.url, "base", drop_published_state=True)
    with pub_db.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()


def test_migrate_never_queues_behind_a_long_transaction(app_db: Database) -> None:
    with app_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'a'), (2, 'b')")
    with app_db.connect(autocommit=False) as long_txn, app_db.connect() as writer:
        long_txn.execute("UPDATE study_topic SET name = 'held' WHERE id = 1")  # holds ROW EXCLUSIVE
        errors: list[BaseException] = []
        writes: list[float] = []

        def run_migrate() -> None:
            try:
                migrate.migrate(app_db.url, lock_timeout_s=0.3, attempts=3)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run_migrate)
        thread.start()
        while thread.is_alive():  # other writers keep going while migrate retries
            started = time.monotonic()
            writer.execute("UPDATE study_topic SET name = name || '.' WHERE id = 2")
            writes.append(time.monotonic() - started)
            time.sleep(0.05)
        thread.join()
        assert len(errors) == 1 and isinstance(errors[0], PubctlError)
        assert "could not lock pubctl's version table and the application's tables" in (
            errors[0].message
        )
        # It names who is in the way.
        assert "held by: pid " in errors[0].message
        assert "RowExclusiveLock on public.study_topic" in errors[0].message
        assert max(writes) < 1.0, "a writer never waited behind the migration for long"
        assert not _pub_schema_exists(writer), "nothing was changed"
        long_txn.commit()
    migrate.migrate(app_db.url, lock_timeout_s=0.3, attempts=3)
    with app_db.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()


# Every revision from the baseline on, the head included (where the upgrade is a no-op).
@pytest.mark.parametrize("start", migrate.revisions())
def test_upgrade_from_every_revision_with_data_then_down(app_db: Database, start: str) -> None:
    with app_db.connect() as conn:
        _seed_app_rows(conn)
        before = _app_state(conn)
    migrate.migrate(app_db.url, start)
    with app_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (3, %s)", (f"written at {start}",))
    migrate.migrate(app_db.url)
    with app_db.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()
        conn.execute("UPDATE study_topic SET name = 'after upgrade' WHERE id = 1")
        captured = conn.execute(
            "SELECT kind, source_id FROM pub.outbox ORDER BY id DESC LIMIT 1"
        ).fetchall()
        assert captured == [("topic", 1)], "capture works after the upgrade"
        conn.execute("SELECT pub.apply_batch(100)")
        conn.execute("DELETE FROM study_topic WHERE id = 3")
    migrate.migrate(app_db.url, "base", drop_published_state=True)
    with app_db.connect() as conn:
        assert not _pub_schema_exists(conn)
        assert _app_state(conn)[0] == before[0], (
            "the application's own alembic_version is untouched"
        )
        assert conn.execute("SELECT name FROM study_topic WHERE id = 1").fetchone() == (
            "after upgrade",
        )


@pytest.mark.parametrize("pre_release", ["0007", "0009"])
def test_database_from_the_unreleased_history_is_refused_by_name(
    pub_db: Database, pre_release: str
) -> None:
    """Revision ids the baseline replaced are named as such, not as a newer pubctl's,
    and every command (migrate included) refuses them with nothing changed."""
    with pub_db.connect() as conn:
        conn.execute("UPDATE pub.alembic_version SET version_num = %s", (pre_release,))
        before = snapshot(conn)
    for target in ("head", "base"):
        with pytest.raises(PubctlError, match=r"unreleased history before 0\.1\.0") as refused:
            migrate.migrate(pub_db.url, target)
        assert not isinstance(refused.value, SchemaNewerError)
        assert "--revision base" in (refused.value.hint or "")
    status = run_subprocess("--database-url", pub_db.url, "status")
    assert status.code != 0 and "unreleased history before 0.1.0" in status.err, status
    with pub_db.connect() as conn:
        assert snapshot(conn) == before


def test_the_python_api_keeps_a_published_state_unless_told(pub_db: Database) -> None:
    """`migrate(url, "base")` called from code (a deploy script, a fixture) refuses to
    drop what viewers read, as the command does without --drop-published-state."""
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'kept')")
        conn.execute("SELECT pub.apply_batch(10)")
    with pytest.raises(PubctlError, match="drops the published state"):
        migrate.migrate(pub_db.url, "base")
    with pub_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pub.content").fetchone() == (1,)
