"""`/healthz` and the feed's 503s tell apart a database that does not answer, a missing
privilege (named), an unmigrated database and another revision, with a real serve
process whose role loses its grants, or whose database loses pubctl, while it runs."""

from __future__ import annotations

import httpx

from support.cli import run_subprocess
from support.db import Database
from support.serve import READER, Served, reader_url, wait_until


def _health(server: Served) -> httpx.Response:
    return httpx.get(server.url("/healthz"), timeout=5)


def test_a_revoked_grant_is_named_by_healthz_and_the_feed(pub_db: Database) -> None:
    with Served(reader_url(pub_db)) as server:
        assert _health(server).status_code == 200
        with pub_db.connect() as conn:
            conn.execute(f"REVOKE EXECUTE ON FUNCTION pub.health() FROM {READER}")
            conn.execute(
                f"REVOKE EXECUTE ON FUNCTION pub.feed(bigint, integer, text[]) FROM {READER}"
            )
        answer = wait_until(lambda: (r := _health(server)).status_code == 503 and r)
        body = answer.json()
        assert body["status"] == "missing_privilege"
        assert "permission denied for function health" in body["reason"]
        assert "EXECUTE on pub.feed, pub.feed_id and pub.health" in body["reason"]
        feed = httpx.get(server.url("/published/feed"), timeout=5)
        assert feed.status_code == 503 and "Retry-After" in feed.headers
        assert "missing privilege: permission denied for function feed" in feed.json()["error"]


def test_an_unmigrated_database_is_told_apart(pub_db: Database) -> None:
    with Served(reader_url(pub_db)) as server:
        assert _health(server).status_code == 200
        down = run_subprocess(
            "--database-url", pub_db.url, "migrate", "--revision", "base", "--drop-published-state"
        )
        assert down.code == 0, down.err
        answer = wait_until(lambda: (r := _health(server)).status_code == 503 and r)
        body = answer.json()
        assert body["status"] == "not_migrated", body
        assert "run `pubctl migrate`" in body["reason"]
        assert run_subprocess("--database-url", pub_db.url, "migrate").code == 0
