"""The tripwire campaign: a table owner plants, where a session's search path looks
(``public``, the application's schema, a schema named after the connecting role), an
exact-match operator, function or aggregate for every built-in pubctl's SQL reaches only
through an implicit cast or a polymorphic or variadic parameter (``=(oid, regclass)``,
``jsonb_build_object(text, bigint, text, bigint)``, ``=(smallint[], smallint[])``, ...;
derived from pubctl's own SQL by ``support.tripwire``). Each plant records that it ran,
as whom, and otherwise does what the built-in does.

Then every command runs through the real CLI, as a superuser and as a dedicated role
with only the documented grants, with the application in ``public`` and in a schema of
its own, while the application's owner keeps writing: nothing planted may ever run
inside pubctl (CONTRACT.md section 6: every session pins ``pg_catalog, pg_temp``), and
no command may fail because of the plants.

``PUBCTL_TRIPWIRE_WIDE=1`` plants a much wider set (every ordinary built-in type, more
arities, two implicit casts per signature) for long campaigns.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import conninfo, sql

from support import tripwire
from support.cli import Result, run_subprocess, spawn
from support.db import Database, ServerInfo
from support.roles import Roles, role_url, roles
from support.serve import Served

pytestmark = pytest.mark.slow

PINNED = "-c search_path=pg_catalog,pg_temp"
TABLES = ("study_topic", "study_question")

# What the campaign must demonstrably cover: client queries that resolve through an
# implicit cast (status: l.relation = 'pub.outbox'::regclass), a variadic "any"
# function (status: jsonb_build_object('live', count, 'tombstones', count)) and a
# polymorphic operator (migrate's source_columns: k.conkey = ARRAY[a.attnum]).
REPRODUCTIONS = (
    ("operator", "=", ("oid", "regclass")),
    ("function", "jsonb_build_object", ("text", "bigint", "text", "bigint")),
    ("operator", "=", ("smallint[]", "smallint[]")),
    # Shadowed by pg_catalog's own =(name, text): must not make anything ambiguous.
    ("operator", "=", ("name", "text")),
)


@pytest.fixture(scope="module")
def derivation(pub_template: Any, pg_server: ServerInfo) -> Iterator[tripwire.Derivation]:
    """The plants, derived once from pubctl's SQL and the catalog of a database where
    pubctl is installed (for the types of pub's relations)."""
    name = "pubctl_test_tripwire_catalog"
    maintenance = pg_server.url(pg_server.maintenance_dbname)
    with psycopg.connect(maintenance, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pub_template.template_dbname}"')
    try:
        with psycopg.connect(pg_server.url(name), autocommit=True) as conn:
            yield tripwire.derive(conn)
    finally:
        with psycopg.connect(maintenance, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_derivation_covers_the_known_reproductions(
    derivation: tripwire.Derivation,
) -> None:
    found = derivation.harvest
    assert {"=", "<>", "||"} <= found.operators
    assert {"jsonb_build_object", "jsonb_object_agg", "count", "format"} <= found.functions
    assert {"pg_locks", "pg_constraint", "pg_attribute"} <= found.relations
    assert any(s.endswith("queries.sql") for s in found.sources)
    assert any(s.endswith(".up.sql") for s in found.sources)
    for kind, name, args in REPRODUCTIONS:
        assert derivation.find(kind, name, args), f"not derived: {name}({', '.join(args)})"
    kinds = {p.kind for p in derivation.plants}
    assert kinds == {"operator", "function", "aggregate"}
    limit = 60000 if tripwire.WIDE else 6000
    assert 500 < len(derivation.plants) < limit, len(derivation.plants)


@dataclass
class Campaign:
    """One run: the roles, the schemas holding plants, and what the plants recorded."""

    db: Database
    app_schema: str
    owner: str
    url: str  # pubctl's
    watcher: psycopg.Connection[Any]
    app: psycopg.Connection[Any]
    steps: list[str] = field(default_factory=list)
    tripped: list[str] = field(default_factory=list)
    bumps: int = 0
    _logged: int = 0
    _calls: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def pubctl(self, *args: str, code: int = 0) -> Result:
        # The application's schema is named at install, and recorded.
        extra = ("--app-schema", self.app_schema) if args[0] == "migrate" else ()
        result = run_subprocess("--database-url", self.url, *extra, *args)
        self.check(" ".join(args))
        assert result.code == code, (args, result, self.report())
        return result

    def write(self, statement: str, *params: Any) -> None:
        """An application write, as the tables' owner (capture runs)."""
        self.app.execute(
            sql.SQL(statement).format(s=sql.Identifier(self.app_schema)),
            params or None,
        )
        self.check(f"application write: {statement[:60]}")

    def check(self, step: str) -> None:
        """Note what the plants recorded during ``step``."""
        self.steps.append(step)
        tally = tripwire.tally(self.watcher)
        if tally.bumps == self.bumps:
            return
        for hit in tally.hits:
            more = hit.calls - self._calls.get(hit.key, 0)
            if more:
                self._calls[hit.key] = hit.calls
                self.tripped.append(f"[{step}] {hit.describe(more)}")
        rolled_back = (tally.bumps - self.bumps) - (tally.logged - self._logged)
        if rolled_back:
            self.tripped.append(f"[{step}] {rolled_back} calls in transactions that rolled back")
        self.bumps, self._logged = tally.bumps, tally.logged

    def report(self) -> str:
        if not self.bumps:
            return "no plant ran"
        time.sleep(0.5)  # exited backends flush their function statistics
        tally = tripwire.tally(self.watcher)
        lines = [f"{tally.bumps} calls of planted objects ({tally.logged} committed):"]
        lines += self.tripped
        lines += [f"[rolled back] {u}" for u in tally.uncommitted]
        return "\n".join(lines)


def _connect_pinned(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, options=PINNED)


def _setup(
    db: Database, made: Roles, derivation: tripwire.Derivation, as_superuser: bool, app_schema: str
) -> tuple[str, str, list[str]]:
    """The application's owner, pubctl's role and URL, and the plants; returns (owner,
    pubctl's URL, the planted schemas)."""
    admin = made.admin
    admin.execute("SET search_path = pg_catalog, pg_temp")
    dbname = conninfo.conninfo_to_dict(db.url)["dbname"]
    owner = made.create("tw_app_owner")
    owner_url = role_url(db, owner)
    admin.execute(f"ALTER SCHEMA public OWNER TO {owner}")
    if app_schema == "public":
        for table in TABLES:
            admin.execute(f"ALTER TABLE public.{table} OWNER TO {owner}")
    else:
        admin.execute(f"CREATE SCHEMA {app_schema} AUTHORIZATION {owner}")
        made_tables = run_subprocess(
            "--database-url", owner_url, "init-sample-schema", "--app-schema", app_schema
        )
        assert made_tables.code == 0, made_tables
    if as_superuser:
        url, login = db.url, db.server.user
    else:
        login = made.create("tw_pubctl")
        url = role_url(db, login)
        # Exactly the grants docs/operations.md lists for a dedicated role.
        admin.execute(f'GRANT CREATE ON DATABASE "{dbname}" TO {login}')
        admin.execute(f"GRANT USAGE ON SCHEMA {app_schema} TO {login}")
        admin.execute(
            f"GRANT SELECT, UPDATE, TRIGGER ON {app_schema}.study_topic,"
            f" {app_schema}.study_question TO {login}"
        )
    schemas = list(dict.fromkeys(["public", app_schema, login]))
    for schema in schemas:
        ident = sql.Identifier(schema)
        admin.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
                ident, sql.Identifier(owner)
            )
        )
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO PUBLIC").format(ident))
    tripwire.install_recorder(admin, owner)
    started = time.monotonic()
    planted = tripwire.plant(owner_url, derivation, schemas)
    print(f"planted {planted} objects in {schemas} in {time.monotonic() - started:.1f}s")
    return owner, url, schemas


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _published(watcher: psycopg.Connection[Any], kind: str, source_id: int) -> bool:
    row = watcher.execute(
        "SELECT EXISTS (SELECT FROM pub.content WHERE kind = %s AND source_id = %s)",
        (kind, source_id),
    ).fetchone()
    return bool(row and row[0])


