"""A streaming hot standby of a test (or bench) server, made with ``pg_basebackup -R``.

The standby runs the same server binaries as the primary (``pubctl.throwaway``), as the
``postgres`` system user when started by root, on a free port of 127.0.0.1 with its own
socket directory, and is removed again by :meth:`Standby.stop`. The primary must allow
replication connections from 127.0.0.1 to the connecting role (the throwaway server's
``initdb --auth=trust`` does: its pg_hba.conf has ``host replication all 127.0.0.1/32``).

Everything done on the primary reaches it: databases, roles and their grants, rows.
:meth:`Standby.caught_up` waits until it has replayed what the primary has written so
far, so that a test can use on the standby what it just created on the primary.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo

from pubctl.throwaway import SERVER_USER, find_bindir, shut_down

READY_TIMEOUT_S = 60.0
# A hot standby refuses to start with less of these than its primary has.
MATCHED_SETTINGS = (
    "max_connections",
    "max_prepared_transactions",
    "max_locks_per_transaction",
    "max_wal_senders",
    "max_worker_processes",
)
FAST = {"fsync": "off", "full_page_writes": "off", "shared_buffers": "64MB"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # Between fork and exec: the standby stops if the test process is killed.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGQUIT)


class Standby:
    """A hot standby of the server that ``primary_url`` names (any database there)."""

    def __init__(self, primary_url: str, settings: Mapping[str, str] | None = None) -> None:
        self.primary_url = primary_url
        params = conninfo.conninfo_to_dict(primary_url)
        self.primary_host = str(params.get("host") or "127.0.0.1")
        self.primary_port = int(str(params.get("port") or 5432))
        self.user = str(params.get("user") or SERVER_USER)
        self.settings = {**FAST, **(settings or {})}
        self.host = "127.0.0.1"
        self.port = 0
        self.base: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._args: list[str] = []

    def __enter__(self) -> Standby:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- addresses ----------------------------------------------------------------------

    def url_for(self, url: str) -> str:
        """``url`` (a URL of the primary, any role and database) pointed at the standby."""
        params = conninfo.conninfo_to_dict(url)
        params.update(host=self.host, port=str(self.port))
        return conninfo.make_conninfo(**params)

    # -- life cycle ---------------------------------------------------------------------

    def _as_owner(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        entry = pwd.getpwnam(SERVER_USER)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def start(self) -> Standby:
        bindir = find_bindir()
        owner = self._as_owner()
        with psycopg.connect(self.primary_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT name, setting FROM pg_catalog.pg_settings WHERE name = ANY(%s)",
                (list(MATCHED_SETTINGS),),
            ).fetchall()
        settings = {str(name): str(value) for name, value in rows}
        settings.update(self.settings)
        self.base = Path(tempfile.mkdtemp(prefix="pubctl-standby-"))
        try:
            data, sock = self.base / "data", self.base / "sock"
            sock.mkdir()
            if owner:
                for path in (self.base, sock):
                    os.chown(path, owner["user"], owner["group"])
            backup = subprocess.run(
                [
                    str(bindir / "pg_basebackup"),
                    "-h",
                    self.primary_host,
                    "-p",
                    str(self.primary_port),
                    "-U",
                    self.user,
                    "-D",
                    str(data),
                    "-R",  # standby.signal and primary_conninfo
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "--no-sync",
                    "--no-password",
                ],
                capture_output=True,
                text=True,
                cwd=self.base,
                timeout=300,
                **owner,
            )
            if backup.returncode != 0:
                raise RuntimeError(f"pg_basebackup failed: {backup.stderr.strip()}")
            self.port = _free_port()
            args = [
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-k",
                str(sock),
                "-c",
                f"listen_addresses={self.host}",
                "-c",
                "hot_standby=on",
                # Replies promptly, so that the primary's view of the lag is current.
                "-c",
                "wal_receiver_status_interval=1s",
            ]
            for key, value in settings.items():
                args += ["-c", f"{key}={value}"]
            self._args = args
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self) -> None:
        assert self.base is not None
        owner = self._as_owner()
        with open(self.base / "standby.log", "ab") as log:
            if owner:
                os.chown(self.base / "standby.log", owner["user"], owner["group"])
            self._proc = subprocess.Popen(
                self._args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.base,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                **owner,
            )
        self._wait_ready()

    def restart(self) -> None:
        """Stop the standby (fast shutdown) and start it again on the same data and port."""
        proc = self._proc
        assert proc is not None
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        self._launch()

    @property
    def log(self) -> str:
        if self.base is None:
            return ""
        path = self.base / "standby.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        url = self.url_for(self.primary_url)
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError("the standby did not start: " + self.log[-800:])
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
                    row = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()
                if row and row[0]:
                    return
            except psycopg.OperationalError:
                pass  # "the database system is starting up"
            time.sleep(0.1)
        raise RuntimeError("the standby did not accept connections: " + self.log[-800:])

    def caught_up(self, timeout: float = 30) -> None:
        """Wait until the standby has replayed everything the primary wrote so far."""
        with psycopg.connect(self.primary_url, autocommit=True) as primary:
            row = primary.execute("SELECT pg_catalog.pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None
        target = row[0]
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.url_for(self.primary_url), autocommit=True) as standby:
            while True:
                done = standby.execute(
                    "SELECT pg_catalog.pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
                ).fetchone()
                if done and done[0]:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"the standby did not replay up to {target}")
                time.sleep(0.02)

    def promote(self) -> None:
        """End recovery: the standby becomes a primary of its own."""
        with psycopg.connect(self.url_for(self.primary_url), autocommit=True) as conn:
            conn.execute("SELECT pg_catalog.pg_promote(true, 30)")

    def stop(self) -> None:
        """Stop the standby (fast shutdown) and remove its directory. Idempotent."""
        proc, self._proc = self._proc, None
        shut_down(proc)
        base, self.base = self.base, None
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
