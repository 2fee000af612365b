"""`pubctl serve` against its own OpenAPI description, with Schemathesis: a real server
process with a token, a role with only the feed reader's grants, published items.

Every answer must match the description (status, headers, body), no answer is a 5xx,
requests the description refuses get a 4xx and those it allows are accepted, the 401
paths are tried without and with a wrong token, and other methods get 405 with
`Allow`. Generated `wait` values are scaled down (a valid one stays valid) so that a
long-poll holds for milliseconds. The examples are the same on every run unless
PUBCTL_OPENAPI_EXAMPLES sets how many per operation: then they are random (`make soak`
runs a thousand).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from pubctl.serve import openapi

from support.db import Database, ServerInfo
from support.serve import Served, reader_url

TOKEN = "openapi-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = int(os.environ.get("PUBCTL_OPENAPI_EXAMPLES", "30"))
FIXED_EXAMPLES = "PUBCTL_OPENAPI_EXAMPLES" not in os.environ
# A generated wait of W seconds holds for W / WAIT_SCALE (at most 0.06 s).
WAIT_SCALE = 1000
NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?([eE]-?[0-9]+)?")
DOCS_COPY = Path(__file__).parents[2] / "docs" / "openapi.json"

DATA = """
INSERT INTO study_topic (id, name, exam_round_size) SELECT g, 'Topic ' || g, g FROM generate_series(1, 5) g;
INSERT INTO study_question (id, topic_id, exam_name, exam_round, number, body, choices, answer, explanation, explanation_status)
SELECT g, 1 + g % 5, 'Exam ' || g % 3, g % 4, g, 'Body ' || g || ' é "q"', '["a","b"]', g % 2, 'Why ' || g,
       CASE WHEN g % 3 = 0 THEN 'draft' ELSE 'ready' END
FROM generate_series(1, 20) g;
SELECT pub.apply_batch(1000);
UPDATE study_question SET deleted_at = now() WHERE id % 7 = 0;
SELECT pub.apply_batch(1000);
"""


@pytest.fixture(scope="module")
def served(pub_template: Any, pg_server: ServerInfo) -> Iterator[Served]:
    """One server for every operation, on a database cloned from the migrated template."""
    name = "pubctl_test_openapi"
    admin_url = pg_server.url(pg_server.maintenance_dbname)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pub_template.template_dbname}"')
    db = Database(url=pg_server.url(name), server=pg_server)
    with db.connect() as conn:
        conn.execute(DATA.encode())
    with Served(reader_url(db), env={"PUBCTL_FEED_TOKENS": TOKEN}) as server:
        yield server
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# The description the server serves (the docs test below holds them equal), with the
# server's token for Schemathesis to send, and to leave out or spoil for the 401 paths.
schema = schemathesis.openapi.from_dict(
    openapi.document(),
    config=schemathesis.Config.from_dict(
        {"auth": {"openapi": {"bearer": {"bearer": TOKEN}}}, "warnings": False}
    ),
)


def _short_wait(case: schemathesis.Case) -> None:
    """A valid `wait` (a number from 0 to 60, or such a number's text) held for a
    thousandth of it; anything else is left as it is, to be refused."""
    query = case.query
    if not isinstance(query, dict):
        return
    wait = query.get("wait")
    if isinstance(wait, str) and NUMBER.fullmatch(wait):
        wait = float(wait)
    if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 < wait <= 60:
        query["wait"] = wait / WAIT_SCALE


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=FIXED_EXAMPLES,
)
def test_the_server_answers_as_its_description_says(
    case: schemathesis.Case, served: Served
) -> None:
    _short_wait(case)
    case.call_and_validate(base_url=served.base, timeout=10)


def test_503_answers_match_the_description(pub_db: Database) -> None:
    """The answers a healthy database never gives: a reader that lost its rights, a
    database at another revision."""
    with pub_db.connect() as conn:
        conn.execute(DATA.encode())
    with Served(reader_url(pub_db), env={"PUBCTL_FEED_TOKENS": TOKEN}) as server:
        with pub_db.connect() as conn:
            conn.execute(
                "REVOKE EXECUTE ON FUNCTION pub.feed(bigint, integer, text[]), pub.health()"
                " FROM feed_reader"
            )
        feed, health = schema["/published/feed"], schema["/healthz"]["GET"]
        # Every check but "no 5xx": these 503s are the point.
        but_5xx = {
            "base_url": server.base,
            "timeout": 10,
            "excluded_checks": [not_a_server_error],
        }
        for method in ("GET", "HEAD"):
            case = feed[method].Case(query={"after": 1, "limit": 3}, headers=AUTH)
            answer = case.call_and_validate(**but_5xx)
            assert answer.status_code == 503 and answer.headers["retry-after"]
        answer = health.Case().call_and_validate(**but_5xx)
        assert answer.status_code == 503 and answer.json()["status"] == "missing_privilege"
        with pub_db.connect() as conn:
            conn.execute("GRANT EXECUTE ON FUNCTION pub.health() TO feed_reader")
            conn.execute("UPDATE pub.alembic_version SET version_num = '9999'")
        answer = health.Case().call_and_validate(**but_5xx)
        assert answer.status_code == 503 and answer.json()["status"] == "wrong_revision"
        assert "Traceback" not in server.log


def test_the_docs_copy_is_what_the_server_serves(served: Served) -> None:
    with httpx.Client(base_url=served.base, timeout=30) as anonymous:
        answer = anonymous.get("/openapi.json")
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        assert anonymous.head("/openapi.json").status_code == 200
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            refused = anonymous.request(method, "/openapi.json")
            assert refused.status_code == 405, method
            assert {m.strip() for m in refused.headers["allow"].split(",")} == {"GET", "HEAD"}
    assert answer.content == openapi.encoded()
    assert DOCS_COPY.read_bytes() == answer.content, (
        "docs/openapi.json is stale: python -m pubctl.serve.openapi > docs/openapi.json"
    )
    assert json.loads(answer.content)["openapi"].startswith("3.")
