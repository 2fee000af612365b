"""Helpers to run the pubctl command line from tests."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from pubctl.cli import main


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_inprocess(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    """Run ``pubctl ARGS`` inside the test process (fast; the usual way)."""
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def pubctl_executable() -> str:
    """The ``pubctl`` console script of the environment running the tests."""
    return os.path.join(os.path.dirname(sys.executable), "pubctl")


def spawn(
    url: str,
    *args: str,
    stdout: Any = subprocess.DEVNULL,
    stderr: Any = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start ``pubctl --database-url URL ARGS`` in the background (text mode)."""
    return subprocess.Popen(
        [pubctl_executable(), "--database-url", url, *args],
        stdout=stdout,
        stderr=stderr,
        env=env,
        text=True,
    )


def run_subprocess(
    *args: str, env: dict[str, str] | None = None, cwd: str | None = None, timeout: float = 120
) -> Result:
    """Run the real ``pubctl`` console script in a child process."""
    full_env = dict(os.environ)
    for key in ("PUBCTL_DATABASE_URL", "DATABASE_URL"):
        full_env.pop(key, None)
    full_env.update(env or {})
    proc = subprocess.run(
        [pubctl_executable(), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
