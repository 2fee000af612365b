"""The revision guard every command runs, apart from Alembic."""

from __future__ import annotations

import pytest

from pubctl import migrate, revision, shipped
from pubctl.errors import NotMigratedError, SchemaNewerError


def test_the_guard_knows_exactly_the_migration_scripts() -> None:
    assert tuple(migrate.revisions()) == revision.REVISIONS
    assert migrate.head_revision() == revision.HEAD
    assert revision.CONTENT_REVISION in revision.REVISIONS
    assert not set(revision.PRE_RELEASE) & set(revision.REVISIONS)


def test_check_names_what_to_do() -> None:
    assert revision.check(revision.HEAD, "db") == revision.HEAD
    with pytest.raises(NotMigratedError, match="has no pubctl schema"):
        revision.check(None, "db")
    with pytest.raises(NotMigratedError, match="unreleased history") as old:
        revision.check("0007", "db")
    assert "--revision base" in (old.value.hint or "")
    with pytest.raises(SchemaNewerError, match="newer pubctl"):
        revision.check("9999", "db")


def test_shipped_folders_are_found() -> None:
    assert (shipped.sql_folder() / "queries.sql").is_file()
    assert (shipped.migrations_folder() / "env.py").is_file()
    assert sorted(p.name for p in (shipped.sql_folder() / "schema").glob("*.sql"))
