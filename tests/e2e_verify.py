"""The last step of `make test`: the whole flow through the real CLI, ending with
`pubctl verify`, whose exit status is this script's.

Rows exist before pubctl is installed, then pubctl is migrated, live writes happen,
a backfill and an apply run, and verify must find the published state equal to the
source. Uses a throwaway server, or a new database on $PUBCTL_TEST_DATABASE_URL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
from psycopg import conninfo

from pubctl.throwaway import ThrowawayPostgres

PUBCTL = str(Path(sys.executable).with_name("pubctl"))
DBNAME = "pubctl_e2e_verify"

BEFORE_INSTALL = """
INSERT INTO study_topic (id, name, exam_round_size)
SELECT g, 'Topic ' || g, 10 FROM generate_series(1, 20) g;
INSERT INTO study_question (id, topic_id, exam_name, exam_round, number, body, choices, answer,
                            explanation, explanation_status, deleted_at)
SELECT g, 1 + g % 20, 'Exam ' || (g % 3), g % 4, g % 10, 'Question ' || g || ' ✓ "quoted" \\ x',
       '["alpha","beta","gamma"]', g % 3, 'Because ' || g,
       CASE WHEN g % 2 = 0 THEN 'ready' ELSE 'draft' END,
       CASE WHEN g % 11 = 0 THEN now() END
FROM generate_series(1, 5000) g;
"""

LIVE_WRITES = """
UPDATE study_question SET body = body || ' (edited)' WHERE id % 7 = 0;
UPDATE study_question SET explanation_status = 'review' WHERE id % 13 = 0;
UPDATE study_question SET deleted_at = NULL WHERE id = 11;
DELETE FROM study_question WHERE id BETWEEN 4990 AND 5000;
UPDATE study_topic SET deleted_at = now() WHERE id = 20;
INSERT INTO study_question (topic_id, body, choices, explanation_status)
SELECT 1, 'new ' || g, '[]', 'ready' FROM generate_series(1, 100) g;
"""


def pubctl(url: str, *args: str) -> int:
    print(f"$ pubctl {' '.join(args)}", flush=True)
    return subprocess.run([PUBCTL, "--database-url", url, *args]).returncode


def flow(url: str) -> int:
    steps: list[tuple[str, ...]] = [("init-sample-schema",)]
    if pubctl(url, *steps[0]) != 0:
        return 3
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(BEFORE_INSTALL.encode())
        # The sample schema's identity must not hand out the ids used above.
        conn.execute("SELECT setval(pg_get_serial_sequence('study_question', 'id'), 10000)")
    for args in (("migrate",),):
        if pubctl(url, *args) != 0:
            return 3
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(LIVE_WRITES.encode())
    for args in (("backfill", "all"), ("apply",)):
        if pubctl(url, *args) != 0:
            return 3
    return pubctl(url, "verify", "--fail-on", "pending")


def main() -> int:
    existing = os.environ.get("PUBCTL_TEST_DATABASE_URL")
    if existing:
        with psycopg.connect(existing, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{DBNAME}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{DBNAME}"')
        params = conninfo.conninfo_to_dict(existing)
        params["dbname"] = DBNAME
        try:
            return flow(conninfo.make_conninfo(**params))
        finally:
            with psycopg.connect(existing, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{DBNAME}" WITH (FORCE)')
    with ThrowawayPostgres() as pg:
        return flow(pg.url)


if __name__ == "__main__":
    sys.exit(main())
