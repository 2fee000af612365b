"""`pubctl status` works against an older revision this pubctl knows (a database
downgraded for a rollback), saying so; other commands still refuse it."""

from __future__ import annotations

import json

import pytest

from pubctl import revision

from support.cli import run_subprocess
from support.db import Database


@pytest.mark.parametrize("older", revision.REVISIONS[:-1])
def test_status_reports_an_older_revision(pub_db: Database, older: str) -> None:
    down = run_subprocess("--database-url", pub_db.url, "migrate", "--revision", older)
    assert down.code == 0, down.err
    result = run_subprocess("--database-url", pub_db.url, "status", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["revision"] == older and report["revision_behind"] is True
    assert report["head_revision"] == revision.HEAD
    human = run_subprocess("--database-url", pub_db.url, "status")
    assert human.code == 0
    assert f"this pubctl's head is {revision.HEAD}" in human.out
    refused = run_subprocess("--database-url", pub_db.url, "apply")
    assert refused.code == 3 and "run `pubctl migrate`" in refused.err
