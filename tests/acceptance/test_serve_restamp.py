"""A payload republished under a newer schema_version is a change a reader can see: it
gets a new rev and wakes the long-polls waiting past the old one (contract section 5)."""

from __future__ import annotations

import threading
import time

import httpx

from support.db import Database
from support.serve import Served, publish, reader_url


def test_a_restamp_wakes_a_long_poll_with_the_item_under_a_new_rev(pub_db: Database) -> None:
    publish(pub_db, "INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
    with Served(reader_url(pub_db)) as served, httpx.Client(timeout=30) as client:
        first = client.get(served.url("/published/feed")).json()
        [item] = first["items"]
        assert item["schema_version"] == 1
        answer: dict[str, object] = {}

        def hold() -> None:
            started = time.monotonic()
            response = client.get(
                served.url(f"/published/feed?after={first['next_after']}&wait=20")
            )
            answer["elapsed"] = time.monotonic() - started
            answer["body"] = response.json()

        poll = threading.Thread(target=hold)
        poll.start()
        time.sleep(0.5)
        with pub_db.connect() as conn:
            conn.execute(
                "INSERT INTO pub.outbox (kind, source_id, payload, payload_hash, schema_version,"
                " deleted) SELECT kind, source_id, payload, payload_hash, 2, deleted"
                " FROM pub.content"
            )
            conn.execute("SELECT pub.apply_batch(100)")
        poll.join(25)
        assert not poll.is_alive()
        assert float(str(answer["elapsed"])) < 5, "woken by the publish, not by the timeout"
        body = answer["body"]
        assert isinstance(body, dict)
        [moved] = body["items"]
        assert moved["rev"] > item["rev"] and moved["pub_id"] == item["pub_id"]
        assert moved["schema_version"] == 2 and moved["payload"] == item["payload"]
        # A reader starting over sees the item once, under its new rev only.
        again = client.get(served.url("/published/feed")).json()
        assert [i["rev"] for i in again["items"]] == [moved["rev"]]
