"""Units without a database: password masking, query loading, finding the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from pubctl import db, throwaway
from pubctl.queries import all_queries


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://app:hunter2@db.example:5432/study", "hunter2"),
        ("postgres://app:p%40ss@db/study?sslmode=require", "p%40ss"),
        ("host=db user=app password=hunter2 dbname=study", "hunter2"),
        ("host=db user=app password='two words' dbname=study", "two words"),
    ],
)
def test_mask_hides_passwords(url: str, secret: str) -> None:
    assert secret not in db.mask(f"could not use {url}", url)
    assert secret not in db.describe(url)


def test_describe_uses_libpq_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"PGHOST": "h", "PGPORT": "6543", "PGUSER": "u", "PGDATABASE": "d"}.items():
        monkeypatch.setenv(key, value)
    assert db.describe("") == "u@h:6543/d"


def test_pgpassword_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "from-env-secret")
    assert "from-env-secret" not in db.mask("error near from-env-secret", "")


def test_every_query_has_a_unique_name_and_body() -> None:
    queries = all_queries()
    assert queries, "queries.sql is empty"
    assert all(body.strip() for body in queries.values())


def test_missing_server_binaries_name_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PUBCTL_PG_BINDIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(throwaway.glob, "glob", lambda _pattern: [])
    with pytest.raises(throwaway.ThrowawayError) as info:
        throwaway.find_bindir()
    assert "apt-get install postgresql" in (info.value.hint or "")


def test_missing_postgres_user_is_explained_when_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(throwaway.os, "geteuid", lambda: 0)

    def no_user(_name: str) -> None:
        raise KeyError(_name)

    monkeypatch.setattr(throwaway.pwd, "getpwnam", no_user)
    with pytest.raises(throwaway.ThrowawayError) as info:
        throwaway.ThrowawayPostgres()._owner_ids()
    assert "postgres" in info.value.message and "root" in info.value.message
