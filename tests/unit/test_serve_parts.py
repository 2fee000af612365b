"""The parts of `pubctl serve` that need no server: parameters, tokens, the loopback
rule, page bodies and ETags, the notifier long-polls wait on, and the page cache."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import rfc8785

from pubctl.serve.app import FeedServer, ServeConfig
from pubctl.serve.auth import TokenCheck, TokenError, is_loopback, load_tokens
from pubctl.serve.cache import PageCache
from pubctl.serve.listener import Head, Notifier
from pubctl.serve.page import Page
from pubctl.serve.params import BadParameter, FeedParams, parse_feed_query


def test_parameters() -> None:
    assert parse_feed_query(b"") == FeedParams()
    assert parse_feed_query(
        b"after=5&limit=10&kind=question&kind=topic&kind=topic&wait=2.5"
        b"&feed_id=99AD269C-A724-4D23-9146-173D487863F2"
    ) == FeedParams(5, 10, ("topic", "question"), 2.5, "99ad269c-a724-4d23-9146-173d487863f2")
    with pytest.raises(BadParameter) as caught:
        parse_feed_query(b"x" * 5000, size=10 * 2**20)
    assert caught.value.parameter == "query" and "10485760" in caught.value.error


def test_tokens(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# comment\n a \n\nb\n")
    assert load_tokens(tokens, "c, a,,") == ("a", "b", "c")
    assert load_tokens(None, None) == ()
    with pytest.raises(TokenError):
        load_tokens(None, "has space")
    check = TokenCheck(["a", "b"])
    assert check.allows("Bearer b") and check.allows("bearer a")
    assert not any(check.allows(h) for h in (None, "", "Bearer", "Bearer c", "Basic a", "a"))
    assert TokenCheck([]).allows(None)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.0.2.7", False), ("no-such-host.invalid", False)],
)  # fmt: skip
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def _item(rev: int, payload: str = "{}", deleted: bool = False) -> str:
    """An item as the feed query writes it (sql/queries.sql, feed_page_items)."""
    return (
        f'{{"rev":{rev},"kind":"topic","pub_id":"u{rev}","source_id":{rev},"payload":{payload},'
        f'"payload_hash":"h","schema_version":1,"deleted":{"true" if deleted else "false"}}}'
    )


def _of(feed_id: str, after: int, revs: list[int], has_more: bool, kinds: tuple[str, ...] = (),
        payload: str = "{}") -> Page:  # fmt: skip
    items = ",".join(_item(rev, payload, rev % 2 == 0) for rev in revs).encode()
    return Page(feed_id, after, items, len(revs), revs[-1] if revs else None, has_more, kinds)


def test_page_body_and_etag() -> None:
    """The items are written as the query wrote them (the canonical payload text
    included), byte for byte; the ETag is a function of the page's shape, not of its
    items' bytes."""
    canonical = rfc8785.dumps({"name": 'Anatomy ✓ "x" \\ \u2028', "topic_id": 1, "n": None})
    payload = canonical.decode()
    page = _of("f", 3, [7, 9], True, payload=payload)
    assert page.body == (
        b'{"items":[' + page.items + b'],"next_after":9,"has_more":true,"feed_id":"f"}'
    )
    body = json.loads(page.body)
    assert body["next_after"] == 9 and body["has_more"] is True and body["feed_id"] == "f"
    assert body["items"][0]["payload"] == json.loads(payload)
    assert b'"payload":' + canonical + b',"payload_hash"' in page.body
    assert (
        hashlib.sha256(canonical).hexdigest()
        == hashlib.sha256(
            page.body.split(b'"payload":', 1)[1].split(b',"payload_hash"', 1)[0]
        ).hexdigest()
    )
    spaced = '{"a": 1,  "b": [1, 2]}'
    assert b'"payload":' + spaced.encode() + b"," in _of("f", 0, [1], False, payload=spaced).body, (
        "never parsed nor re-encoded"
    )
    assert page.etag == _of("f", 3, [7, 9], True).etag
    for other in (_of("g", 3, [7, 9], True), _of("f", 3, [7, 9], False), _of("f", 4, [7, 9], True),
                  _of("f", 3, [7], True), _of("f", 3, [7, 9], True, ("topic",)),
                  _of("f", 3, [7, 10], True)):  # fmt: skip
        assert other.etag != page.etag
    page.settle()
    assert page.items == b"" and json.loads(page.body)["items"][1]["rev"] == 9
    empty = _of("f", 3, [], False)
    assert json.loads(empty.body) == {
        "items": [],
        "next_after": 3,
        "has_more": False,
        "feed_id": "f",
    }
    assert empty.etag != _of("f", 3, [], True).etag != _of("f", 4, [], False).etag


