"""`pubctl serve` answers hot pages from memory and says how others may cache them.

A page asked without `wait` is kept while the head (feed id and last rev) the server
knows stands still; the server's own metrics count the feed queries, so "answered
without touching the database" is measured, not assumed. Every kind of answer carries
the Cache-Control the docs promise, with and without `--cache-max-age`."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.db import Database
from support.serve import Served, publish, reader_url, wait_until

TOKEN = "cache-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FEED_QUERIES = 'pubctl_serve_database_queries_total{purpose="feed"}'
HITS = 'pubctl_serve_page_cache_lookups_total{result="hit"}'
MISSES = 'pubctl_serve_page_cache_lookups_total{result="miss"}'
TOPICS = "INSERT INTO study_topic (id, name) SELECT g, 'Topic ' || g FROM generate_series(1, 30) g"


def samples(served: Served) -> dict[str, float]:
    text = httpx.get(served.url("/metrics"), headers=AUTH, timeout=10).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            found[series] = float(value)
    return found


def last_rev(db: Database) -> int:
    with db.connect() as conn:
        row = conn.execute("SELECT last_rev FROM pub.rev_counter").fetchone()
    assert row is not None
    return int(row[0])


def head_known(served: Served, db: Database) -> None:
    """Wait until the server has read the head the database has now."""
    rev = last_rev(db)
    assert wait_until(lambda: samples(served).get("pubctl_serve_last_rev") == rev, timeout=10)


@pytest.fixture
def served(pub_db: Database, tmp_path: Path) -> Iterator[Served]:
    publish(pub_db, TOPICS)
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    with Served(reader_url(pub_db), "--token-file", str(tokens)) as server:
        head_known(server, pub_db)
        yield server


def test_a_hot_page_and_its_304_are_answered_without_a_query(
    served: Served, pub_db: Database
) -> None:
    with httpx.Client(base_url=served.base, headers=AUTH, timeout=10) as client:
        first = client.get("/published/feed", params={"after": 5, "limit": 10})
        assert first.status_code == 200
        etag = first.headers["etag"]
        before = samples(served)
        for _ in range(20):
            again = client.get("/published/feed", params={"after": 5, "limit": 10})
            assert again.content == first.content and again.headers["etag"] == etag
            same = client.get(
                "/published/feed", params={"after": 5, "limit": 10}, headers={"If-None-Match": etag}
            )
            assert same.status_code == 304 and same.headers["etag"] == etag
        after = samples(served)
    assert after[FEED_QUERIES] == before[FEED_QUERIES], "no query for a hot page or its 304"
    assert after[HITS] - before[HITS] == 40
    assert after[MISSES] == before[MISSES]
    assert after["pubctl_serve_page_cache_entries"] >= 1
    assert after["pubctl_serve_page_cache_bytes"] >= len(first.content)


def test_a_publish_moves_the_head_and_the_page_with_it(served: Served, pub_db: Database) -> None:
    with httpx.Client(base_url=served.base, headers=AUTH, timeout=10) as client:
        old = client.get("/published/feed", params={"kind": "topic"})
        [renamed] = [i for i in old.json()["items"] if i["source_id"] == 3]
        publish(pub_db, "UPDATE study_topic SET name = 'renamed' WHERE id = 3")

        def fresh() -> httpx.Response | None:
            answer = client.get("/published/feed", params={"kind": "topic"})
            return answer if answer.content != old.content else None

        new = wait_until(fresh, timeout=5)
        assert new is not None, "the page followed the publish"
        assert new.headers["etag"] != old.headers["etag"]
        items = new.json()["items"]
        [moved] = [i for i in items if i["source_id"] == 3]
        assert moved["payload"]["name"] == "renamed" and moved["rev"] > renamed["rev"]
        assert moved["rev"] == items[-1]["rev"] == last_rev(pub_db)
        before = samples(served)[FEED_QUERIES]
        for _ in range(10):
            assert client.get("/published/feed", params={"kind": "topic"}).content == new.content
        assert samples(served)[FEED_QUERIES] == before, "hot again at the new head"


def test_a_restamp_moves_the_page(served: Served, pub_db: Database) -> None:
    """The same payload republished under a newer schema_version is a change a reader
    sees: a new rev, so a new head, so the kept page goes."""
    with httpx.Client(base_url=served.base, headers=AUTH, timeout=10) as client:
        old = client.get("/published/feed", params={"after": 0, "limit": 5})
        assert [i["schema_version"] for i in old.json()["items"]] == [1] * 5
        with pub_db.connect() as conn:
            conn.execute(
                "INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version,"
                " deleted) SELECT kind, source_id, payload, payload_hash, 2, deleted"
                " FROM pub.content WHERE source_id = 2"
            )
            conn.execute("SELECT pub.apply_batch(100)")

        def fresh() -> httpx.Response | None:
            answer = client.get("/published/feed", params={"after": 0, "limit": 5})
            return answer if answer.content != old.content else None

        new = wait_until(fresh, timeout=5)
        assert new is not None, "the restamp moved the page"
        assert new.headers["etag"] != old.headers["etag"]
        assert 2 not in [i["source_id"] for i in new.json()["items"]], "it left its old rev"
        tail = client.get("/published/feed", params={"after": 30}).json()["items"]
        assert [(i["source_id"], i["schema_version"]) for i in tail] == [(2, 2)]


def test_payload_bytes_are_the_stored_bytes_whose_hash_is_payload_hash(served: Served) -> None:
    raw = httpx.get(served.url("/published/feed"), headers=AUTH, timeout=10).content
    count = 0
    start = 0
    while (i := raw.find(b',"payload":', start)) >= 0:
        j = raw.index(b',"payload_hash":"', i)
        payload, digest = raw[i + 11 : j], raw[j + 17 : j + 17 + 64].decode()
        assert hashlib.sha256(payload).hexdigest() == digest
        count += 1
        start = j
    assert count == 30


def test_a_409_is_never_kept_as_a_page(served: Served) -> None:
    other = "00000000-0000-4000-8000-000000000000"
    with httpx.Client(base_url=served.base, headers=AUTH, timeout=10) as client:
        for _ in range(3):  # a miss, then hits: the feed id is checked on each answer
            wrong = client.get("/published/feed", params={"feed_id": other})
            assert wrong.status_code == 409 and wrong.headers["cache-control"] == "no-store"
            current = wrong.json()["feed_id"]
            right = client.get("/published/feed", params={"feed_id": current})
            assert right.status_code == 200 and right.json()["feed_id"] == current
            plain = client.get("/published/feed")
            assert plain.status_code == 200 and plain.content == right.content


def _lock_and_overflow(db: Database, served: Served) -> httpx.Response:
    """A 503: the pool's one connection stuck behind a lock, another question times out."""
    stuck: list[httpx.Response] = []
    with db.connect(autocommit=False) as locker:
        locker.execute("LOCK TABLE pub.content IN ACCESS EXCLUSIVE MODE")
        thread = threading.Thread(
            target=lambda: stuck.append(
                httpx.get(served.url("/published/feed?after=1"), headers=AUTH, timeout=30)
            )
        )
        thread.start()
        time.sleep(0.3)
        busy = httpx.get(served.url("/published/feed?after=2"), headers=AUTH, timeout=30)
        locker.rollback()
    thread.join(10)
    assert stuck and stuck[0].status_code == 200
    return busy


