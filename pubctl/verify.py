"""``pubctl verify``: prove that what is published equals what the source says.

Three things are compared for every item, page by page so that memory stays flat:
* the source rows against ``pub.content``, set-based in SQL (``pub.verify_range``):
  missing, stale, orphaned, old schema, and pending when outbox rows still wait;
* the SQL projection of each source row against the Python reference projection
  (``pubctl.projection``): reference mismatch;
* each published ``payload_hash`` against the SHA-256 of the Python reference's RFC 8785
  bytes (where SQL found the payload equal to the projection) or of the stored payload
  itself (where it did not): hash mismatch.
Capture itself is checked too: our triggers present and enabled, publishing on, and
``session_replication_role`` not silencing triggers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pubctl import capture
from pubctl.projection import (
    KINDS,
    PayloadRuleError,
    canonical_json,
    payload_hash,
    question_items,
    topic_items,
)
from pubctl.queries import query

Conn = psycopg.Connection[tuple[Any, ...]]

CATEGORIES = (
    "missing",
    "stale",
    "orphaned",
    "hash_mismatch",
    "reference_mismatch",
    "old_schema",
    "invalid",
    "capture_bypassed",
    "pending",
)
NOT_DRIFT = {"pending"}
SOURCES = ("study_topic", "study_question")
SOURCE_OF_KIND = {
    "topic": "study_topic",
    "question": "study_question",
    "explanation": "study_question",
}
FIRST_ID = -(2**63)
DEFAULT_PAGE_SIZE = 10_000
PAYLOAD_RULES = "PB001"


@dataclass(frozen=True)
class Finding:
    """One reported item (or, for capture, one trigger or setting)."""

    category: str
    kind: str
    source_id: int | None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "kind": self.kind,
            "source_id": self.source_id,
            "detail": self.detail,
        }


@dataclass
class Report:
    """Counts per category and kind, and the first examples of each category."""

    limit: int
    fail_on_pending: bool = False
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: dict[str, list[Finding]] = field(default_factory=dict)
    pending_outbox_rows: int = 0
    checked: dict[str, int] = field(default_factory=dict)

    def add(self, finding: Finding) -> None:
        per_kind = self.counts.setdefault(finding.category, {})
        per_kind[finding.kind] = per_kind.get(finding.kind, 0) + 1
        shown = self.examples.setdefault(finding.category, [])
        if len(shown) < self.limit:
            shown.append(finding)

    def total(self, category: str) -> int:
        return sum(self.counts.get(category, {}).values())

    @property
    def drift(self) -> int:
        failing = set(CATEGORIES) - (set() if self.fail_on_pending else NOT_DRIFT)
        return sum(self.total(c) for c in failing)

    @property
    def clean(self) -> bool:
        return self.drift == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "drift": self.drift,
            "pending_outbox_rows": self.pending_outbox_rows,
            "checked": self.checked,
            "counts": {c: self.counts[c] for c in CATEGORIES if c in self.counts},
            "examples": [f.as_dict() for c in CATEGORIES for f in self.examples.get(c, [])],
        }


def _check_capture(conn: Conn, report: Report) -> set[str]:
    """Report every way capture can miss writes; return the source tables whose columns
    cannot be projected safely (their comparison is skipped)."""
    unsafe: set[str] = set()
    for problem in capture.problems(conn):
        report.add(Finding("capture_bypassed", "capture", None, str(problem)))
        if problem.subject in SOURCES and problem.problem.startswith(("column ", "table ")):
            unsafe.add(problem.subject)
    return unsafe


def _ranges(conn: Conn, source: str, page_size: int) -> Iterator[tuple[int, int | None]]:
    """Consecutive id ranges (lo, hi] covering the whole table; the last is open."""
    lo = FIRST_ID
    while True:
        row = conn.execute(
            query("verify_page_bound"), {"source": source, "after_id": lo, "page_size": page_size}
        ).fetchone()
        assert row is not None
        rows, last_id = int(row[0]), row[1]
        if rows < page_size:
            yield lo, None
            return
        yield lo, int(last_id)
        lo = int(last_id)


def _is_rule_error(exc: psycopg.Error) -> bool:
    return getattr(exc, "sqlstate", None) == PAYLOAD_RULES


def _bad_rows(
    conn: Conn, source: str, lo: int, hi: int | None, report: Report
) -> list[tuple[int, int]]:
    """Split a range that holds rows breaking the payload rules into good sub-ranges,
    reporting each bad row as ``invalid``. Bisects the id space; only runs when a
    range failed, so it costs nothing on a healthy table."""
    if hi is None:
        row = conn.execute(
            query("verify_page_bound"), {"source": source, "after_id": lo, "page_size": 2**31 - 1}
        ).fetchone()
        hi = int(row[1]) if row and row[1] is not None else lo
    good: list[tuple[int, int]] = []
    stack = [(lo, hi)]
    while stack:
        a, b = stack.pop()
        if a >= b:
            continue
        try:
            conn.execute(
                query("verify_source_projection"), {"source": source, "lo": a, "hi": b}
            ).fetchall()
            good.append((a, b))
        except psycopg.Error as exc:
            if not _is_rule_error(exc):
                raise
            if b - a == 1:
                kind = "topic" if source == "study_topic" else "question"
                message = (exc.diag.message_primary or str(exc)).removeprefix("pubctl: ")
                report.add(Finding("invalid", kind, b, message))
                continue
            mid = a + (b - a) // 2
            stack += [(mid, b), (a, mid)]
    return sorted(good)


def _compare_range(
    conn: Conn, source: str, lo: int, hi: int | None, kinds: set[str], report: Report
) -> None:
    suspects: set[tuple[str, int]] = set()
    for kind, source_id, category, pending, detail in conn.execute(
        query("verify_range"), {"source": source, "lo": lo, "hi": hi}
    ):
        suspects.add((kind, source_id))
        if kind not in kinds:
            continue
        text = ", ".join(detail or [])
        if pending and category in ("missing", "stale", "orphaned"):
            report.add(
                Finding("pending", kind, source_id, f"{category} until the outbox is applied")
            )
            continue
        if category == "stale":
            text = f"differs in {text or 'payload_hash'}"
        report.add(Finding(category, kind, source_id, text))
    rows = conn.execute(query("verify_source_projection"), {"source": source, "lo": lo, "hi": hi})
    for source_id, row_text, canonicals_text, hashes_text in rows:
        _check_row(
            int(source_id),
            source,
            json.loads(row_text),
            json.loads(canonicals_text),
            json.loads(hashes_text) if hashes_text else {},
            suspects,
            kinds,
            report,
        )
        report.checked[source] = report.checked.get(source, 0) + 1
    _check_suspect_hashes(conn, sorted(s for s in suspects if s[0] in kinds), report)


def _check_row(
    source_id: int,
    source: str,
    row: dict[str, Any],
    sql: dict[str, str | None],
    published_hashes: dict[str, str],
    suspects: set[tuple[str, int]],
    kinds: set[str],
    report: Report,
) -> None:
    """Hold one row's SQL projection against the Python reference, and, where SQL found
    the published item equal to the projection, its stored hash against Python's."""
    try:
        items = topic_items(row) if source == "study_topic" else question_items(row)
    except PayloadRuleError as exc:
        kind = "topic" if source == "study_topic" else "question"
        report.add(Finding("reference_mismatch", kind, source_id, f"Python refuses the row: {exc}"))
        return
    for item in items:
        if item.kind not in kinds:
            continue
        want = canonical_json(item.published_payload)
        got = sql.get(item.kind)
        if item.payload is not None and (got.encode() if got is not None else None) != want:
            report.add(
                Finding(
                    "reference_mismatch",
                    item.kind,
                    source_id,
                    f"SQL {got!r} != Python {want.decode()!r}",
                )
            )
        elif item.payload is None and got is not None:
            report.add(
                Finding(
                    "reference_mismatch", item.kind, source_id, f"SQL {got!r} != Python tombstone"
                )
            )
        stored = published_hashes.get(item.kind)
        if stored is None or (item.kind, source_id) in suspects:
            continue  # never published, or checked from its stored payload below
        computed = hashlib.sha256(want).hexdigest()
        if stored != computed:
            report.add(
                Finding(
                    "hash_mismatch",
                    item.kind,
                    source_id,
                    f"stored {stored}, payload hashes to {computed}",
                )
            )


