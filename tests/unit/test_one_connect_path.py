"""Every session pubctl opens goes through pubctl.db, which pins the search path.

A query that resolves an operator or function through an implicit cast or a
polymorphic signature would run a table owner's planted ``public.=`` if the session's
search path reached ``public`` or ``"$user"``. pubctl.db pins it in the startup packet;
this test keeps every other way of opening a connection out of the package, so a new
module cannot forget it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pubctl import db

PACKAGE = Path(db.__file__).parent

# Calls that open a database session, by the name they are called with.
CONNECTING = {"connect", "AsyncConnectionPool", "ConnectionPool", "create_engine"}


def _calls(tree: ast.AST) -> list[tuple[int, str, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute):
            owner = ast.unparse(func.value)
            name = func.attr
        elif isinstance(func, ast.Name):
            owner, name = "", func.id
        else:
            continue
        if name in CONNECTING:
            found.append((node.lineno, owner, name))
    return found


def _allowed(path: Path, owner: str, name: str) -> bool:
    relative = path.relative_to(PACKAGE).as_posix()
    if relative == "db.py":
        return True  # the one place that connects
    if name == "connect" and owner in {"db", "self"}:
        return True  # db.connect; socket probes are not sessions
    if relative == "migrate.py" and (name, owner) in {
        ("create_engine", "sqlalchemy"),
        ("connect", "engine"),
    }:
        return True  # the engine's creator is db.connect (checked below)
    if name == "AsyncConnectionPool" and relative == "serve/app.py":
        return True  # its kwargs come from db.session_kwargs (checked below)
    return owner == "socket" and name == "create_connection"


def test_no_module_opens_a_session_but_through_pubctl_db() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, owner, name in _calls(ast.parse(path.read_text(), str(path))):
            if not _allowed(path, owner, name):
                offenders.append(f"{path.relative_to(PACKAGE)}:{line}: {owner}.{name}")
    assert offenders == []


def test_the_pool_and_the_engine_take_their_sessions_from_pubctl_db() -> None:
    app = (PACKAGE / "serve" / "app.py").read_text()
    assert "db.session_kwargs(" in app
    migrate = (PACKAGE / "migrate.py").read_text()
    assert "return db.connect(url)" in migrate


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        ("", None, "-c search_path=pg_catalog,pg_temp"),
        (
            "",
            "-c statement_timeout=5s",
            "-c statement_timeout=5s -c search_path=pg_catalog,pg_temp",
        ),
        (
            "postgresql://u@h/d?options=-c%20search_path%3Dpublic",
            "-c work_mem=1MB",
            "-c search_path=public -c search_path=pg_catalog,pg_temp",
        ),
    ],
)
def test_the_pinned_path_comes_last_in_the_startup_options(
    url: str, env: str | None, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if env is None:
        monkeypatch.delenv("PGOPTIONS", raising=False)
    else:
        monkeypatch.setenv("PGOPTIONS", env)
    assert db.session_options(url) == expected
    assert db.session_kwargs(url)["options"] == expected
