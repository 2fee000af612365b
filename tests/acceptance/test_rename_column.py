"""`pubctl rename-column`: a projected column renamed in one step while the application
writes: no write fails, capture reads the new column at once, verify stays clean, and
the DDL guard still refuses any other rename."""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest

from support.cli import run_subprocess
from support.db import Database


def writer(db: Database, number: int, stop: threading.Event, done: list[int], errors: list[str]):
    """Insert questions and edit them, without naming the renamed column."""
    with db.connect() as conn:
        written = 0
        while not stop.is_set():
            try:
                with conn.transaction():
                    (qid,) = conn.execute(
                        "INSERT INTO study_question (topic_id, body, choices, number)"
                        ' VALUES (1, %s, \'["a", "b"]\', %s) RETURNING id',
                        (f"q{number}-{written}", written),
                    ).fetchone()
                    conn.execute(
                        "UPDATE study_question SET number = number + 1 WHERE id = %s", (qid,)
                    )
                written += 1
                done.append(time.monotonic_ns())
            except psycopg.Error as exc:
                errors.append(str(exc))
                return


def test_rename_in_one_step_while_writers_run(pub_db: Database) -> None:
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, exam_name, explanation,"
            " explanation_status) VALUES (1000000, 1, 'first', 'Spring', 'because', 'ready')"
        )
    stop = threading.Event()
    done: list[int] = []
    errors: list[str] = []
    writers = [
        threading.Thread(target=writer, args=(pub_db, n, stop, done, errors)) for n in range(3)
    ]
    for thread in writers:
        thread.start()
    time.sleep(0.5)
    renamed = run_subprocess(
        "--database-url", pub_db.url, "rename-column", "study_question", "exam_name", "exam_title"
    )
    after_rename = time.monotonic_ns()
    time.sleep(0.5)
    stop.set()
    for thread in writers:
        thread.join(10)
    assert renamed.code == 0, renamed.err
    assert errors == []
    assert any(t > after_rename for t in done), "writers went on after the rename"

    with pub_db.connect() as conn:
        # Capture reads the new column: an edit of it is published under the same key.
        conn.execute("UPDATE study_question SET exam_title = 'Autumn' WHERE id = 1000000")
    applied = run_subprocess("--database-url", pub_db.url, "apply")
    assert applied.code == 0, applied.err
    with pub_db.connect() as conn:
        (payload,) = conn.execute(
            "SELECT payload::text FROM pub.content WHERE kind = 'question' AND source_id = 1000000"
        ).fetchone()
        assert json.loads(payload)["exam_name"] == "Autumn"

        # The guard lets that rename through, and no other.
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("ALTER TABLE study_question RENAME COLUMN body TO question_text")
        assert refused.value.sqlstate == "PB007"

    verified = run_subprocess("--database-url", pub_db.url, "verify")
    assert verified.code == 0, verified.out + verified.err
    status = run_subprocess("--database-url", pub_db.url, "status")
    assert status.code == 0, status.out + status.err
    again = run_subprocess("--database-url", pub_db.url, "migrate")
    assert again.code == 0 and "nothing to do" in again.out, again.out + again.err


def test_what_cannot_be_renamed_is_refused_and_nothing_changes(pub_db: Database) -> None:
    url = ("--database-url", pub_db.url, "rename-column")
    not_projected = run_subprocess(*url, "study_question", "updated_at", "changed_at")
    assert not_projected.code != 0 and "not one pubctl reads" in not_projected.err
    key = run_subprocess(*url, "study_question", "id", "question_id")
    assert key.code != 0 and "key" in key.err
    taken = run_subprocess(*url, "study_question", "exam_name", "body")
    assert taken.code != 0 and "already has a column body" in taken.err
    unknown = run_subprocess(*url, "study_nothing", "a", "b")
    assert unknown.code != 0 and "not a table pubctl publishes from" in unknown.err
    with pub_db.connect() as conn:
        columns = conn.execute(
            "SELECT column_name FROM pub.source_columns('study_question')"
        ).fetchall()
        assert ("exam_name",) in columns