def _check_suspect_hashes(conn: Conn, items: list[tuple[str, int]], report: Report) -> None:
    """Hash the stored payloads of items SQL already flagged (rare) with rfc8785."""
    if not items:
        return
    rows = conn.execute(
        query("verify_content_items"),
        {"kinds": [k for k, _ in items], "source_ids": [s for _, s in items]},
    )
    for kind, source_id, payload_text, stored_hash in rows:
        try:
            computed = payload_hash(json.loads(payload_text))
        except Exception as exc:  # a payload RFC 8785 cannot even express
            computed = f"(not canonicalisable: {exc})"
        if computed != stored_hash:
            report.add(
                Finding(
                    "hash_mismatch",
                    kind,
                    source_id,
                    f"stored {stored_hash}, payload hashes to {computed}",
                )
            )


def _check_tombstone_hash(conn: Conn, report: Report) -> None:
    row = conn.execute(query("tombstone_hash")).fetchone()
    expected = payload_hash({})
    if not row or row[0] != expected:
        report.add(
            Finding(
                "reference_mismatch",
                "capture",
                None,
                f"SQL hashes {{}} to {row and row[0]}, Python to {expected}",
            )
        )


def verify(
    conn: Conn,
    kinds: Iterable[str] | None = None,
    *,
    limit_report: int = 20,
    fail_on_pending: bool = False,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Report:
    """Run every check; ``conn`` must be in autocommit mode."""
    wanted = set(kinds or KINDS)
    report = Report(limit=limit_report, fail_on_pending=fail_on_pending)
    unsafe = _check_capture(conn, report)
    for source in SOURCES:
        if source in unsafe or not any(SOURCE_OF_KIND[k] == source for k in wanted):
            continue
        for lo, hi in _ranges(conn, source, page_size):
            try:
                _compare_range(conn, source, lo, hi, wanted, report)
            except psycopg.Error as exc:
                if not _is_rule_error(exc):
                    raise
                for a, b in _bad_rows(conn, source, lo, hi, report):
                    _compare_range(conn, source, a, b, wanted, report)
                if hi is None:  # what lies after the last row (orphans) is still checked
                    row = conn.execute(
                        query("verify_page_bound"),
                        {"source": source, "after_id": lo, "page_size": 2**31 - 1},
                    ).fetchone()
                    last = int(row[1]) if row and row[1] is not None else lo
                    _compare_range(conn, source, last, None, wanted, report)
    _check_tombstone_hash(conn, report)
    row = conn.execute(query("verify_pending"), {"kinds": sorted(wanted)}).fetchone()
    report.pending_outbox_rows = int(row[0]) if row else 0
    return report


def render(report: Report) -> str:
    """The human form: a table of counts, then the examples, then the verdict."""
    lines = []
    kinds = [*KINDS, "capture"]
    header = f"{'category':<20}" + "".join(f"{k:>13}" for k in kinds)
    lines.append(header)
    for category in CATEGORIES:
        per_kind = report.counts.get(category, {})
        lines.append(f"{category:<20}" + "".join(f"{per_kind.get(k, 0):>13}" for k in kinds))
    shown = [f for c in CATEGORIES for f in report.examples.get(c, [])]
    if shown:
        lines.append("")
        for f in shown:
            where = f"{f.kind} {f.source_id}" if f.source_id is not None else f.kind
            lines.append(f"{f.category}: {where}" + (f": {f.detail}" if f.detail else ""))
    lines.append("")
    checked = ", ".join(f"{n} {s} rows" for s, n in report.checked.items())
    if report.clean:
        pending = report.total("pending")
        lines.append(
            f"clean: published state equals the source ({checked})"
            + (f"; {pending} items pending in the outbox" if pending else "")
        )
    else:
        lines.append(f"DRIFT: {report.drift} findings ({checked})")
    return "\n".join(lines)
