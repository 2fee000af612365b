"""Running `pubctl serve` as a child process for tests, with a feed-reader role that has
exactly the grants the docs name."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Any

import psycopg
from psycopg import conninfo

from support.cli import spawn
from support.db import Database

READER = "feed_reader"
READER_GRANTS = (
    f"GRANT USAGE ON SCHEMA pub TO {READER}",
    f"GRANT EXECUTE ON FUNCTION pub.feed(bigint, integer, text[]), pub.feed_id(), pub.health() TO {READER}",
)


def reader_url(db: Database) -> str:
    """The database's URL for a role with only the feed reader's grants."""
    with db.connect() as conn:
        conn.execute(
            f"DO $$ BEGIN CREATE ROLE {READER} LOGIN;"
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        for grant in READER_GRANTS:
            conn.execute(grant)
    return db.url.replace(f"user={db.server.user}", f"user={READER}")


class Served:
    """A running `pubctl serve`; its stderr is collected in the background."""

    def __init__(
        self, url: str, *args: str, env: dict[str, str] | None = None, timeout: float = 30
    ) -> None:
        full_env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PUBCTL_DATABASE_URL", "DATABASE_URL", "PUBCTL_FEED_TOKENS")
        }
        full_env.update(env or {})
        self.proc = spawn(url, "serve", "--port", "0", *args, stderr=subprocess.PIPE, env=full_env)
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.base = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._listening.wait(timeout):
            self.stop()
            raise AssertionError("pubctl serve did not start:\n" + self.log)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("listening on "):
                self.base = line.removeprefix("listening on ").strip()
                self._listening.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def url(self, path: str) -> str:
        return self.base + path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"pubctl serve did not stop within {timeout}s") from None
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def publish(db: Database, sql: str, params: Any = None) -> None:
    """Run an application write, then apply it."""
    with db.connect() as conn:
        conn.execute(sql, params)
        conn.execute("SELECT pub.apply_batch(100000)")


def serve_connections(db: Database) -> int:
    """Database connections `pubctl serve` holds in this database (pool + listener)."""
    with db.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'pubctl serve%'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def wait_until(predicate: Any, timeout: float = 10, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def terminate_serve_backends(db: Database) -> None:
    with psycopg.connect(db.server.url(db.server.maintenance_dbname), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name LIKE 'pubctl serve%%' AND datname = %s",
            (conninfo.conninfo_to_dict(db.url)["dbname"],),
        )
