"""JSON lines of `pubctl feed`: pub.feed's column order, the payload as stored."""

from __future__ import annotations

import json

from pubctl.feed import FEED_COLUMNS, to_json_line


def test_payload_is_spliced_as_stored_in_column_order() -> None:
    payload = '{"body":"caf\\u00e9 \U0001f600","id":9007199254740993,"score":1.50}'
    line = to_json_line((12, "question", "abc", 9, payload, "f" * 64, 1, False))
    assert "\n" not in line
    assert '"payload":' + payload + "," in line, "the stored bytes, not a re-encoding"
    record = json.loads(line)
    assert list(record) == list(FEED_COLUMNS)
    assert record["rev"] == 12 and record["deleted"] is False
    assert record["payload"]["id"] == 9007199254740993


def test_tombstones_and_non_ascii_text() -> None:
    line = to_json_line((3, "topic", "ü-id", 1, "null", "0" * 64, 1, True))
    assert '"pub_id":"ü-id"' in line, "no \\u escapes"
    assert json.loads(line)["payload"] is None