def test_a_renamed_liveness_column_keeps_every_capture_path(pub_db: Database) -> None:
    """deleted_at renamed: the paths that read the current state (a transaction that
    updated the table, then inserts or deletes) read it under its new name."""
    renamed = run_subprocess(
        "--database-url", pub_db.url, "rename-column", "study_question", "deleted_at", "removed_at"
    )
    assert renamed.code == 0, renamed.err
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
        with conn.transaction():
            conn.execute("INSERT INTO study_question (id, topic_id, body) VALUES (1, 1, 'a')")
            conn.execute("UPDATE study_question SET body = 'b' WHERE id = 1")
            conn.execute("INSERT INTO study_question (id, topic_id, body) VALUES (2, 1, 'c')")
            conn.execute("DELETE FROM study_question WHERE id = 2")
        conn.execute("SELECT pub.apply_batch(1000)")
        assert conn.execute(
            "SELECT source_id, payload::text FROM pub.content WHERE kind = 'question'"
        ).fetchall() == [(1, '{"answer":null,"body":"b","choices":[],"exam_name":null,'
                          '"exam_round":null,"number":null,"question_id":1,"topic_id":1}')]  # fmt: skip
        conn.execute("UPDATE study_question SET removed_at = now() WHERE id = 1")
    assert run_subprocess("--database-url", pub_db.url, "apply").code == 0
    with pub_db.connect() as conn:
        rows = conn.execute(
            "SELECT source_id, deleted FROM pub.content WHERE kind = 'question' ORDER BY 1"
        ).fetchall()
        assert rows == [(1, True)]
    verified = run_subprocess("--database-url", pub_db.url, "verify")
    assert verified.code == 0, verified.out + verified.err


def test_names_that_need_quoting_are_refused(pub_db: Database) -> None:
    for name in ("BODY", "exam_round::text", "body||public.evil()", "a b", "order"):
        result = run_subprocess(
            "--database-url", pub_db.url, "rename-column", "study_question", "exam_name", name
        )
        assert result.code != 0 and "is not a name pubctl reads a column by" in result.err


def test_a_downgrade_after_a_rename_is_refused(pub_db: Database) -> None:
    url = ("--database-url", pub_db.url)
    assert (
        run_subprocess(*url, "rename-column", "study_question", "body", "question_text").code == 0
    )
    down = run_subprocess(*url, "migrate", "--revision", "0104")
    assert down.code != 0 and "study_question.question_text" in down.err, down.err
    with pub_db.connect() as conn:
        assert conn.execute("SELECT version_num FROM pub.alembic_version").fetchone() == ("0105",)
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
        conn.execute("INSERT INTO study_question (topic_id, question_text) VALUES (1, 'still')")


def test_a_superuser_runs_pub_code_as_the_owner_of_pub(pub_db: Database) -> None:
    """pub's functions are its owner's code: a superuser's rename-column or migrate
    reads the installed column names as that role, not with a superuser's rights."""
    with pub_db.connect() as conn:
        conn.execute("CREATE ROLE t_pub_owner NOLOGIN")
        conn.execute("CREATE TABLE public.seen_as (who text)")
        conn.execute("GRANT INSERT ON public.seen_as TO PUBLIC")
        conn.execute("ALTER SCHEMA pub OWNER TO t_pub_owner")
        conn.execute("SELECT pub.settle_ownership('{}')")
        conn.execute("GRANT TRIGGER ON study_question, study_topic TO t_pub_owner")
        conn.execute("SET ROLE t_pub_owner")
        conn.execute(
            """CREATE OR REPLACE FUNCTION pub.source_columns(source text)
            RETURNS TABLE (column_name text, allowed_types regtype[]) LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO public.seen_as VALUES (current_user);
                RETURN QUERY SELECT c.column_name::text, ARRAY[c.data_type::regtype]
                FROM information_schema.columns AS c WHERE false;
            END $$"""
        )
        conn.execute("RESET ROLE")
    again = run_subprocess("--database-url", pub_db.url, "migrate")
    assert again.code == 0, again.err
    with pub_db.connect() as conn:
        seen = {row[0] for row in conn.execute("SELECT who FROM public.seen_as")}
    assert seen == {"t_pub_owner"}
