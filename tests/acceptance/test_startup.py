"""Start-up: commands import what they need when they run; only `migrate` needs Alembic
and SQLAlchemy, and help needs no database driver at all (see BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("alembic", "sqlalchemy", "psycopg")
PROBE = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(
    {m.split('.')[0] for m in sys.modules} & set(%r))), file=sys.stderr))
from pubctl.cli import main
sys.argv = ['pubctl', *%r]
main()
"""


def _heavy_imports(*args: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE % (HEAVY, list(args))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return list(json.loads(proc.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("args", [["--help"], ["feed", "--help"], ["serve", "--help"]])
def test_help_imports_no_database_library(args: list[str]) -> None:
    assert _heavy_imports(*args) == []


def test_only_migrate_imports_alembic() -> None:
    nowhere = "postgresql://nobody@127.0.0.1:1/none"
    assert _heavy_imports("--database-url", nowhere, "status") == ["psycopg"]
    assert "alembic" in _heavy_imports("--database-url", nowhere, "migrate")