def test_notifier_never_loses_a_wake_up() -> None:
    async def scenario() -> None:
        heads = [Head("f", 5)]
        notifier = Notifier(lambda: _head_of(heads), interval=0.01)
        seen = notifier.generation
        notifier.hint()  # between a waiter's read and its wait
        assert await notifier.wait_past(seen, 1)
        assert notifier.head == Head("f", 5)
        assert not await notifier.wait_past(notifier.generation, 0.05)
        waiters = [
            asyncio.create_task(notifier.wait_past(notifier.generation, 5)) for _ in range(100)
        ]
        await asyncio.sleep(0)
        heads.append(Head("f", 6))
        notifier.hint()
        assert all(await asyncio.gather(*waiters))
        assert notifier.head == Head("f", 6)
        assert notifier.head.past("f", 5) and not notifier.head.past("f", 6)
        assert notifier.head.past("g", 6), "a replaced feed is news whatever its revs"
        notifier.close()
        assert notifier.closing
        await notifier.stop()

    asyncio.run(scenario())


async def _head_of(heads: list[Head], reads: list[float] | None = None) -> Head:
    if reads is not None:
        reads.append(asyncio.get_running_loop().time())
    await asyncio.sleep(0.001)
    return heads[-1]


def test_notifications_are_hints_rereads_are_throttled_and_nobody_wakes_for_nothing() -> None:
    """Hints (notifications, whoever sent them) cost at most one head re-read per
    interval, one always follows the last of them, and waiters wake only when the head
    read from the database changed."""

    async def scenario() -> None:
        reads: list[float] = []
        heads = [Head("f", 5)]
        notifier = Notifier(lambda: _head_of(heads, reads), interval=0.1)
        notifier.hint()
        await asyncio.sleep(0.05)
        assert len(reads) == 1 and notifier.head == Head("f", 5)
        generation = notifier.generation
        waiter = asyncio.create_task(notifier.wait_past(generation, 5))
        loop = asyncio.get_running_loop()
        start = loop.time()
        while loop.time() - start < 0.5:  # a burst: a hint every millisecond
            notifier.hint()
            await asyncio.sleep(0.001)
        burst = len(reads) - 1
        assert 1 <= burst <= 7, burst  # about one per 0.1 s, not one per hint
        # (The first re-read found a head where there was none: the next was not held.)
        assert all(b - a >= 0.099 for a, b in itertools.pairwise(reads[1:])), reads
        await asyncio.sleep(0.3)
        assert len(reads) - 1 <= burst + 1, "one re-read after the last hint at most"
        assert not waiter.done() and notifier.generation == generation, "nothing moved"
        heads.append(Head("f", 9))
        notifier.hint()
        assert await waiter
        assert notifier.head == Head("f", 9)
        await notifier.stop()

    asyncio.run(scenario())


def test_a_check_never_delays_the_next_notifications_reread() -> None:
    """The server's own checks (every few seconds, or a read that found another head)
    re-read the head outside the throttle: a publish notified right after one is read
    at once, not an interval later (which every long-poll would wait for)."""

    async def scenario() -> None:
        reads: list[float] = []
        heads = [Head("f", 5)]
        notifier = Notifier(lambda: _head_of(heads, reads), interval=0.5)
        loop = asyncio.get_running_loop()
        notifier.check()
        await asyncio.sleep(0.02)
        assert len(reads) == 1
        heads.append(Head("f", 6))
        hinted = loop.time()
        notifier.hint()
        await asyncio.sleep(0.05)
        assert len(reads) == 2 and reads[1] - hinted < 0.05, reads
        assert notifier.head == Head("f", 6)
        # After a re-read that found nothing new, hints are held back; a check meanwhile
        # is read at once, and the held hint still gets its own re-read later.
        notifier.hint()
        await asyncio.sleep(0.05)
        assert len(reads) == 3
        notifier.hint()
        notifier.check()
        await asyncio.sleep(0.05)
        assert len(reads) == 4
        await asyncio.sleep(0.6)
        assert len(reads) == 5
        await notifier.stop()

    asyncio.run(scenario())


def test_publishes_in_quick_succession_are_each_read_at_once() -> None:
    """Only re-reads that found nothing new hold the next hint back: a run of real
    publishes (each moves the head) wakes waiters at once every time."""

    async def scenario() -> None:
        reads: list[float] = []
        heads = [Head("f", 5)]
        notifier = Notifier(lambda: _head_of(heads, reads), interval=0.5)
        loop = asyncio.get_running_loop()
        for rev in range(6, 11):
            heads.append(Head("f", rev))
            generation, hinted = notifier.generation, loop.time()
            notifier.hint()
            assert await notifier.wait_past(generation, 1)
            assert loop.time() - hinted < 0.05, rev
        notifier.hint()  # nothing new: read, and the next hint waits the interval
        await asyncio.sleep(0.05)
        before = len(reads)
        notifier.hint()
        await asyncio.sleep(0.1)
        assert len(reads) == before, "held back after a re-read that found nothing"
        await notifier.stop()

    asyncio.run(scenario())


def test_a_failed_reread_is_tried_again() -> None:
    async def scenario() -> None:
        failures = [RuntimeError("down")]

        async def read() -> Head:
            if failures:
                raise failures.pop()
            return Head("f", 1)

        notifier = Notifier(read, interval=0.01, retry=0.05)
        notifier.hint()
        assert await notifier.wait_past(0, 2)
        assert notifier.head == Head("f", 1)
        await notifier.stop()

    asyncio.run(scenario())