@pytest.mark.parametrize("max_age", [0, 7])
def test_cache_control_of_every_answer(pub_db: Database, tmp_path: Path, max_age: int) -> None:
    publish(pub_db, TOPICS)
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    args = ["--token-file", str(tokens), "--pool-size", "1", "--pool-timeout", "0.2"]
    if max_age:
        args += ["--cache-max-age", str(max_age)]
    with Served(reader_url(pub_db), *args) as served:
        head_known(served, pub_db)
        page = "public, max-age=7" if max_age else "no-cache"
        with httpx.Client(base_url=served.base, headers=AUTH, timeout=30) as client:
            answers = {
                "200": client.get("/published/feed"),
                "200 wait=0": client.get("/published/feed", params={"wait": 0, "limit": 3}),
                "200 HEAD": client.head("/published/feed"),
                "200 long-poll": client.get("/published/feed", params={"after": 3, "wait": 1}),
                "200 long-poll held": client.get(
                    "/published/feed", params={"after": 30, "wait": 0.2}
                ),
                "400": client.get("/published/feed", params={"limit": 0}),
                "401": httpx.get(served.url("/published/feed"), timeout=10),
                "404": client.get("/published/feed/"),
                "405": client.post("/published/feed"),
                "409": client.get(
                    "/published/feed", params={"feed_id": "00000000-0000-4000-8000-000000000000"}
                ),
                "/healthz": client.get("/healthz"),
                "/metrics": client.get("/metrics"),
            }
            etag = answers["200"].headers["etag"]
            answers["304"] = client.get("/published/feed", headers={"If-None-Match": etag})
            answers["304 long-poll"] = client.get(
                "/published/feed", params={"wait": 1}, headers={"If-None-Match": etag}
            )
        answers["503"] = _lock_and_overflow(pub_db, served)
    expected = {
        "200": page,
        "200 wait=0": page,
        "200 HEAD": page,
        "200 long-poll": "no-store",
        "200 long-poll held": "no-store",
    }
    for name, answer in answers.items():
        status = name.split()[0]
        if status.isdigit():
            assert answer.status_code == int(status), (name, answer.text)
        else:
            assert answer.status_code == 200, (name, answer.text)
        assert answer.headers["cache-control"] == expected.get(name, "no-store"), name
        if not max_age:
            assert "public" not in answer.headers["cache-control"]
    assert "Vary" not in answers["200"].headers
