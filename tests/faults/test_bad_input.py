"""Bad input, command by command: wrong types, out-of-range numbers, unknown kinds, and
databases that are unreachable, refuse the password, are not migrated, or were migrated
by a newer pubctl. Each gets one clear error line, the documented exit code (2 usage,
3 failure, 4 schema newer than the code), no password in the output, and nothing
half-written."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from support.cli import run_inprocess
from support.db import Database

# Every command that talks to a database, with the arguments it needs.
DB_COMMANDS: dict[str, list[str]] = {
    "migrate": ["migrate"],
    "status": ["status"],
    "enable": ["enable"],
    "disable": ["disable"],
    "apply": ["apply"],
    "feed": ["feed"],
    "worker": ["worker"],
    "backfill": ["backfill", "all"],
    "verify": ["verify"],
    "init-sample-schema": ["init-sample-schema"],
}
NEEDS_PUB_SCHEMA = [name for name in DB_COMMANDS if name not in ("migrate", "init-sample-schema")]

SECRET = "s3cr3t-pw"


def error_lines(text: str) -> list[str]:
    return [line for line in text.strip().splitlines() if line.strip()]


def state(db: Database) -> tuple[Any, ...]:
    """Everything pubctl could have written, to show that nothing was."""
    with db.connect() as conn:
        if conn.execute("SELECT to_regnamespace('pub')").fetchone() == (None,):
            return ("no pub schema",)
        row = conn.execute(
            "SELECT (SELECT string_agg(version_num, ',') FROM pub.alembic_version),"
            " (SELECT row(s.*)::text FROM pub.settings s),"
            " (SELECT count(*) FROM pub.outbox), (SELECT count(*) FROM pub.content),"
            " (SELECT last_rev FROM pub.rev_counter),"
            " (SELECT count(*) FROM pub.backfill_runs),"
            " (SELECT count(*) FROM study_question)"
        ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize("command", DB_COMMANDS)
def test_unreachable_server(capsys: pytest.CaptureFixture[str], command: str) -> None:
    url = f"postgresql://someone:{SECRET}@127.0.0.1:1/nowhere"
    result = run_inprocess(capsys, "--database-url", url, *DB_COMMANDS[command])
    assert result.code == 3, result
    assert (
        error_lines(result.err) == [error_lines(result.err)[0]]
        and "cannot connect to someone@127.0.0.1:1/nowhere" in result.err
    )
    assert SECRET not in result.out + result.err


@pytest.fixture
def wrong_password_url(pub_db: Database) -> str:
    pg = pub_db.server.throwaway
    if pg is None or pg.base is None:
        pytest.skip("needs the throwaway server, whose pg_hba.conf the test can edit")
    hba = pg.base / "data" / "pg_hba.conf"
    with pub_db.connect() as conn:
        conn.execute(
            "DO $$ BEGIN CREATE ROLE bad_input_user LOGIN PASSWORD 'right-one';"
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        if "bad_input_user" not in hba.read_text():
            hba.write_text("host all bad_input_user 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
            conn.execute("SELECT pg_reload_conf()")
    return pub_db.url.replace("user=postgres", f"user=bad_input_user password={SECRET}")


@pytest.mark.parametrize("command", DB_COMMANDS)
def test_wrong_password(
    capsys: pytest.CaptureFixture[str], pub_db: Database, wrong_password_url: str, command: str
) -> None:
    before = state(pub_db)
    result = run_inprocess(capsys, "--database-url", wrong_password_url, *DB_COMMANDS[command])
    assert result.code == 3, result
    assert len(error_lines(result.err)) == 1, result.err
    assert "password authentication failed" in result.err
    assert SECRET not in result.out + result.err
    assert state(pub_db) == before


@pytest.mark.parametrize("command", NEEDS_PUB_SCHEMA)
def test_unmigrated_database(
    capsys: pytest.CaptureFixture[str], app_db: Database, command: str
) -> None:
    result = run_inprocess(capsys, "--database-url", app_db.url, *DB_COMMANDS[command])
    assert result.code == 3, result
    assert "pubctl migrate" in result.err
    assert len([line for line in error_lines(result.err) if "Error" in line]) <= 1
    assert state(app_db) == ("no pub schema",)


@pytest.mark.parametrize("command", [*NEEDS_PUB_SCHEMA, "migrate"])
def test_schema_migrated_by_a_newer_pubctl(
    capsys: pytest.CaptureFixture[str], pub_db: Database, command: str
) -> None:
    with pub_db.connect() as conn:
        conn.execute("UPDATE pub.alembic_version SET version_num = '9999'")
    before = state(pub_db)
    result = run_inprocess(capsys, "--database-url", pub_db.url, *DB_COMMANDS[command])
    assert result.code == 4, result
    assert "newer pubctl" in result.err
    assert state(pub_db) == before


BAD_VALUES = [
    ["migrate", "--lock-timeout", "-1"],
    ["migrate", "--lock-timeout", "soon"],
    ["migrate", "--lock-attempts", "0"],
    ["migrate", "--revision", "0000"],
    ["migrate", "--revision", ""],
    ["apply", "--batch-size", "0"],
    ["apply", "--batch-size", "-5"],
    ["apply", "--batch-size", "1e3"],
    ["apply", "--batch-size", "99999999999999999999"],
    ["feed", "--after", "-1"],
    ["feed", "--after", "one"],
    ["feed", "--after", "9223372036854775808"],
    ["backfill", "all", "--batch-size", "2000000"],
    ["verify", "--limit-report", "1e9"],
    ["migrate", "--lock-timeout", "inf"],
    ["feed", "--limit", "-1"],
    ["feed", "--kind", "quiz"],
    ["feed", "--kind", ""],
    ["worker", "--batch-size", "0"],
    ["worker", "--poll-interval", "0"],
    ["worker", "--poll-interval", "-1"],
    ["worker", "--poll-interval", "nan"],
    ["worker", "--poll-interval", "inf"],
    ["migrate", "--lock-timeout", "nan"],
    ["backfill", "all", "--batch-size", "0"],
    ["backfill", "all", "--batch-size", "many"],
    ["backfill", "all", "--after-id", "-1"],
    ["backfill", "all", "--max-rows", "0"],
    ["backfill", "all", "--max-backlog", "-1"],
    ["backfill", "answers"],
    ["backfill", "all", "--resume", "--after-id", "5"],
    ["verify", "--kind", "quiz"],
    ["verify", "--limit-report", "-1"],
    ["verify", "--fail-on", "everything"],
    ["status", "--json", "yes"],
    ["enable", "now"],
]


@pytest.mark.parametrize("args", BAD_VALUES, ids=" ".join)
def test_bad_values_are_usage_errors(
    capsys: pytest.CaptureFixture[str], pub_db: Database, args: list[str]
) -> None:
    with pub_db.connect() as conn:
        conn.execute("UPDATE pub.settings SET publishing_enabled = false")
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
        conn.execute("UPDATE pub.settings SET publishing_enabled = true")
    before = state(pub_db)
    result = run_inprocess(capsys, "--database-url", pub_db.url, *args)
    assert result.code == 2, result
    errors = [line for line in error_lines(result.err) if line.startswith("Error")]
    assert len(errors) == 1, result.err
    assert state(pub_db) == before, "nothing written"


PAYLOAD_RULE_BREAKERS = [
    ("choices", "'{\"a\": 1}'::jsonb", "choices must be a JSON array of strings"),
    ("choices", "'\"a\"'::jsonb", "choices must be a JSON array of strings"),
    ("choices", "'[\"a\", null]'::jsonb", "choices must be a JSON array of strings"),
    ("choices", "'[[\"nested\"]]'::jsonb", "choices must be a JSON array of strings"),
    ("id", "9007199254740992", "within +-(2^53-1)"),
    ("topic_id", "-9007199254740992", "within +-(2^53-1)"),
]


@pytest.mark.parametrize(("column", "value", "rule"), PAYLOAD_RULE_BREAKERS)
def test_rows_breaking_the_payload_rules_are_refused_whole(
    pub_db: Database, column: str, value: str, rule: str
) -> None:
    """A bulk insert with one bad row among good ones is refused whole: no row, no
    outbox row, and the error names the row and the rule."""
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
        if column == "topic_id":
            conn.execute(
                "ALTER TABLE study_question DROP CONSTRAINT IF EXISTS study_question_topic_id_fkey"
            )
        before = state(pub_db)
        row = {"id": "g", "topic_id": "1", "choices": "'[\"a\"]'::jsonb"}
        row[column] = f"CASE WHEN g = 50 THEN {value} ELSE {row[column]} END"
        with pytest.raises(psycopg.Error) as info:
            conn.execute(
                "INSERT INTO study_question (id, topic_id, body, choices, explanation_status)"
                f" SELECT {row['id']}, {row['topic_id']}, 'b', {row['choices']}, 'draft'"
                " FROM generate_series(1, 100) g"
            )
    assert info.value.sqlstate == "PB001"
    assert rule in str(info.value)
    assert info.value.diag.message_hint and info.value.diag.message_detail
    assert state(pub_db) == before


def test_huge_payload_round_trips(capsys: pytest.CaptureFixture[str], pub_db: Database) -> None:
    """A 20 MB question body is published, fed and verified like any other."""
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status)"
            " VALUES (1, 1, repeat('\u00e9\"\\\\\n', 5000000), '[]', repeat('x', 1000000), 'ready')"
        )
    assert run_inprocess(capsys, "--database-url", pub_db.url, "apply").code == 0
    feed = run_inprocess(capsys, "--database-url", pub_db.url, "feed", "--kind", "question")
    assert feed.code == 0 and len(feed.out) > 20_000_000
    verify = run_inprocess(capsys, "--database-url", pub_db.url, "verify", "--fail-on", "pending")
    assert verify.code == 0, verify.out
