"""Option bounds: a value out of range is a usage error (exit 2) before any connection."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pubctl import feed
from pubctl.cli import cli
from pubctl.errors import PubctlError

# Nothing listens here: reaching the database would be exit 3, not 2.
NOWHERE = "postgresql://nobody@127.0.0.1:1/none"


@pytest.mark.parametrize(
    "args",
    [
        ["apply", "--batch-size", "0"],
        ["apply", "--batch-size", "1000001"],
        ["backfill", "all", "--batch-size", "-5"],
        ["backfill", "all", "--max-rows", "0"],
        ["feed", "--after", "-1"],
        ["feed", "--limit", "0"],
        ["feed", "--after", str(2**63)],
        ["feed", "--kind", "answer"],
        ["worker", "--poll-interval", "nan"],
        ["worker", "--poll-interval", "0"],
        ["enable", "--wait-timeout", "-1"],
        ["migrate", "--lock-attempts", "0"],
        ["verify", "--limit-report", "-1"],
    ],
)
def test_out_of_range_values_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["--database-url", NOWHERE, *args])
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.output


def test_global_options_before_or_after_the_command() -> None:
    for args in (["--database-url", "x://", "status"], ["status", "--database-url", "x://"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output


def test_feed_limit_0_names_the_option() -> None:
    result = CliRunner().invoke(cli, ["--database-url", NOWHERE, "feed", "--limit", "0"])
    assert result.exit_code == 2, result.output
    assert "--limit" in result.output


# Arguments a command needs before any option can be tried.
REQUIRED_ARGS = {"backfill": ["all"], "rename-column": ["study_question", "body", "question_text"]}


def _value(param: click.Option, tmp_path: Path) -> list[str]:
    """A valid value for ``param``, as it would be typed."""
    if param.is_flag or param.count:
        return []
    kind = param.type
    if isinstance(kind, click.Choice):
        return [str(kind.choices[-1])]
    if isinstance(kind, click.IntRange | click.FloatRange):
        # The lowest value allowed (a port: 0, any free one).
        low = kind.min if kind.min is not None else 1
        return [str(low + 1 if kind.min_open else low)]
    if isinstance(kind, click.Path | click.File):
        token_file = tmp_path / "tokens"
        token_file.write_text("a-token-of-some-length\n")
        return [str(token_file)]
    name = param.name or ""
    if "url" in name:
        return [NOWHERE]
    if "host" in name:
        return ["127.0.0.1"]
    if "schema" in name:
        return ["public"]
    if name == "revision":
        return ["head"]
    return ["1"]


def _listed_options(command: str) -> list[str]:
    help_text = CliRunner().invoke(cli, [command, "--help"]).output
    options = help_text.split("Options:", 1)[1]
    return sorted(set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z-]*)", options, re.M)) - {"--help"})


def _follow_stub(*_args: object, **_kwargs: object) -> None:
    raise PubctlError("stub: following reached")


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_option_a_command_lists_is_accepted(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--help offers only what the command takes: each listed option, with a valid value,
    gets past the usage checks (here to the unreachable database: exit 3)."""
    monkeypatch.setattr(feed, "follow", _follow_stub)
    cmd = cli.commands[command]
    by_name = {opt: p for p in cmd.params if isinstance(p, click.Option) for opt in p.opts}
    listed = _listed_options(command)
    assert listed, command
    for option in listed:
        args = [
            command,
            *REQUIRED_ARGS.get(command, []),
            option,
            *_value(by_name[option], tmp_path),
        ]
        if option != "--database-url":
            args += ["--database-url", NOWHERE]
        # Commands install SIGTERM/SIGINT handlers: the test process keeps its own.
        saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            result = CliRunner().invoke(cli, args)
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        assert result.exit_code != 2, (args, result.output)


@pytest.mark.parametrize("command", ["status", "apply", "worker", "feed", "verify", "serve"])
def test_app_schema_is_not_offered_where_it_is_refused(command: str) -> None:
    assert "--app-schema" not in _listed_options(command)
    result = CliRunner().invoke(cli, [command, "--app-schema", "public"])
    assert result.exit_code == 2 and "--app-schema does not apply" in result.output
