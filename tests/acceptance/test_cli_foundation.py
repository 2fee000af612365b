"""The command line's outside: connection options, errors, exit codes, status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from pubctl import __version__, migrate

from support.cli import run_inprocess, run_subprocess
from support.db import Database

UNREACHABLE = "postgresql://someone:s3cr3t-pw@127.0.0.1:1/nowhere"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_inprocess(capsys, "--version")
    assert result.code == 0
    assert __version__ in result.out


def test_unreachable_database_is_one_line_without_password() -> None:
    result = run_subprocess("--database-url", UNREACHABLE, "status")
    assert result.code == 3
    assert "s3cr3t-pw" not in result.out + result.err
    assert "cannot connect to someone@127.0.0.1:1/nowhere" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert "Traceback" not in result.err


def test_password_from_environment_is_masked_too() -> None:
    result = run_subprocess("migrate", env={"PUBCTL_DATABASE_URL": UNREACHABLE})
    assert result.code == 3
    assert "s3cr3t-pw" not in result.out + result.err


def test_malformed_url_is_a_usage_error_without_password() -> None:
    result = run_subprocess("--database-url", "postgresql://u:s3cr3t-pw@h:5432/db?nope=1", "status")
    assert result.code == 2
    assert "--database-url" in result.err
    assert "s3cr3t-pw" not in result.out + result.err


def test_wrong_password_is_reported_without_it(pub_db: Database) -> None:
    pg = pub_db.server.throwaway
    if pg is None or pg.base is None:
        pytest.skip("needs the throwaway server, whose pg_hba.conf the test can edit")
    with pub_db.connect() as conn:
        conn.execute("CREATE ROLE pw_user LOGIN PASSWORD 'right-one'")
        hba = pg.base / "data" / "pg_hba.conf"
        hba.write_text("host all pw_user 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        conn.execute("SELECT pg_reload_conf()")
    url = pub_db.url.replace("user=postgres", "user=pw_user password=wrong-s3cr3t")
    result = run_subprocess("--database-url", url, "status")
    assert result.code == 3
    assert "password authentication failed" in result.err
    assert "wrong-s3cr3t" not in result.out + result.err


def test_debug_shows_traceback() -> None:
    result = run_subprocess("--debug", "--database-url", UNREACHABLE, "status")
    assert result.code == 3
    assert "Traceback" in result.err
    assert "s3cr3t-pw" not in result.err


def test_status_on_unmigrated_database_names_migrate(app_db: Database) -> None:
    result = run_subprocess("--database-url", app_db.url, "status")
    assert result.code == 3
    assert "pubctl migrate" in result.err
    assert len(result.err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["enable", "disable"])
def test_switches_on_unmigrated_database_name_migrate(
    capsys: pytest.CaptureFixture[str], app_db: Database, command: str
) -> None:
    result = run_inprocess(capsys, "--database-url", app_db.url, command)
    assert result.code == 3
    assert "pubctl migrate" in result.err


def test_schema_newer_than_code_is_refused(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    with pub_db.connect() as conn:
        conn.execute("UPDATE pub.alembic_version SET version_num = '9999'")
    for command in ("status", "enable", "migrate"):
        result = run_inprocess(capsys, "--database-url", pub_db.url, command)
        assert result.code == 4, (command, result)
        assert "newer pubctl" in result.err


@pytest.mark.parametrize(
    "args",
    [
        ["migrate", "--revision", "not-a-revision"],
        ["status", "--frobnicate"],
        ["no-such-command"],
        ["migrate", "--revision"],
    ],
)
def test_bad_usage_exits_2(
    capsys: pytest.CaptureFixture[str], pub_db: Database, args: list[str]
) -> None:
    result = run_inprocess(capsys, "--database-url", pub_db.url, *args)
    assert result.code == 2
    assert "Error" in result.err


def test_status_and_switches(capsys: pytest.CaptureFixture[str], pub_db: Database) -> None:
    result = run_inprocess(capsys, "--database-url", pub_db.url, "status", "--json")
    assert result.code == 0
    report = json.loads(result.out)
    assert report["revision"] == report["head_revision"] == migrate.head_revision()
    assert report["publishing_enabled"] is True
    assert report["app_schema"] == "public"

    assert run_inprocess(capsys, "--database-url", pub_db.url, "disable").code == 0
    report = json.loads(run_inprocess(capsys, "--database-url", pub_db.url, "status", "--json").out)
    assert report["publishing_enabled"] is False

    assert run_inprocess(capsys, "--database-url", pub_db.url, "enable").code == 0
    text = run_inprocess(capsys, "--database-url", pub_db.url, "status").out
    assert "publishing:" in text and " on " in text


def test_url_precedence(
    capsys: pytest.CaptureFixture[str], pub_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", UNREACHABLE)
    assert run_inprocess(capsys, "status").code == 3
    monkeypatch.setenv("PUBCTL_DATABASE_URL", pub_db.url)
    assert run_inprocess(capsys, "status").code == 0  # PUBCTL_DATABASE_URL wins
    assert run_inprocess(capsys, "--database-url", UNREACHABLE, "status").code == 3  # option wins


def test_libpq_environment_is_used_without_url(pub_db: Database) -> None:
    server = pub_db.server
    dbname = pub_db.url.split("dbname=")[1].split()[0]
    env = {
        "PGHOST": server.host,
        "PGPORT": str(server.port),
        "PGUSER": server.user,
        "PGDATABASE": dbname,
    }
    result = run_subprocess("status", env=env)
    assert result.code == 0, result
    assert f"{server.user}@{server.host}:{server.port}/{dbname}" in result.out


def test_migrate_cli_up_and_down(app_db: Database) -> None:
    up = run_subprocess("--database-url", app_db.url, "migrate")
    assert up.code == 0 and "to " + migrate.head_revision() in up.out
    down = run_subprocess("--database-url", app_db.url, "migrate", "--revision", "base")
    assert down.code == 0 and "to base" in down.out


def test_init_sample_schema_then_migrate(empty_db: Database) -> None:
    refused = run_subprocess("--database-url", empty_db.url, "migrate")
    assert refused.code == 3
    assert "study_topic is missing" in refused.err
    assert run_subprocess("--database-url", empty_db.url, "init-sample-schema").code == 0
    assert run_subprocess("--database-url", empty_db.url, "migrate").code == 0


@pytest.mark.slow
def test_wheel_installs_and_migrates_from_another_directory(
    tmp_path: Path, empty_db: Database
) -> None:
    """The wheel carries its SQL and migration scripts: no repository path needed."""
    repo = Path(__file__).resolve().parents[2]
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(wheel_dir),
            str(repo),
        ],
        check=True,
        capture_output=True,
    )
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # Dependencies come from the test environment, so no download is needed.
    site = next(p for p in sys.path if p.endswith("site-packages"))
    purelib = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "test-deps.pth").write_text(site + "\n")
    wheel = next(wheel_dir.glob("pubctl-*.whl"))
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PUBCTL_DATABASE_URL", "DATABASE_URL", "PYTHONPATH")
    }
    exe = env_dir / "bin" / "pubctl"
    for args in (["init-sample-schema"], ["migrate"], ["status"]):
        proc = subprocess.run(
            [exe, "--database-url", empty_db.url, *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
    assert (
        str(env_dir)
        in subprocess.run(
            [py, "-c", "from pubctl import shipped; print(shipped.migrations_folder())"],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )


def test_the_checkout_shadows_no_library(empty_db: Database) -> None:
    """sql/ and alembic/ are plain folders: Python run from the repository root imports
    the Alembic library, and `python -m pubctl` migrates from there."""
    repo = Path(__file__).resolve().parents[2]
    assert not (repo / "alembic" / "__init__.py").exists()
    assert not (repo / "sql" / "__init__.py").exists()
    found = subprocess.run(
        [sys.executable, "-c", "import alembic.command; print(alembic.__file__)"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert not found.startswith(str(repo / "alembic")), found
    env = {k: v for k, v in os.environ.items() if k not in ("PUBCTL_DATABASE_URL", "DATABASE_URL")}
    for args in (["init-sample-schema"], ["migrate"], ["status"]):
        proc = subprocess.run(
            [sys.executable, "-m", "pubctl", "--database-url", empty_db.url, *args],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
