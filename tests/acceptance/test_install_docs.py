"""The README's Install block and the documents around it say what is true: the block
follows operations.md's cutover order and works as written against a real database
with the URL set once; the HTTP viewer example's dependency is installable by a named
extra; reliability.md names only status fields that exist."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

from support.cli import pubctl_executable
from support.db import Database

ROOT = Path(__file__).resolve().parents[2]
STEPS = ("migrate", "worker", "backfill", "verify")


def _install_block() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Install", 1)[1]
    block = section.split("```", 2)[1]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def _cutover_order() -> list[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Cutover, in this order", 1)[1].split("\n## ", 1)[0]
    firsts: dict[str, int] = {}
    for step in STEPS:
        found = re.search(rf"`pubctl {step}\b", section)
        assert found, step
        firsts[step] = found.start()
    return sorted(STEPS, key=firsts.__getitem__)


def test_install_block_follows_the_cutover_order_and_sets_the_url_once() -> None:
    lines = _install_block()
    commands = [shlex.split(line) for line in lines if line.startswith("pubctl")]
    assert [c[1] for c in commands] == _cutover_order()
    assert not any("--database-url" in c for c in commands), lines
    assert any(line.startswith("export PUBCTL_DATABASE_URL=") for line in lines), lines


def test_install_block_runs_as_written(app_db: Database) -> None:
    with app_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    env["PUBCTL_DATABASE_URL"] = app_db.url
    worker: subprocess.Popen[str] | None = None
    try:
        for line in _install_block():
            if not line.startswith("pubctl"):
                continue
            args = [pubctl_executable(), *shlex.split(line.rstrip("&").strip())[1:]]
            if line.endswith("&"):
                worker = subprocess.Popen(args, env=env, text=True, stderr=subprocess.PIPE)
                time.sleep(1.0)
                assert worker.poll() is None
                continue
            done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, (line, done.stdout, done.stderr)
        deadline = time.monotonic() + 20
        while True:
            with app_db.connect() as conn:
                row = conn.execute("SELECT count(*) FROM pub.content").fetchone()
            if row == (1,) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert row == (1,), "the worker applied the backfill"
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            _out, err = worker.communicate(timeout=15)
            assert worker.returncode == 0, err


def test_the_http_viewer_dependency_comes_with_a_named_extra() -> None:
    viewer = (ROOT / "docs" / "viewer.md").read_text()
    found = re.search(r"pip install '\.\[(\w+)\]'", viewer)
    assert found, "docs/viewer.md names the extra that installs httpx"
    pyproject = (ROOT / "pyproject.toml").read_text()
    extras = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extra = re.search(rf"^{found.group(1)} = \[(.*)\]$", extras, re.M)
    assert extra, f"no extra {found.group(1)!r} in pyproject.toml"
    assert '"httpx' in extra.group(1)
    assert "import httpx" in (ROOT / "docs" / "examples" / "http_viewer.py").read_text()


def test_reliability_names_only_status_fields_that_exist(pub_db: Database) -> None:
    done = subprocess.run(
        [pubctl_executable(), "--database-url", pub_db.url, "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    fields = set(json.loads(done.stdout))
    text = (ROOT / "docs" / "reliability.md").read_text()
    named = set(re.findall(r"`([a-z_]+_age_s)`", text))
    assert named, "reliability.md names the age fields of status"
    assert named <= fields, named - fields
