"""The Prometheus alerting rules shipped in deploy/prometheus: promtool accepts them, their
unit tests pass (each alert fires, and stays silent on look-alikes), and they agree with
the alert table of docs/operations.md (names, expressions' thresholds, durations). And the
Grafana dashboard's queries are valid PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "pubctl-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "pubctl-alerts.test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
DASHBOARD = ROOT / "deploy" / "grafana" / "pubctl-dashboard.json"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout, result.stdout


def test_promtool_test_rules() -> None:
    result = run_promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


# --- the rules file, read without a YAML library ----------------------------------------


def normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def rules() -> dict[str, dict[str, str]]:
    """Each alert's ``expr`` (folded blocks joined), ``for`` and annotations, by name."""
    found: dict[str, dict[str, str]] = {}
    lines = RULES.read_text().splitlines()
    current: dict[str, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        alert = re.match(r"\s*- alert: (\S+)$", line)
        if alert:
            current = found.setdefault(alert.group(1), {})
        field = re.match(r"(\s*)(expr|for|summary|description): ?(.*)$", line)
        if field and current is not None:
            indent, key, value = len(field.group(1)), field.group(2), field.group(3)
            if value in (">-", "|", ">", "|-"):
                block = []
                while i + 1 < len(lines) and (
                    not lines[i + 1].strip()
                    or len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent
                ):
                    i += 1
                    block.append(lines[i])
                value = " ".join(block)
            current[key] = normalized(value.strip('"'))
        i += 1
    return found


def test_every_rule_has_a_threshold_duration_and_explains_itself() -> None:
    found = rules()
    assert len(found) >= 10
    for name, rule in found.items():
        assert name.startswith("Pubctl"), name
        assert rule.get("expr"), name
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), (name, rule.get("for"))
        assert len(rule.get("summary", "")) > 20, name
        assert len(rule.get("description", "")) > 80, name


# --- the docs' alert table ------------------------------------------------------------


def alert_table() -> list[list[str]]:
    """The rows of the Monitoring section's alert table: alert, when, rule, means."""
    text = OPERATIONS.read_text()
    section = text[text.index("\n## Monitoring") :]
    section = section[: section.index("\n## ", 1)]
    start = section.index("| alert | when")
    rows = []
    for line in section[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip()[1:-1].split("|")])
    return rows


def test_the_docs_alert_table_and_the_rules_agree() -> None:
    found = rules()
    table = alert_table()
    names = [row[0] for row in table]
    for expected in (
        "capture broken",
        "publishing off",
        "applier stuck or absent",
        "no worker",
        "worker wedged",
        "long writer",
        "serve lagging",
        "healthz failing",
    ):
        assert expected in names, expected
    documented: set[str] = set()
    for row in table:
        assert len(row) == 4, row
        alert, _when, rule_cell, _means = row
        named = re.match(r"`(Pubctl\w+)`: (.*)$", rule_cell)
        if named is None:
            # An alert no exported metric can express: it says so, and where to look.
            assert "`status --json` only" in rule_cell, (alert, rule_cell)
            continue
        name, condition = named.groups()
        assert name in found, f"{alert}: {name} is not in {RULES.name}"
        documented.add(name)
        rule = found[name]
        # Every PromQL fragment the table quotes is in the rule's expression.
        expr = rule["expr"]
        fragments = [
            snippet
            for snippet in re.findall(r"`([^`]+)`", condition)
            if "pubctl_" in snippet or re.match(r"[<>=!]=? ?[\d.]+$", snippet) or snippet == "[5m]"
        ]
        assert fragments, (alert, condition)
        for fragment in fragments:
            assert normalized(fragment) in expr, f"{name}: {fragment!r} not in {expr!r}"
        # And the same duration.
        duration = re.search(r"\bfor (\d+[smh])\b", condition)
        assert duration is not None, (alert, condition)
        assert duration.group(1) == rule["for"], f"{name}: docs say for {duration.group(1)}"
    assert documented == set(found), (
        f"rules not in the docs' table: {sorted(set(found) - documented)}"
    )


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each of the Grafana dashboard's queries (its variables replaced by
    what Grafana puts there) as a recording rule."""
    tool = promtool()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 15
    lines = ["groups:", "  - name: pubctl-dashboard", "    rules:"]
    for n, expr in enumerate(exprs):
        grafana = expr.replace("$__rate_interval", "1m").replace("$worker_job", ".*")
        grafana = grafana.replace("$serve_job", ".*")
        assert "$" not in grafana, expr
        lines += [
            f"      - record: pubctl:dashboard_query_{n}",
            f"        expr: {json.dumps(grafana)}",
        ]
    rules_file = tmp_path / "dashboard-queries.yml"
    rules_file.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [tool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