QUESTION = (
    "INSERT INTO {s}.study_question (id, topic_id, body, choices, explanation,"
    " explanation_status) VALUES (%s, %s, 'q', '[\"a\", \"b\"]'::pg_catalog.jsonb, 'e', 'ready')"
)


@pytest.mark.parametrize(
    ("as_superuser", "app_schema"),
    [(True, "public"), (False, "public"), (False, "app")],
    ids=["superuser", "dedicated-role", "dedicated-role-app-schema"],
)
def test_no_planted_object_ever_runs_inside_pubctl(
    app_db: Database, derivation: tripwire.Derivation, as_superuser: bool, app_schema: str
) -> None:
    with roles(app_db) as made:
        owner, url, schemas = _setup(app_db, made, derivation, as_superuser, app_schema)
        login = conninfo.conninfo_to_dict(url)["user"]
        with (
            _connect_pinned(app_db.url) as watcher,
            _connect_pinned(role_url(app_db, owner)) as app,
        ):
            # The plants are live: the reproductions, in a session that does not pin its
            # search path, run the plants of each schema, as pubctl's role.
            hits = tripwire.control(url, schemas, watcher)
            for schema in schemas:
                ran = {h.signature.removeprefix(f"{schema}.") for h in hits if h.schema == schema}
                assert set(tripwire.CONTROL_QUERIES) <= ran, (schema, hits)
            assert {h.who for h in hits} == {login}, hits
            run = Campaign(app_db, app_schema, owner, url, watcher, app)
            _flow(run)
            if run.bumps:
                pytest.fail("planted objects ran inside pubctl:\n" + run.report(), pytrace=False)
            assert len(run.steps) > 25


