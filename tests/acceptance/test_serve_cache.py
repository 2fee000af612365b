"""`pubctl serve` answers hot pages from memory and says how others may cache them.

A page asked without `wait` is kept while the head (feed id and last rev) the server
knows stands still; the server's own metrics count the feed queries, so "answered
without touching the database" is measured, not assumed. Every kind of answer carries
the Cache-Control the docs promise, with and without `--cache-max-age`.

What no notification tells is still seen: a page read from a newer state than the head
the server knows is never served beside pages kept for that head, a change of the feed
identity or of the pubctl revision drops kept pages within seconds, and a database at
another revision answers 503."""

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
        # A 304 carries what the 200 it validates would (RFC 9110, 15.4.5).
        "304": page,
        "304 long-poll": "no-store",
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


def _walk(client: httpx.Client, limit: int) -> list[dict[str, object]]:
    """A viewer reading the whole feed from 0, page by page."""
    items: list[dict[str, object]] = []
    after, more = 0, True
    while more:
        page = client.get("/published/feed", params={"after": after, "limit": limit}).json()
        items += page["items"]
        after, more = page["next_after"], page["has_more"]
    return items


def test_a_page_of_a_newer_state_is_never_served_beside_kept_pages(
    served: Served, pub_db: Database
) -> None:
    """Topic 2 leaves rev 2 for rev 31 and the server has not heard yet (a notification
    on its way, a standby's replay between two polls: here, a change made without one).
    A viewer's first page is read fresh, [1, 3, 4], and holds no rev beyond the known
    head; the pages after it were kept for the old state, [5, 6, 7] ... [29, 30] with
    has_more false: served together, the viewer would never see topic 2."""
    with httpx.Client(base_url=served.base, headers=AUTH, timeout=10) as client:
        for after in range(4, 30, 3):  # other viewers' pages, kept
            assert client.get("/published/feed", params={"after": after, "limit": 3}).is_success
        with pub_db.connect() as conn:
            conn.execute("UPDATE pub.content SET rev = 31 WHERE kind = 'topic' AND source_id = 2")
            conn.execute("UPDATE pub.rev_counter SET last_rev = 31")
        items = _walk(client, 3)
    assert [i["rev"] for i in items][:3] == [1, 3, 4], "the first page was of the new state"
    assert sorted(i["source_id"] for i in items) == list(range(1, 31)), "no item missing"
    assert items[-1]["rev"] == 31


def test_a_new_feed_identity_drops_kept_pages_without_a_notification(
    served: Served, pub_db: Database
) -> None:
    """The published state dropped and created again sends no notification; the head,
    read every few seconds, tells it, and kept pages of the old feed go (409)."""
    with httpx.Client(base_url=served.base, headers=AUTH, timeout=10) as client:
        old = client.get("/published/feed", params={"limit": 5}).json()["feed_id"]
        with pub_db.connect() as conn:
            conn.execute("UPDATE pub.rev_counter SET feed_id = gen_random_uuid()")

        def refused() -> bool:
            answer = client.get("/published/feed", params={"limit": 5, "feed_id": old})
            return answer.status_code == 409

        assert wait_until(refused, timeout=6), "a kept page of the old feed kept being served"


def test_another_revision_answers_503_and_never_the_same_etag(
    served: Served, pub_db: Database
) -> None:
    """A downgrade rewrites the stored payload bytes under the same revs and feed id, and
    tells nobody: the server sees the revision within seconds, answers 503 as /healthz
    does, and a page of another revision never has the tag of this one's."""
    from pubctl import migrate

    with httpx.Client(base_url=served.base, headers=AUTH, timeout=10) as client:
        first = client.get("/published/feed", params={"limit": 5})
        assert first.status_code == 200
        migrate.migrate(pub_db.url, "0103")
        try:

            def unavailable() -> httpx.Response | None:
                answer = client.get("/published/feed", params={"limit": 5})
                return answer if answer.status_code == 503 else None

            answer = wait_until(unavailable, timeout=6)
            assert answer is not None, "pages of the former revision kept being served"
            told = answer.json()
            assert told["status"] == "wrong_revision" and "0103" in told["error"]
            assert answer.headers["retry-after"] and answer.headers["cache-control"] == "no-store"
            health = client.get("/healthz").json()
            assert health["status"] == "wrong_revision" and health["reason"] == told["error"]
            fresh = client.get("/published/feed", params={"limit": 6})
            assert fresh.status_code == 503, "a page read now says so too"
        finally:
            migrate.migrate(pub_db.url)
        back = wait_until(
            lambda: (a := client.get("/published/feed", params={"limit": 5})).is_success and a,
            timeout=6,
        )
        assert back and back.content == first.content, "the same bytes again"


def test_a_page_stops_before_its_payloads_pass_the_byte_bound(pub_db: Database) -> None:
    """Serve's pages are bounded by bytes as `pubctl feed`'s are (a page's items are one
    text in PostgreSQL, which cannot pass 1 GB): fewer items than the limit, has_more,
    and a viewer asking on reads everything. In process, with a bound of 700 KB."""
    import asyncio

    from pubctl import migrate
    from pubctl.serve.app import FeedServer, ServeConfig
    from pubctl.serve.params import FeedParams

    big = '{"b":"' + "x" * 300_000 + '"}'
    with pub_db.connect() as conn:
        for rev in range(1, 6):
            conn.execute(
                "INSERT INTO pub.content (kind, source_id, rev, payload, payload_hash,"
                " schema_version, deleted) VALUES ('topic', %s, %s, %s::json, 'h', 1, false)",
                (rev, rev, big),
            )
        conn.execute("UPDATE pub.rev_counter SET last_rev = 5")
    config = ServeConfig(
        url=reader_url(pub_db), head_revision=migrate.head_revision(), page_max_bytes=700_000
    )

    async def scenario() -> list[tuple[int, bool]]:
        server = FeedServer(config)
        await server.start()
        try:
            seen: list[tuple[int, bool]] = []
            after, more = 0, True
            while more:
                page = await server.read_feed(FeedParams(after=after, limit=1000))
                seen.append((page.count, page.has_more))
                after, more = page.next_after, page.has_more
            return seen
        finally:
            await server.stop()

    assert asyncio.run(scenario()) == [(2, True), (2, True), (1, False)]
