"""The parts of `pubctl serve` that need no server: parameters, tokens, the loopback
rule, page bodies and ETags, and the notifier long-polls wait on."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from pathlib import Path

import pytest
import rfc8785

from pubctl.serve.auth import TokenCheck, TokenError, is_loopback, load_tokens
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


def test_page_body_and_etag() -> None:
    payload = '{"name": "Anatomy ✓ \\"x\\" \\\\", "topic_id": 1, "exam_round_size": null}'
    rows = [
        (7, "topic", "u-1", 1, payload, "h", 1, False),
        (9, "topic", "u-2", 2, "{}", "t", 1, True),
    ]
    page = Page("f", 3, rows, True)
    body = json.loads(page.body)
    assert body["next_after"] == 9 and body["has_more"] is True and body["feed_id"] == "f"
    assert body["items"][0]["payload"] == json.loads(payload)
    canonical = rfc8785.dumps(json.loads(payload))
    assert b'"payload":' + canonical + b',"payload_hash"' in page.body
    assert (
        hashlib.sha256(canonical).hexdigest()
        == hashlib.sha256(
            page.body.split(b'"payload":', 1)[1].split(b',"payload_hash"', 1)[0]
        ).hexdigest()
    )
    assert page.etag == Page("f", 3, list(rows), True).etag
    for other in (Page("g", 3, rows, True), Page("f", 3, rows, False), Page("f", 4, rows, True),
                  Page("f", 3, [rows[0], (*rows[1][:6], 2, True)], True)):  # fmt: skip
        assert other.etag != page.etag
    empty = Page("f", 3, [], False)
    assert json.loads(empty.body) == {
        "items": [],
        "next_after": 3,
        "has_more": False,
        "feed_id": "f",
    }


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
        assert all(b - a >= 0.099 for a, b in itertools.pairwise(reads)), reads
        await asyncio.sleep(0.3)
        assert len(reads) - 1 <= burst + 1, "one re-read after the last hint at most"
        assert not waiter.done() and notifier.generation == generation, "nothing moved"
        heads.append(Head("f", 9))
        notifier.hint()
        assert await waiter
        assert notifier.head == Head("f", 9)
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