def _flow(run: Campaign) -> None:
    write = run.write
    write(
        "INSERT INTO {s}.study_topic (id, name) SELECT g, 't' || g FROM pg_catalog.generate_series(1, 3) g"
    )
    write(QUESTION, 1, 1)
    run.pubctl("migrate")
    write("INSERT INTO {s}.study_topic (id, name, exam_round_size) VALUES (4, 'four', 2)")
    write(QUESTION, 2, 4)
    write("UPDATE {s}.study_question SET body = 'changed', answer = 1 WHERE id = 1")
    run.pubctl("status")
    status = json.loads(run.pubctl("status", "--json").out)
    assert status.get("error") is None, status
    run.pubctl("disable")
    write("UPDATE {s}.study_topic SET name = 'while off' WHERE id = 2")
    run.pubctl("enable")
    run.pubctl("backfill", "all")
    run.pubctl("apply")
    # status again, with items published and an open transaction that wrote (its lock
    # on pub.outbox is what status's open writers count).
    with psycopg.connect(role_url(run.db, run.owner), options=PINNED) as open_writer:
        open_writer.execute(
            sql.SQL("UPDATE {}.study_topic SET name = 'open' WHERE id = 1").format(
                sql.Identifier(run.app_schema)
            )
        )
        run.pubctl("status")
        status = json.loads(run.pubctl("status", "--json").out)
        assert status.get("open_writers") == 1 and status.get("items"), status
        open_writer.commit()
    write("DELETE FROM {s}.study_question WHERE id = 2")
    write("UPDATE {s}.study_topic SET deleted_at = pg_catalog.now() WHERE id = 3")
    # The worker: applies one write, stops on SIGTERM with 0.
    worker = spawn(run.url, "worker", "--poll-interval", "0.2")
    try:
        time.sleep(0.5)
        write("INSERT INTO {s}.study_topic (id, name) VALUES (5, 'for the worker')")
        _wait_for(lambda: _published(run.watcher, "topic", 5), "the worker applied nothing")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0
    run.check("worker")
    run.pubctl("verify", "--fail-on", "pending")
    run.pubctl("verify", "--json")
    feed = run.pubctl("feed").out.splitlines()
    assert len(feed) >= 6, feed
    run.pubctl("feed", "--after", "2", "--limit", "2", "--kind", "topic")
    # serve: the feed, health and metrics, and a write published while it runs.
    with Served(run.url, "--pool-size", "2") as served, httpx.Client(timeout=30) as client:
        for path in ("/published/feed", "/healthz", "/metrics", "/published/feed?limit=2"):
            response = client.get(served.url(path))
            assert response.status_code == 200, (path, response.text, served.log)
            run.check(f"serve GET {path}")
        write("INSERT INTO {s}.study_topic (id, name) VALUES (6, 'while serving')")
        run.pubctl("apply")
        after = max(json.loads(line)["rev"] for line in feed)
        response = client.get(served.url(f"/published/feed?after={after}"))
        assert response.status_code == 200, (response.text, served.log)
        assert "while serving" in response.text, response.text
        run.check("serve GET /published/feed?after=")
        code = served.stop()
    assert code == 0, served.log
    run.check("serve stopped")
    run.pubctl("migrate", "--revision", "base", "--drop-published-state")
    write("UPDATE {s}.study_topic SET name = 'not captured' WHERE id = 1")
    run.pubctl("migrate")
    write("UPDATE {s}.study_topic SET name = 'captured again' WHERE id = 4")
    run.pubctl("backfill", "all")
    run.pubctl("apply")
    run.pubctl("verify", "--fail-on", "pending")
    run.pubctl("status")
