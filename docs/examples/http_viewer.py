"""A viewer keeping a local copy of the published items over HTTP (`pubctl serve`).

It reads only the kinds it wants, checks every payload's SHA-256 against payload_hash
on the exact bytes of the answer, and upserts generically: an item is its kind and
source_id, a tombstone removes it. Run it against a server:

    python http_viewer.py http://127.0.0.1:8080 --token T --kind topic --kind question
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx


class Copy:
    """The viewer's copy: items by "kind/source_id", the cursor and its feed_id."""

    def __init__(self) -> None:
        self.items: dict[str, Any] = {}
        self.cursor = 0
        self.feed_id: str | None = None


def payload_spans(body: bytes) -> list[tuple[bytes, str]]:
    """Each item's payload and payload_hash, cut from the answer's exact bytes: the
    payload is what lies between ``"payload":`` and ``,"payload_hash":"``."""
    spans, start = [], 0
    while (i := body.find(b',"payload":', start)) >= 0:
        j = body.index(b',"payload_hash":"', i)
        spans.append((body[i + 11 : j], body[j + 17 : j + 81].decode()))
        start = j
    return spans


def apply_page(copy: Copy, body: bytes) -> bool:
    """Apply one answer to the copy; returns has_more."""
    page = json.loads(body)
    for item, (payload, hash_) in zip(page["items"], payload_spans(body), strict=True):
        if hashlib.sha256(payload).hexdigest() != hash_ or hash_ != item["payload_hash"]:
            raise ValueError(f"payload of rev {item['rev']} does not match its payload_hash")
        key = f"{item['kind']}/{item['source_id']}"
        if item["deleted"]:
            copy.items.pop(key, None)  # a tombstone: the item is gone
        else:
            copy.items[key] = item["payload"]  # the item's newest payload
    copy.cursor, copy.feed_id = page["next_after"], page["feed_id"]
    return bool(page["has_more"])


def sync(
    client: httpx.Client, copy: Copy, kinds: list[str], page: int = 1000, wait: float = 0
) -> None:
    """Read every page after the cursor; when nothing is new, hold up to ``wait`` s."""
    while True:
        params: dict[str, Any] = {"after": copy.cursor, "limit": page, "wait": wait, "kind": kinds}
        if copy.feed_id:
            params["feed_id"] = copy.feed_id
        try:
            response = client.get("/published/feed", params=params)
        except httpx.TransportError:
            time.sleep(1)  # the server is restarting: try again
            continue
        if response.status_code == 409:  # the published state was recreated: start over
            copy.items.clear()
            copy.cursor, copy.feed_id = 0, None
            continue
        if response.status_code == 503:
            time.sleep(float(response.headers.get("Retry-After", "1")))
            continue
        response.raise_for_status()
        if not apply_page(copy, response.content):
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", help="base URL of pubctl serve")
    parser.add_argument("--token", help="bearer token")
    parser.add_argument("--kind", action="append", default=[], help="kinds to read (default all)")
    parser.add_argument("--page", type=int, default=1000)
    parser.add_argument("--wait", type=float, default=20, help="long-poll seconds when following")
    parser.add_argument("--follow-until", type=Path, help="keep following until this file exists")
    parser.add_argument("--save", type=Path, help="write the copy here as JSON at the end")
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    copy = Copy()
    with httpx.Client(base_url=args.url, headers=headers, timeout=args.wait + 30) as client:
        sync(client, copy, args.kind, args.page)
        while args.follow_until and not args.follow_until.exists():
            sync(client, copy, args.kind, args.page, wait=args.wait)
    if args.save:
        args.save.write_text(json.dumps({"cursor": copy.cursor, "items": copy.items}))
    print(f"{len(copy.items)} items, cursor at rev {copy.cursor}")


if __name__ == "__main__":
    main()
