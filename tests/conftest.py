"""Shared fixtures: one PostgreSQL server per test session, template databases built once,
and a fresh database cloned from a template for every test.

Without ``PUBCTL_TEST_DATABASE_URL`` the session starts a throwaway server
(``pubctl.throwaway``); with it, the tests create and drop their databases on that
server (the role needs CREATEDB).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import settings
from psycopg import conninfo
from pytest_postgresql import factories

from pubctl.migrate import migrate
from pubctl.queries import read_sql_file
from pubctl.throwaway import FAST_SETTINGS, ThrowawayPostgres

from support.db import Database, ServerInfo

# Property tests that set no example count of their own: `make test` runs them
# thoroughly; `make unit` (--hypothesis-profile=quick) keeps the unit tier fast.
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.register_profile("quick", max_examples=50, deadline=None)
settings.load_profile("thorough")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[ServerInfo]:
    url = os.environ.get("PUBCTL_TEST_DATABASE_URL")
    if url:
        params = conninfo.conninfo_to_dict(url)
        yield ServerInfo(
            host=str(params.get("host", "127.0.0.1")),
            port=int(params.get("port", 5432)),
            user=str(params.get("user", os.environ.get("USER", "postgres"))),
            password=str(params["password"]) if params.get("password") else None,
            maintenance_dbname=str(params.get("dbname", "postgres")),
        )
        return
    # Two-phase commit allowed, so that tests can PREPARE TRANSACTION; logical decoding,
    # so that a test can subscribe one database to another.
    settings = {**FAST_SETTINGS, "max_prepared_transactions": "20", "wal_level": "logical"}
    with ThrowawayPostgres(settings) as pg:
        yield ServerInfo(host=pg.host, port=pg.port, user=pg.user, password=None, throwaway=pg)


def _url(kwargs: dict[str, Any]) -> str:
    return conninfo.make_conninfo(
        host=kwargs["host"],
        port=kwargs["port"],
        user=kwargs["user"],
        password=kwargs.get("password"),
        dbname=kwargs["dbname"],
    )


def load_sample_schema(**kwargs: Any) -> None:
    """Template loader: the application's sample tables, pubctl not installed."""
    with psycopg.connect(_url(kwargs)) as conn:
        conn.execute(read_sql_file("sample_app_schema.sql").encode())


def load_migrated(**kwargs: Any) -> None:
    """Template loader: sample tables plus pubctl migrated to head."""
    load_sample_schema(**kwargs)
    migrate(_url(kwargs))


app_template = factories.postgresql_noproc(
    depends_on="pg_server", dbname="pubctl_test_app", load=[load_sample_schema]
)
pub_template = factories.postgresql_noproc(
    depends_on="pg_server", dbname="pubctl_test_pub", load=[load_migrated]
)
app_conn = factories.postgresql("app_template")
pub_conn = factories.postgresql("pub_template")


def _database(conn: psycopg.Connection[Any], server: ServerInfo) -> Database:
    conn.commit()
    return Database(url=server.url(conn.info.dbname), server=server)


@pytest.fixture
def app_db(app_conn: psycopg.Connection[Any], pg_server: ServerInfo) -> Database:
    """A fresh database holding the application's sample tables, pubctl not installed."""
    return _database(app_conn, pg_server)


@pytest.fixture
def pub_db(pub_conn: psycopg.Connection[Any], pg_server: ServerInfo) -> Database:
    """A fresh database with the sample tables and pubctl migrated to head."""
    return _database(pub_conn, pg_server)


@pytest.fixture
def empty_db(pg_server: ServerInfo) -> Iterator[Database]:
    """A fresh, empty database (no application tables)."""
    name = "pubctl_test_empty"
    admin = psycopg.connect(pg_server.url(pg_server.maintenance_dbname), autocommit=True)
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Database(url=pg_server.url(name), server=pg_server)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault campaigns' summary table, when any ran (long with `make soak`)."""
    from support.campaign_report import TOTALS

    lines = TOTALS.table()
    if lines:
        terminalreporter.section("fault campaigns")
        for line in lines:
            terminalreporter.write_line(line)
