"""The throwaway server starts, serves, and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg

from pubctl.throwaway import ThrowawayPostgres


def test_start_and_cleanup() -> None:
    with ThrowawayPostgres() as pg:
        base = pg.base
        assert base is not None and base.exists()
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT current_setting('listen_addresses')").fetchone() == (
                "127.0.0.1",
            )
    assert not base.exists()


def test_ctrl_c_cleans_up(tmp_path: Path) -> None:
    marker = tmp_path / "base"
    script = textwrap.dedent(
        f"""
        import time
        from pubctl.throwaway import ThrowawayPostgres
        with ThrowawayPostgres() as pg:
            open({str(marker)!r}, "w").write(str(pg.base) + "\\n" + str(pg.port))
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    base, port = marker.read_text().split()
    os.kill(proc.pid, signal.SIGINT)
    proc.wait(60)
    assert not Path(base).exists()
    try:
        psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=2
        ).close()
        raise AssertionError("server still running after Ctrl-C")
    except psycopg.OperationalError:
        pass
