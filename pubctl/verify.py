"""``pubctl verify``: prove that what is published equals what the source says.

Three things are compared for every item, page by page so that memory stays flat:
* the source rows against ``pub.content``, set-based in SQL (``pub.verify_range``):
  missing, stale, orphaned, old schema, and pending when outbox rows still wait;
* the SQL projection of each source row against the Python reference projection
  (``pubctl.projection``): reference mismatch;
* each published ``payload_hash`` against the SHA-256 of the Python reference's RFC 8785
  bytes (where SQL found the payload equal to the projection) or of the stored payload
  itself (where it did not): hash mismatch.
Capture itself is checked too (``pubctl.capture.problems``, the same check as status).
What was found is a :class:`pubctl.verify_report.Report`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row

from pubctl import capture, sources
from pubctl.projection import PayloadRuleError, canonical_json, items_of, payload_hash
from pubctl.queries import query
from pubctl.verify_report import Finding, Report

Conn = psycopg.Connection[Any]
Item = tuple[str, int]

FIRST_ID = -(2**63)
DEFAULT_PAGE_SIZE = 10_000
PAYLOAD_RULES = "PB001"
WHOLE_TABLE = 2**31 - 1


@dataclass(frozen=True)
class PageBound:
    rows_in_page: int
    last_id: int | None


@dataclass(frozen=True)
class Difference:
    """A row of ``pub.verify_range``."""

    kind: str
    source_id: int
    category: str
    pending: bool
    detail: list[str] | None


@dataclass(frozen=True)
class ProjectedRow:
    """A row of ``pub.source_projection`` (texts, decoded by the caller)."""

    source_id: int
    row_data: str
    canonicals: str
    published_hashes: str | None


@dataclass(frozen=True)
class StoredItem:
    kind: str
    source_id: int
    payload: str
    payload_hash: str


class Verification:
    """One run of every check over one database (``conn`` in autocommit mode)."""

    def __init__(
        self,
        conn: Conn,
        kinds: Iterable[str] | None = None,
        *,
        limit_report: int = 20,
        fail_on_pending: bool = False,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        self.conn = conn
        self.kinds = set(kinds or sources.KINDS)
        self.page_size = page_size
        self.report = Report(limit=limit_report, fail_on_pending=fail_on_pending)

    def run(self) -> Report:
        """Every check; the report of what was found."""
        unsafe = self.check_capture()
        for source in sources.SOURCES:
            if source.table in unsafe or not self.kinds & set(source.kinds):
                continue
            for lo, hi in self.ranges(source):
                self.check_range(source, lo, hi)
        self.check_tombstone_hash()
        row = self.conn.execute(query("verify_pending"), {"kinds": sorted(self.kinds)}).fetchone()
        self.report.pending_outbox_rows = int(row[0]) if row else 0
        return self.report

    def check_capture(self) -> set[str]:
        """Report every way capture can miss writes; return the source tables whose
        columns cannot be projected safely (their comparison is skipped)."""
        unsafe: set[str] = set()
        for problem in capture.problems(self.conn):
            self.report.add(Finding("capture_bypassed", "capture", None, str(problem)))
            if problem.subject in sources.BY_TABLE and problem.problem.startswith(
                ("column ", "table ")
            ):
                unsafe.add(problem.subject)
        return unsafe

    def page_bound(self, source: sources.Source, after_id: int, page_size: int) -> PageBound:
        with self.conn.cursor(row_factory=class_row(PageBound)) as cur:
            bound = cur.execute(
                query("verify_page_bound"),
                {"source": source.table, "after_id": after_id, "page_size": page_size},
            ).fetchone()
        assert bound is not None
        return bound

    def ranges(self, source: sources.Source) -> Iterator[tuple[int, int | None]]:
        """Consecutive id ranges (lo, hi] covering the whole table; the last is open."""
        lo = FIRST_ID
        while True:
            bound = self.page_bound(source, lo, self.page_size)
            if bound.rows_in_page < self.page_size or bound.last_id is None:
                yield lo, None
                return
            yield lo, bound.last_id
            lo = bound.last_id

    def check_range(self, source: sources.Source, lo: int, hi: int | None) -> None:
        """Compare one range; a range holding rows that break the payload rules is split
        around them (each reported ``invalid``)."""
        try:
            self.compare_range(source, lo, hi)
        except psycopg.Error as exc:
            if getattr(exc, "sqlstate", None) != PAYLOAD_RULES:
                raise
            for a, b in self.good_ranges(source, lo, hi):
                self.compare_range(source, a, b)
            if hi is None:  # what lies after the last row (orphans) is still checked
                last = self.page_bound(source, lo, WHOLE_TABLE).last_id
                self.compare_range(source, last if last is not None else lo, None)

    def good_ranges(self, source: sources.Source, lo: int, hi: int | None) -> list[tuple[int, int]]:
        """The sub-ranges of (lo, hi] free of rows breaking the payload rules, reporting
        each such row as ``invalid``. Bisects the id space; only runs when a range
        failed, so it costs nothing on a healthy table."""
        if hi is None:
            last = self.page_bound(source, lo, WHOLE_TABLE).last_id
            hi = last if last is not None else lo
        good: list[tuple[int, int]] = []
        stack = [(lo, hi)]
        while stack:
            a, b = stack.pop()
            if a >= b:
                continue
            try:
                self.conn.execute(
                    query("verify_source_projection"), {"source": source.table, "lo": a, "hi": b}
                ).fetchall()
                good.append((a, b))
            except psycopg.Error as exc:
                if getattr(exc, "sqlstate", None) != PAYLOAD_RULES:
                    raise
                if b - a == 1:
                    message = (exc.diag.message_primary or str(exc)).removeprefix("pubctl: ")
                    self.report.add(Finding("invalid", source.main_kind, b, message))
                    continue
                mid = a + (b - a) // 2
                stack += [(mid, b), (a, mid)]
        return sorted(good)

    def compare_range(self, source: sources.Source, lo: int, hi: int | None) -> None:
        """The SQL comparison of one range, then the Python reference over its rows."""
        suspects = self.compare_in_sql(source, lo, hi)
        with self.conn.cursor(row_factory=class_row(ProjectedRow)) as cur:
            rows = cur.execute(
                query("verify_source_projection"), {"source": source.table, "lo": lo, "hi": hi}
            )
            for row in rows:
                self.check_row(source, row, suspects)
                self.report.checked[source.table] = self.report.checked.get(source.table, 0) + 1
        self.check_stored_hashes(sorted(s for s in suspects if s[0] in self.kinds))

    def compare_in_sql(self, source: sources.Source, lo: int, hi: int | None) -> set[Item]:
        """Report what ``pub.verify_range`` finds; return the items it named."""
        suspects: set[Item] = set()
        with self.conn.cursor(row_factory=class_row(Difference)) as cur:
            found = cur.execute(query("verify_range"), {"source": source.table, "lo": lo, "hi": hi})
            for d in found:
                suspects.add((d.kind, d.source_id))
                if d.kind not in self.kinds:
                    continue
                text = ", ".join(d.detail or [])
                if d.pending and d.category in ("missing", "stale", "orphaned"):
                    detail = f"{d.category} until the outbox is applied"
                    self.report.add(Finding("pending", d.kind, d.source_id, detail))
                    continue
                if d.category == "stale":
                    text = f"differs in {text or 'payload_hash'}"
                self.report.add(Finding(d.category, d.kind, d.source_id, text))
        return suspects

    def check_row(
        self, source: sources.Source, projected: ProjectedRow, suspects: set[Item]
    ) -> None:
        """Hold one row's SQL projection against the Python reference, and, where SQL
        found the published item equal to the projection, its stored hash against
        Python's."""
        source_id = projected.source_id
        sql: dict[str, str | None] = json.loads(projected.canonicals)
        hashes: dict[str, str] = (
            json.loads(projected.published_hashes) if projected.published_hashes else {}
        )
        try:
            items = items_of(source.table, json.loads(projected.row_data))
        except PayloadRuleError as exc:
            detail = f"Python refuses the row: {exc}"
            self.report.add(Finding("reference_mismatch", source.main_kind, source_id, detail))
            return
        for item in items:
            if item.kind not in self.kinds:
                continue
            want = canonical_json(item.published_payload)
            got = sql.get(item.kind)
            if item.payload is not None and (got.encode() if got is not None else None) != want:
                detail = f"SQL {got!r} != Python {want.decode()!r}"
                self.report.add(Finding("reference_mismatch", item.kind, source_id, detail))
            elif item.payload is None and got is not None:
                detail = f"SQL {got!r} != Python tombstone"
                self.report.add(Finding("reference_mismatch", item.kind, source_id, detail))
            stored = hashes.get(item.kind)
            if stored is None or (item.kind, source_id) in suspects:
                continue  # never published, or checked from its stored payload below
            computed = hashlib.sha256(want).hexdigest()
            if stored != computed:
                detail = f"stored {stored}, payload hashes to {computed}"
                self.report.add(Finding("hash_mismatch", item.kind, source_id, detail))

    def check_stored_hashes(self, items: list[Item]) -> None:
        """Hash the stored payloads of items SQL already flagged (rare) with rfc8785."""
        if not items:
            return
        with self.conn.cursor(row_factory=class_row(StoredItem)) as cur:
            stored = cur.execute(
                query("verify_content_items"),
                {"kinds": [k for k, _ in items], "source_ids": [s for _, s in items]},
            )
            for item in stored:
                try:
                    computed = payload_hash(json.loads(item.payload))
                except Exception as exc:  # a payload RFC 8785 cannot even express
                    computed = f"(not canonicalisable: {exc})"
                if computed != item.payload_hash:
                    detail = f"stored {item.payload_hash}, payload hashes to {computed}"
                    self.report.add(Finding("hash_mismatch", item.kind, item.source_id, detail))

    def check_tombstone_hash(self) -> None:
        row = self.conn.execute(query("tombstone_hash")).fetchone()
        expected = payload_hash({})
        if not row or row[0] != expected:
            detail = f"SQL hashes {{}} to {row and row[0]}, Python to {expected}"
            self.report.add(Finding("reference_mismatch", "capture", None, detail))


def verify(
    conn: Conn,
    kinds: Iterable[str] | None = None,
    *,
    limit_report: int = 20,
    fail_on_pending: bool = False,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Report:
    """Run every check; ``conn`` must be in autocommit mode."""
    return Verification(
        conn, kinds, limit_report=limit_report, fail_on_pending=fail_on_pending, page_size=page_size
    ).run()


def render(report: Report) -> str:
    """The human form of a report."""
    return report.render()