def _page(after: int, size: int, kinds: tuple[str, ...] = ()) -> Page:
    return _of("f", after, list(range(after + 1, after + 1 + size)), False, kinds)


def test_page_cache_is_bounded_and_valid_for_one_token() -> None:
    one = len(_page(100, 10).body)
    cache = PageCache(max_bytes=3 * one, max_entries=5)
    for after in range(4):
        assert cache.put(after, "t", "t", _page(100 + after * 10, 10))
    assert len(cache) == 3 and cache.bytes == 3 * one, "bounded by bytes"
    assert cache.get(0, "t") is None and cache.get(1, "t") is not None
    cache.put(9, "t", "t", _page(900, 10))
    assert cache.get(2, "t") is None and cache.get(1, "t") is not None, "least recently used out"
    small = PageCache(max_bytes=10 * one, max_entries=2)
    for after in range(3):
        small.put(after, "t", "t", _page(after, 1))
    assert len(small) == 2 and small.get(0, "t") is None, "bounded by entries"
    assert not small.put(7, "old", "t", _page(7, 1)), "a read started under another token"
    assert small.get(1, "u") is None and len(small) == 0 and small.bytes == 0, "the token moved"
    assert not small.put(1, "u", "u", _page(0, 10_000)), "larger than the whole cache"


def _revs(page: Page) -> list[int]:
    return [item["rev"] for item in json.loads(page.body)["items"]]


def test_the_page_cache_follows_the_head() -> None:
    """Without the database: reads are faked, the head is moved by hand."""

    async def scenario() -> None:
        server = FeedServer(ServeConfig(url="postgresql://x@127.0.0.1:1/x"))
        database = {"last": 3}
        heads: list[Head] = []

        async def read_head() -> Head:
            heads.append(Head("f", database["last"]))
            return heads[-1]

        notifier = Notifier(read_head, interval=0.01)
        server.notifier = notifier
        listener = SimpleNamespace(connected=True)
        server.listener = listener  # type: ignore[assignment]
        gate = asyncio.Event()
        gate.set()
        reads: list[FeedParams] = []

        async def query_page(params: FeedParams) -> Page:
            reads.append(params)
            await gate.wait()
            newest = database["last"]
            size = min(max(newest - params.after, 0), params.limit)
            page = _page(params.after, size, params.kinds or ())
            page.has_more = newest - params.after > params.limit
            page.head_rev = newest
            server._check_state(page)
            return page

        server._query_page = query_page  # type: ignore[method-assign]
        notifier.observe(Head("f", 3))
        ask = FeedParams(after=1, limit=10)
        # Misses of one question at one head share one read; then it is kept.
        first = await asyncio.gather(*(server.read_feed(ask) for _ in range(5)))
        assert len(reads) == 1 and all(p is first[0] for p in first)
        assert await server.read_feed(ask) is first[0] and len(reads) == 1
        assert _revs(first[0]) == [2, 3]
        # The head moves while a read runs: that read is answered, never kept.
        gate.clear()
        moving = asyncio.create_task(server.read_feed(FeedParams(after=0)))
        await asyncio.sleep(0.01)
        database["last"] = 4
        notifier.observe(Head("f", 4))
        gate.set()
        assert _revs(await moving) == [1, 2, 3, 4]
        assert len(server.pages) == 0
        assert _revs(await server.read_feed(ask)) == [2, 3, 4]
        assert len(reads) == 3
        # The database is ahead of the head the server knows (a notification not heard
        # yet): the answer is not kept, nor anything kept before it, and the head is
        # read again at once.
        await server.read_feed(FeedParams(after=0, limit=1))
        assert len(server.pages) == 2
        database["last"] = 6
        ahead = await server.read_feed(FeedParams(after=4))
        assert _revs(ahead) == [5, 6] and len(server.pages) == 0
        assert await notifier.wait_past(notifier.generation - 1, 1)
        for _ in range(100):
            if notifier.head == Head("f", 6):
                break
            await asyncio.sleep(0.01)
        assert notifier.head == Head("f", 6)
        before = len(reads)
        assert _revs(await server.read_feed(ask)) == [2, 3, 4, 5, 6]
        await server.read_feed(ask)
        assert len(reads) == before + 1
        # A listener that is away: nothing is kept or answered from memory.
        listener.connected = False
        await server.read_feed(ask)
        await server.read_feed(ask)
        assert len(reads) == before + 3
        counted = server.metrics.render().decode()
        assert 'pubctl_serve_page_cache_lookups_total{result="bypass"} 2.0' in counted
        await notifier.stop()

    asyncio.run(scenario())


def test_the_etag_names_the_pubctl_revision() -> None:
    """A migration may rewrite the stored bytes of the same revs in the same feed: pages
    read at two revisions never share a tag."""
    at_0103, at_0104 = _page(0, 3), _page(0, 3)
    at_0103.revision, at_0104.revision = "0103", "0104"
    assert at_0103.etag != at_0104.etag
    again = _page(0, 3)
    again.revision = "0104"
    assert again.etag == at_0104.etag
