"""`pubctl demo` runs the whole narrated flow and cleans up after itself."""

from __future__ import annotations

import glob
import tempfile

import psycopg

from support.cli import run_subprocess
from support.db import ServerInfo


def _demo_databases(server: ServerInfo) -> list[str]:
    with psycopg.connect(server.url("postgres"), autocommit=True) as admin:
        return [
            n for (n,) in admin.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'pubctl_demo_%'"
            )
        ]  # fmt: skip


def test_demo_on_a_throwaway_server(pg_server: ServerInfo) -> None:
    """Plain DATABASE_URL, which many shells set for other purposes, is not a server to
    run the demo on."""
    before = set(glob.glob(f"{tempfile.gettempdir()}/pubctl-pg-*"))
    result = run_subprocess(
        "demo",
        env={"DATABASE_URL": pg_server.url("postgres")},
        timeout=300,
        cwd=tempfile.gettempdir(),
    )
    assert result.code == 0, result.out + result.err
    assert "started a throwaway PostgreSQL server" in result.out
    assert _demo_databases(pg_server) == []
    for step in (
        "$ pubctl migrate",
        "$ pubctl backfill all",
        "clean: published state",
        "DRIFT",
        "(exit status 1, as expected)",
        "listening on http://127.0.0.1:",
        "Anatomy and histology",
    ):
        assert step in result.out
    assert "stopped and removed" in result.out
    left = set(glob.glob(f"{tempfile.gettempdir()}/pubctl-pg-*")) - before
    assert not left, "nothing left behind"


def test_demo_on_a_given_server_uses_a_new_database_and_drops_it(pg_server: ServerInfo) -> None:
    result = run_subprocess(
        "demo",
        env={
            "PUBCTL_DATABASE_URL": pg_server.url("postgres"),
            "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nowhere",
        },
        timeout=300,
    )
    assert result.code == 0, result.out + result.err
    assert "using a new database on the given server" in result.out
    assert "is dropped" in result.out
    assert _demo_databases(pg_server) == []
