"""The README's worked example is the demo's real output: every line of it that is not
abridged (``...``) appears in the output of `pubctl demo`, with ports, uuids and times
left aside."""

from __future__ import annotations

import re
from pathlib import Path

from support.cli import run_subprocess

README = Path(__file__).resolve().parents[2] / "README.md"
VARIABLE = [
    (re.compile(r"127\.0\.0\.1:\d+"), "HOST:PORT"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "UUID"),
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\+00:00"), "TIME"),
    (re.compile(r"\(\d+\.\ds\)"), "(SECONDS)"),
]


def _normal(line: str) -> str:
    for pattern, placeholder in VARIABLE:
        line = pattern.sub(placeholder, line)
    return " ".join(line.split())


def _example() -> list[str]:
    text = README.read_text()
    start = text.index("## Worked example")
    block = text[text.index("```", start) + 3 :]
    return block[: block.index("```")].strip("\n").splitlines()


def test_every_line_of_the_readme_example_is_real(tmp_path: Path) -> None:
    result = run_subprocess("demo", timeout=180)
    assert result.code == 0, result.err
    real = {_normal(line) for line in (result.out + result.err).splitlines()}
    lines = [line for line in _example() if line.strip() and "..." not in line]
    assert len(lines) > 20
    missing = [line for line in lines if _normal(line) not in real]
    assert missing == [], "README lines the demo does not print"
