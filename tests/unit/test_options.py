"""Option bounds: a value out of range is a usage error (exit 2) before any connection."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pubctl.cli import cli

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
