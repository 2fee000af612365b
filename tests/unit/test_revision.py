"""The revision guard every command runs, apart from Alembic."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from pubctl import migrate, revision, shipped
from pubctl.errors import NotMigratedError, PubctlError, SchemaNewerError


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


def test_a_new_revision_from_the_template_loads(tmp_path: Path) -> None:
    """`alembic revision` with pubctl's template writes a script Alembic can load, on top
    of the head."""
    folder = tmp_path / "migrations"
    shutil.copytree(shipped.migrations_folder(), folder)
    config = Config()
    config.set_main_option("script_location", str(folder))
    next_id = f"{int(revision.HEAD) + 1:04d}"
    command.revision(config, message="next change", rev_id=next_id)
    script = ScriptDirectory(str(folder))
    assert script.get_current_head() == next_id
    new = script.get_revision(next_id)
    assert new is not None and new.down_revision == revision.HEAD
    assert new.module.run_frozen is migrate.run_frozen


def test_an_installed_package_never_takes_the_folder_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed, the package's neighbours are other distributions: site-packages/alembic
    is the Alembic library, whose own files must never be taken for pubctl's scripts."""
    site = tmp_path / "site-packages"
    (site / "pubctl").mkdir(parents=True)
    (site / "alembic").mkdir()
    (site / "alembic" / "env.py").write_text("")  # looks like a migrations folder
    monkeypatch.setattr(shipped, "_PACKAGE", site / "pubctl")
    with pytest.raises(PubctlError, match="no migrations folder"):
        shipped._find("migrations", "alembic", "env.py")
    (site / "pyproject.toml").write_text("")  # now it is a checkout
    assert shipped._find("migrations", "alembic", "env.py") == site / "alembic"
