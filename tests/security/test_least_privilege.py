"""No command needs a superuser: the whole flow with exactly the grants
docs/operations.md lists, as the role that owns the application's tables and as a
dedicated pubctl role that owns none of them."""

from __future__ import annotations

import signal
import time
from typing import Any

from psycopg import conninfo

from support.cli import run_subprocess, spawn
from support.db import Database
from support.roles import role_url, roles


def test_whole_flow_as_the_application_owner_without_superuser(app_db: Database) -> None:
    dbname = conninfo.conninfo_to_dict(app_db.url)["dbname"]
    with roles(app_db) as made:
        owner = made.create("t_study_owner")
        made.admin.execute(f'GRANT CREATE ON DATABASE "{dbname}" TO {owner}')
        made.admin.execute(f"ALTER TABLE study_topic OWNER TO {owner}")
        made.admin.execute(f"ALTER TABLE study_question OWNER TO {owner}")
        made.admin.execute(
            "INSERT INTO study_topic (id, name) SELECT g, 't' || g FROM generate_series(1, 5) g;"
            "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status)"
            " SELECT g, 1, 'q' || g, '[\"a\"]', 'e', 'ready' FROM generate_series(1, 300) g"
        )
        url = role_url(app_db, owner)

        def pubctl(*args: str, code: int = 0) -> Any:
            result = run_subprocess("--database-url", url, *args)
            assert result.code == code, (args, result)
            return result

        pubctl("migrate")
        pubctl("status")
        pubctl("disable")
        made.admin.execute("UPDATE study_topic SET name = 'renamed while off' WHERE id = 1")
        pubctl("enable")
        pubctl("backfill", "all")
        worker = spawn(url, "worker", "--poll-interval", "0.2")
        try:
            with app_db.connect() as conn:
                deadline = time.monotonic() + 30
                while conn.execute("SELECT count(*) FROM pub.outbox").fetchone() != (0,):
                    assert time.monotonic() < deadline, "the worker applied nothing"
                    time.sleep(0.1)
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(15) == 0
        pubctl("apply")
        pubctl("verify", "--fail-on", "pending")
        assert len(pubctl("feed").out.splitlines()) == 5 + 300 + 300
        pubctl("migrate", "--revision", "base", "--drop-published-state")
        pubctl("migrate")
        pubctl("backfill", "all")
        pubctl("apply")
        pubctl("verify", "--fail-on", "pending")
        with app_db.connect() as conn:
            superuser, owns_capture = conn.execute(
                "SELECT r.rolsuper, p.proowner = r.oid FROM pg_roles r, pg_proc p"
                " WHERE r.rolname = %s AND p.oid = 'pub.capture_topic_insert()'::regprocedure",
                (owner,),
            ).fetchone()
        assert (superuser, owns_capture) == (False, True), (
            "capture runs as the owner itself: it may not create roles"
        )
        pubctl("migrate", "--revision", "base", "--drop-published-state")


def test_whole_flow_as_a_dedicated_role_with_only_the_documented_grants(
    app_db: Database,
) -> None:
    """The documented grants for a dedicated role, and nothing else: no membership in the
    tables' owner, no CREATEROLE. Install, publish, go down to base and up again."""
    dbname = conninfo.conninfo_to_dict(app_db.url)["dbname"]
    with roles(app_db) as made:
        app_owner = made.create("t_app_owner")
        publisher = made.create("t_pubctl")
        made.admin.execute(f"ALTER TABLE study_topic OWNER TO {app_owner}")
        made.admin.execute(f"ALTER TABLE study_question OWNER TO {app_owner}")
        made.admin.execute(f'GRANT CREATE ON DATABASE "{dbname}" TO {publisher}')
        made.admin.execute(f"GRANT USAGE ON SCHEMA public TO {publisher}")
        made.admin.execute(
            f"GRANT SELECT, UPDATE, TRIGGER ON study_topic, study_question TO {publisher}"
        )
        url = role_url(app_db, publisher)

        def pubctl(*args: str, code: int = 0) -> Any:
            result = run_subprocess("--database-url", url, *args)
            assert result.code == code, (args, result)
            return result

        with made.connect(app_owner) as app:
            app.execute("INSERT INTO study_topic (id, name) VALUES (1, 'before install')")
            pubctl("migrate")
            app.execute("INSERT INTO study_topic (id, name) VALUES (2, 'captured')")
            app.execute(
                "INSERT INTO study_question (id, topic_id, body, choices, explanation,"
                " explanation_status) VALUES (1, 1, 'q', '[\"a\"]', 'e', 'ready')"
            )
            pubctl("disable")
            app.execute("UPDATE study_topic SET name = 'while off' WHERE id = 2")
            pubctl("enable")
            pubctl("backfill", "all")
            pubctl("apply")
            pubctl("verify", "--fail-on", "pending")
            assert pubctl("status").code == 0
            assert len(pubctl("feed").out.splitlines()) == 2 + 1 + 1
            pubctl("migrate", "--revision", "base", "--drop-published-state")
            app.execute("UPDATE study_topic SET name = 'not captured' WHERE id = 1")
            pubctl("migrate")
            pubctl("backfill", "all")
            pubctl("apply")
            pubctl("verify", "--fail-on", "pending")
            pubctl("migrate", "--revision", "base", "--drop-published-state")
        with app_db.connect() as conn:
            assert conn.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid IN"
                " ('study_topic'::regclass, 'study_question'::regclass) AND NOT tgisinternal"
            ).fetchone() == (0,), "going down to base detached every trigger"
