"""A privilege error names what docs/operations.md's table says the command needs:
never a grant on one of pub's tables by name (the application may have a table of the
same name, such as its own alembic_version), and for migrate the TRIGGER privilege, not
the statement that failed."""

from __future__ import annotations

import pytest

from support.cli import run_subprocess
from support.db import Database
from support.roles import role_url, roles
from support.serve import reader_url


@pytest.mark.parametrize(
    ("args", "needs"),
    [
        (("status",), "`pubctl status` needs USAGE on schema pub and SELECT on its tables"),
        (("enable",), "`pubctl enable` needs to run as the owner of schema pub"),
        (("disable",), "`pubctl disable` needs to run as the owner of schema pub"),
        (("backfill", "all"), "`pubctl backfill` needs to run as the owner of schema pub"),
        (("apply",), "`pubctl apply` needs to run as the owner of schema pub"),
        (("verify",), "`pubctl verify` needs to run as the owner of schema pub"),
        (("migrate",), "`pubctl migrate` needs to run as the owner of schema pub"),
    ],
)
def test_every_command_names_what_it_needs_as_a_feed_reader(
    pub_db: Database, args: tuple[str, ...], needs: str
) -> None:
    result = run_subprocess("--database-url", reader_url(pub_db), *args)
    assert result.code == 3, result
    line = result.err.strip()
    assert len(line.splitlines()) == 1, line
    assert needs in line, line
    assert "ON alembic_version" not in line and "ON settings" not in line, line


def test_a_role_without_the_readers_rights_is_told_them(pub_db: Database) -> None:
    with roles(pub_db) as made:
        nobody = made.create("h_nobody")
        result = run_subprocess("--database-url", role_url(pub_db, nobody), "feed")
        assert result.code == 3
        assert "GRANT USAGE ON SCHEMA pub TO <role>" in result.err
        assert "GRANT EXECUTE ON FUNCTION pub.feed(bigint, integer, text[])" in result.err


def test_migrate_without_trigger_names_trigger_not_the_script(app_db: Database) -> None:
    with roles(app_db) as made:
        role = made.create("h_no_trigger")
        dbname = app_db.url.split("dbname=")[1].split()[0]
        made.admin.execute(f'GRANT CREATE ON DATABASE "{dbname}" TO {role}')
        made.admin.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        made.admin.execute(f"GRANT SELECT, UPDATE ON study_topic, study_question TO {role}")
        result = run_subprocess("--database-url", role_url(app_db, role), "migrate")
        assert result.code != 0
        line = result.err.strip()
        assert len(line.splitlines()) == 1, line
        assert f"GRANT TRIGGER ON public.study_topic TO {role}" in line, line
        assert "CREATE TRIGGER" not in line and "EXECUTE FUNCTION" not in line, line
