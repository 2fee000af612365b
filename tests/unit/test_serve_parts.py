"""The parts of `pubctl serve` that need no server: parameters, tokens, the loopback
rule, page bodies and ETags, and the notifier long-polls wait on."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest
import rfc8785

from pubctl.serve.auth import TokenCheck, TokenError, is_loopback, load_tokens
from pubctl.serve.listener import Notifier
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
        notifier = Notifier()
        seen = notifier.generation
        notifier.published(5)  # between a waiter's read and its wait
        assert await notifier.wait_past(seen, 0.01)
        assert not await notifier.wait_past(notifier.generation, 0.01)
        waiters = [
            asyncio.create_task(notifier.wait_past(notifier.generation, 5)) for _ in range(100)
        ]
        await asyncio.sleep(0)
        notifier.published(6)
        assert all(await asyncio.gather(*waiters))
        assert notifier.newer_since(seen, 5) and not notifier.newer_since(notifier.generation, 6)
        before = notifier.generation
        notifier.reset()
        assert notifier.newer_since(before, 100)
        notifier.close()
        assert notifier.closing

    asyncio.run(scenario())
