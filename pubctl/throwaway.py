"""A throwaway PostgreSQL server for tests, benchmarks and ``pubctl demo``.

It runs the Debian (or any) PostgreSQL server binaries directly: ``initdb`` into a
temporary directory, ``postgres`` on a free port of 127.0.0.1 with a private socket
directory, and removes everything again on exit, Ctrl-C included. Postgres refuses to
run as root, so when started by root the server runs as the ``postgres`` system user.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
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
from types import TracebackType

from pubctl.errors import PubctlError

SERVER_USER = "postgres"
READY_TIMEOUT_S = 60.0

# Settings for a server that only lives for a test run: durability is pointless, and
# turning it off makes DDL-heavy suites (template databases, migrations) much faster.
FAST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "128MB",
}


class ThrowawayError(PubctlError):
    """The throwaway server could not be set up."""


def find_bindir() -> Path:
    """Locate the directory holding ``initdb`` and ``postgres``.

    Tries ``$PUBCTL_PG_BINDIR``, then ``pg_config --bindir``, then ``initdb`` on PATH,
    then the newest ``/usr/lib/postgresql/*/bin``.
    """
    candidates: list[Path] = []
    env = os.environ.get("PUBCTL_PG_BINDIR")
    if env:
        candidates.append(Path(env))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], check=True, capture_output=True, text=True
            ).stdout.strip()
            candidates.append(Path(out))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(os.path.realpath(initdb)).parent)

    def version_key(path: str) -> float:
        with contextlib.suppress(ValueError):
            return float(Path(path).parent.name)
        return 0.0

    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)
    candidates.extend(Path(p) for p in debian)
    for cand in candidates:
        if (cand / "initdb").is_file() and (cand / "postgres").is_file():
            return cand
    raise ThrowawayError(
        "no PostgreSQL server binaries found (initdb, postgres)",
        hint="install them (Debian/Ubuntu: apt-get install postgresql) or set "
        "PUBCTL_PG_BINDIR to the directory that holds them",
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if pubctl (or pytest) is killed
    # with SIGKILL, the kernel stops the server too instead of leaving it behind.
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGQUIT)


class ThrowawayPostgres:
    """A private PostgreSQL server; use it as a context manager.

    >>> with ThrowawayPostgres() as pg:   # doctest: +SKIP
    ...     print(pg.url)
    """

    def __init__(
        self,
        settings: Mapping[str, str] | None = None,
        *,
        bindir: Path | None = None,
        keep: bool = False,
    ) -> None:
        self.settings = dict(FAST_SETTINGS if settings is None else settings)
        # keep: the server outlives this process (for `pubctl demo --keep`).
        self.keep = keep
        self._bindir = bindir
        self.host = "127.0.0.1"
        self.port = 0
        self.user = SERVER_USER
        self.base: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    @property
    def url(self) -> str:
        """A libpq URL for the ``postgres`` database of the server."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        """A libpq URL for another database on this server."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _owner_ids(self) -> tuple[int, int] | None:
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise ThrowawayError(
                f"running as root, but there is no {SERVER_USER!r} system user to run "
                "the server as (Postgres refuses to run as root)",
                hint="install the server package (apt-get install postgresql), which "
                "creates it, or: useradd --system --home /var/lib/postgresql postgres",
            ) from None
        return entry.pw_uid, entry.pw_gid

    def _run_as_owner(self, ids: tuple[int, int] | None) -> dict[str, object]:
        if ids is None:
            return {}
        return {"user": ids[0], "group": ids[1], "extra_groups": []}

    def start(self) -> ThrowawayPostgres:
        """Create the cluster and start the server; returns self."""
        bindir = self._bindir or find_bindir()
        ids = self._owner_ids()
        self.base = Path(tempfile.mkdtemp(prefix="pubctl-pg-"))
        if not self.keep:
            atexit.register(self.stop)
        try:
            data, sock = self.base / "data", self.base / "sock"
            sock.mkdir()
            if ids is not None:
                for path in (self.base, sock):
                    os.chown(path, *ids)
            self._log = self.base / "server.log"
            initdb = subprocess.run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    SERVER_USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                capture_output=True,
                text=True,
                cwd=self.base,
                **self._run_as_owner(ids),  # type: ignore[call-overload]
            )
            if initdb.returncode != 0:
                raise ThrowawayError(
                    "initdb failed: " + (initdb.stderr.strip().splitlines() or ["?"])[-1]
                )
            for _attempt in range(5):
                if self._launch(bindir, data, sock, ids):
                    return self
            raise ThrowawayError("could not find a free port for the throwaway server")
        except BaseException:
            self.stop()
            raise

    def _launch(
        self,
        bindir: Path,
        data: Path,
        sock: Path,
        ids: tuple[int, int] | None,
        port: int | None = None,
    ) -> bool:
        assert self._log is not None
        self.port = port or _free_port()
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
        ]
        for key, value in self.settings.items():
            args += ["-c", f"{key}={value}"]
        with open(self._log, "ab") as log:
            if ids is not None:
                os.chown(self._log, *ids)
            self._proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.base,
                start_new_session=True,
                preexec_fn=None if self.keep else _die_with_parent,
                **self._run_as_owner(ids),  # type: ignore[call-overload]
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self._log.read_text(errors="replace")
                self._proc = None
                if "could not bind" in tail or "Address already in use" in tail:
                    return False
                raise ThrowawayError("the throwaway server did not start: " + tail[-500:])
            if self._accepts_connections():
                return True
            time.sleep(0.05)
        raise ThrowawayError(f"the throwaway server was not ready after {READY_TIMEOUT_S:.0f}s")

    def _accepts_connections(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                pass
        except OSError:
            return False
        from pubctl import db

        try:
            db.connect(self.url).close()
        except db.ConnectError:
            return False
        return True

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory. Idempotent."""
        proc, self._proc = self._proc, None
        shut_down(proc)
        base, self.base = self.base, None
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
        atexit.unregister(self.stop)

    def restart(self) -> None:
        """Stop and start the server on the same data and port (for fault tests)."""
        assert self.base is not None and self._proc is not None
        self._proc.send_signal(signal.SIGINT)
        self._proc.wait(30)
        bindir = self._bindir or find_bindir()
        # The same port, so that clients reconnect to the same URL.
        if not self._launch(
            bindir, self.base / "data", self.base / "sock", self._owner_ids(), self.port
        ):
            raise ThrowawayError(f"port {self.port} was taken while the server restarted")


def shut_down(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a postgres server process: a fast shutdown, then an immediate one, then a
    kill, each given a few seconds."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGINT, 15.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
