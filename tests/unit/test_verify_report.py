"""The verify report model: counting, what counts as drift, and its two renderings."""

from __future__ import annotations

import json

from pubctl.verify_report import CATEGORIES, Finding, Report


def test_counts_per_category_and_kind_and_keeps_the_first_examples() -> None:
    report = Report(limit=2)
    for source_id in range(5):
        report.add(Finding("missing", "question", source_id))
    report.add(Finding("stale", "topic", 7, "name"))
    assert report.counts == {"missing": {"question": 5}, "stale": {"topic": 1}}
    assert [f.source_id for f in report.examples["missing"]] == [0, 1]
    assert report.total("missing") == 5 and report.total("orphaned") == 0
    assert report.drift == 6 and not report.clean


def test_pending_is_drift_only_when_asked() -> None:
    lenient, strict = Report(limit=5), Report(limit=5, fail_on_pending=True)
    for report in (lenient, strict):
        report.add(Finding("pending", "topic", 1))
    assert lenient.clean and lenient.drift == 0
    assert not strict.clean and strict.drift == 1


def test_json_form_orders_categories_and_is_serialisable() -> None:
    report = Report(limit=5, checked={"study_topic": 3})
    report.add(Finding("stale", "topic", 2, "name"))
    report.add(Finding("missing", "question", 9))
    data = json.loads(json.dumps(report.as_dict()))
    assert list(data["counts"]) == ["missing", "stale"]  # the order of CATEGORIES
    assert data["examples"][0] == {
        "category": "missing",
        "kind": "question",
        "source_id": 9,
        "detail": "",
    }
    assert data["clean"] is False and data["drift"] == 2
    assert data["checked"] == {"study_topic": 3}


def test_table_names_every_category_and_says_what_to_run() -> None:
    clean = Report(limit=5, checked={"study_topic": 3, "study_question": 4})
    clean.add(Finding("pending", "topic", 1))
    text = clean.render()
    assert all(category in text for category in CATEGORIES)
    assert text.splitlines()[-1] == (
        "clean: published state equals the source (3 study_topic rows, 4 study_question "
        "rows); 1 items pending in the outbox"
    )
    drift = Report(limit=5)
    drift.add(Finding("missing", "explanation", 4))
    assert "missing: explanation 4" in drift.render()
    assert "pubctl backfill all" in drift.render()
    capture = Report(limit=5)
    capture.add(Finding("capture_bypassed", "capture", None, "trigger disabled"))
    assert "capture_bypassed: capture: trigger disabled" in capture.render()
    assert "backfill" not in capture.render(), "a backfill cannot repair capture"


def test_invalid_is_drift_and_says_the_rows_need_correcting() -> None:
    report = Report(limit=5)
    detail = "breaks the payload rules: choices must be a JSON array of strings"
    report.add(Finding("invalid", "question", 6, detail))
    assert report.drift == 1 and not report.clean
    text = report.render()
    assert f"invalid: question 6: {detail}" in text
    assert "correct them in the application" in text
    assert "backfill all`" not in text, "a backfill cannot publish such a row"
    assert report.as_dict()["counts"] == {"invalid": {"question": 1}}
