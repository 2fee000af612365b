"""The JSON form of a feed item, written by the database (`feed_page_items` in
sql/queries.sql) for `pubctl feed`'s lines and `pubctl serve`'s bodies alike: pub.feed's
column order, the payload as stored, strings escaped as Python's json.dumps escapes
them with ensure_ascii=False (the CLI's line format before the database wrote it)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pubctl.feed import pages, read, read_page

from support.db import Database

COLUMNS = ["rev", "kind", "pub_id", "source_id", "payload", "payload_hash", "schema_version", "deleted"]  # fmt: skip
PAYLOADS = [
    '{"body":"caf\\u00e9 \U0001f600 \u2028 \\"q\\" \\\\","id":9007199254740993,"score":1.50}',
    "null",
    '{"a": 1,  "b": [1, 2]}',
    '{"line":"a\\nb\\u0001"}',
]
HASHES = ["f" * 64, "0" * 64, 'odd "hash" \\ é\t\x01', "h"]


@pytest.fixture
def conn(pub_db: Database) -> Any:
    with pub_db.connect() as connection:
        for n, (payload, payload_hash) in enumerate(zip(PAYLOADS, HASHES, strict=True), 1):
            connection.execute(
                "INSERT INTO pub.content (kind, source_id, rev, payload, payload_hash,"
                " schema_version, deleted) VALUES (%s, %s, %s, %s::json, %s, 1, %s)",
                ("topic" if n % 2 else "question", n, n * 10, payload, payload_hash, n == 2),
            )
        yield connection


def reference_line(row: tuple[Any, ...]) -> str:
    """The line as Python writes it: json.dumps of the other fields, the payload's
    stored text spliced in its place."""
    record = dict(zip(COLUMNS, row, strict=True))
    payload_text = str(record.pop("payload"))
    head = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    before, after = head.split(',"payload_hash"', 1)
    return f'{before},"payload":{payload_text},"payload_hash"{after}'


def test_lines_are_the_reference_form_with_payloads_as_stored(conn: Any) -> None:
    rows = conn.execute(
        "SELECT rev, kind, pub_id::text, source_id, payload::text, payload_hash,"
        " schema_version, deleted FROM pub.feed(0, 100, NULL)"
    ).fetchall()
    lines = list(read(conn))
    assert lines == [reference_line(row) for row in rows]
    for line, payload, payload_hash in zip(lines, PAYLOADS, HASHES, strict=True):
        assert "\n" not in line
        assert '"payload":' + payload + ',"payload_hash"' in line, "the stored bytes"
        record = json.loads(line)
        assert list(record) == COLUMNS
        assert record["payload_hash"] == payload_hash
    assert "café 😀" not in lines[0] and "caf\\u00e9 \U0001f600" in lines[0], "as stored"
    assert json.loads(lines[0])["payload"]["id"] == 9007199254740993
    assert '"payload_hash":"odd \\"hash\\" \\\\ é\\t\\u0001"' in lines[2], "json.dumps escapes"
    assert json.loads(lines[1])["deleted"] is True and json.loads(lines[1])["payload"] is None


def test_pages_limits_and_kinds(conn: Any) -> None:
    page = read_page(conn, 0, 2, None)
    assert (page.count, page.last_rev, page.has_more) == (2, 20, True)
    assert [json.loads(line)["rev"] for line in page.lines] == [10, 20]
    last = read_page(conn, 20, 2, None)
    assert (last.count, last.last_rev, last.has_more) == (2, 40, False)
    empty = read_page(conn, 40, 2, None)
    assert (empty.lines, empty.count, empty.last_rev, empty.has_more) == ([], 0, None, False)
    assert empty.feed_id == page.feed_id
    assert [json.loads(line)["rev"] for line in read(conn, 0, 3)] == [10, 20, 30]
    assert [json.loads(line)["rev"] for line in read(conn, 0, None, ["question"])] == [20, 40]
    assert [p.last_rev for p in pages(conn, 10, None, None)] == [40]


BIG = '{"b":"' + "x" * 300_000 + '"}'


def test_a_page_stops_before_its_payloads_pass_the_byte_bound(
    pub_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page's items are one text in PostgreSQL, which cannot pass 1 GB: a page stops
    before its payloads pass the bound (here a few hundred KB), holds at least one
    item whatever its size, and says has_more, so a reader always goes on."""
    with pub_db.connect() as conn:
        for rev in range(1, 7):
            conn.execute(
                "INSERT INTO pub.content (kind, source_id, rev, payload, payload_hash,"
                " schema_version, deleted) VALUES ('topic', %s, %s, %s::json, 'h', 1, false)",
                (rev, rev, BIG if rev < 6 else "{}"),
            )
        two = read_page(conn, 0, 1000, None, max_bytes=700_000)
        assert (two.count, two.last_rev, two.has_more) == (2, 2, True)
        assert [json.loads(line)["rev"] for line in two.lines] == [1, 2]
        one = read_page(conn, 2, 1000, None, max_bytes=100)
        assert (one.count, one.last_rev, one.has_more) == (1, 3, True), "one item at least"
        last = read_page(conn, 4, 1000, None, max_bytes=700_000)
        assert (last.count, last.last_rev, last.has_more) == (2, 6, False)
        assert read_page(conn, 0, 1, None, max_bytes=700_000).count == 1, "the limit still holds"
        monkeypatch.setattr("pubctl.feed.PAGE_MAX_BYTES", 700_000)
        lines = list(read(conn))
        assert [json.loads(line)["rev"] for line in lines] == [1, 2, 3, 4, 5, 6]
        assert [p.count for p in pages(conn, 0, None, None)] == [2, 2, 2]
        assert [p.count for p in pages(conn, 0, 5, None)] == [2, 2, 1]
