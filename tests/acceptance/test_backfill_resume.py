"""`pubctl backfill --resume` goes on with the page size of the run it resumes, unless a
page size is given anew."""

from __future__ import annotations

import json

from support.cli import run_subprocess
from support.db import Database


def _backfill(db: Database, *args: str) -> list[dict[str, object]]:
    result = run_subprocess("--database-url", db.url, "backfill", "topics", "--json", *args)
    assert result.code == 0, result.err
    return json.loads(result.out)  # type: ignore[no-any-return]


def test_resume_keeps_the_batch_size_of_the_run_it_resumes(pub_db: Database) -> None:
    with pub_db.connect() as conn:
        conn.execute(
            "ALTER TABLE study_topic DISABLE TRIGGER USER;"
            " INSERT INTO study_topic (id, name) SELECT g, 't' FROM generate_series(1, 1000) g;"
            " ALTER TABLE study_topic ENABLE TRIGGER USER"
        )
    first = _backfill(pub_db, "--batch-size", "100", "--max-rows", "250")
    assert first[0]["rows"] == 250
    resumed = _backfill(pub_db, "--resume")
    assert resumed[0]["rows"] == 750 and resumed[0]["state"] == "finished"
    assert resumed[0]["pages"] == 8, resumed  # pages of 100, not one page of 5,000

    again = _backfill(pub_db, "--batch-size", "100", "--max-rows", "100")
    assert again[0]["rows"] == 100
    given = _backfill(pub_db, "--resume", "--batch-size", "300")
    # 300 rows a page: three full pages, and the empty one that finds the end.
    assert given[0]["rows"] == 900 and given[0]["pages"] == 4, given
