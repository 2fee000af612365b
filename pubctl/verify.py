"""``pubctl verify``: prove that what is published equals what the source says.

Three things are compared for every item, page by page so that memory stays flat:
* the source rows against ``pub.content``, set-based in SQL (``pub.verify_range``):
  missing, stale, orphaned, old schema, and pending when outbox rows still wait;
* the SQL projection of each source row against the Python reference projection
  (``pubctl.projection``): reference mismatch;
* each published ``payload_hash`` against the SHA-256 of the Python reference's RFC 8785
  bytes (where SQL found the stored text equal to the projection's) or of the stored
  text itself (where it did not): hash mismatch.
Capture itself is checked too (``pubctl.capture.problems``, the same check as status).
The ranges cover every id of the source, both ends of bigint included. A live row that
breaks the payload rules makes the SQL projection of its range fail (PB001, as capture
and backfill do): its items that break a rule are reported ``invalid``, once each, and
the rest of the range is compared around its row. Only what a row publishes is read:
the Python reference gets no column of a deleted row beyond its id and ``deleted_at``,
and no explanation that is not ready (``pub.source_projection``).
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
# An id range (lo, hi]: lo None has no lower bound (the first range starts before the
# smallest bigint), hi None no upper bound.
Range = tuple[int | None, int | None]

DEFAULT_PAGE_SIZE = 10_000
PAYLOAD_RULES = "PB001"
SMALLEST_ID, LARGEST_ID = -(2**63), 2**63 - 1


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
class RuleBreak:
    """A row of ``pub.verify_rule_breaks``: an item its row cannot publish, and why."""

    kind: str
    source_id: int
    rule: str


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

    def page_bound(self, source: sources.Source, after_id: int | None, page_size: int) -> PageBound:
        with self.conn.cursor(row_factory=class_row(PageBound)) as cur:
            bound = cur.execute(
                query("verify_page_bound"),
                {"source": source.table, "after_id": after_id, "page_size": page_size},
            ).fetchone()
        assert bound is not None
        return bound

    def ranges(self, source: sources.Source) -> Iterator[Range]:
        """Consecutive id ranges (lo, hi] covering every id; the first and last are open."""
        lo: int | None = None
        while True:
            bound = self.page_bound(source, lo, self.page_size)
            if bound.rows_in_page < self.page_size or bound.last_id is None:
                yield lo, None
                return
            yield lo, bound.last_id
            lo = bound.last_id

    def check_range(self, source: sources.Source, lo: int | None, hi: int | None) -> None:
        """Compare one range. When rows in it break the payload rules, report their items
        that do as ``invalid`` and compare what lies around those rows."""
        try:
            self.compare_range(source, lo, hi)
        except psycopg.Error as exc:
            if getattr(exc, "sqlstate", None) != PAYLOAD_RULES:
                raise
            broken = self.rule_breaks(source, lo, hi)
            if not broken:
                raise  # no row breaks a rule any more: changed meanwhile, run verify again
            for item in broken:
                if item.kind in self.kinds:
                    detail = f"breaks the payload rules: {item.rule}"
                    self.report.add(Finding("invalid", item.kind, item.source_id, detail))
            for a, b in around({item.source_id for item in broken}, lo, hi):
                self.check_range(source, a, b)

    def rule_breaks(
        self, source: sources.Source, lo: int | None, hi: int | None
    ) -> list[RuleBreak]:
        """The items of (lo, hi] whose projection breaks the payload rules (asked only when
        the range's comparison failed, so it costs nothing on a healthy table)."""
        with self.conn.cursor(row_factory=class_row(RuleBreak)) as cur:
            return cur.execute(
                query("verify_rule_breaks"), {"source": source.table, "lo": lo, "hi": hi}
            ).fetchall()

    def compare_range(self, source: sources.Source, lo: int | None, hi: int | None) -> None:
        """The SQL comparison of one range, then the Python reference over its rows. What
        they find is reported once both queries succeeded (a range that fails is checked
        again around its bad rows)."""
        found: list[Finding] = []
        suspects = self.compare_in_sql(source, lo, hi, found)
        checked = 0
        with self.conn.cursor(row_factory=class_row(ProjectedRow)) as cur:
            rows = cur.execute(
                query("verify_source_projection"), {"source": source.table, "lo": lo, "hi": hi}
            )
            for row in rows:
                self.check_row(source, row, suspects, found)
                checked += 1
        self.check_stored_hashes(sorted(s for s in suspects if s[0] in self.kinds), found)
        for finding in found:
            self.report.add(finding)
        self.report.checked[source.table] = self.report.checked.get(source.table, 0) + checked

    def compare_in_sql(
        self, source: sources.Source, lo: int | None, hi: int | None, found: list[Finding]
    ) -> set[Item]:
        """What ``pub.verify_range`` finds, into ``found``; return the items it named."""
        suspects: set[Item] = set()
        with self.conn.cursor(row_factory=class_row(Difference)) as cur:
            differences = cur.execute(
                query("verify_range"), {"source": source.table, "lo": lo, "hi": hi}
            )
            for d in differences:
                suspects.add((d.kind, d.source_id))
                if d.kind not in self.kinds:
                    continue
                text = ", ".join(d.detail or [])
                if d.pending and d.category in ("missing", "stale", "orphaned"):
                    detail = f"{d.category} until the outbox is applied"
                    found.append(Finding("pending", d.kind, d.source_id, detail))
                    continue
                if d.category == "stale":
                    text = f"differs in {text or 'payload_hash'}"
                found.append(Finding(d.category, d.kind, d.source_id, text))
        return suspects

    def check_row(
        self,
        source: sources.Source,
        projected: ProjectedRow,
        suspects: set[Item],
        found: list[Finding],
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
            found.append(Finding("reference_mismatch", source.main_kind, source_id, detail))
            return
        for item in items:
            if item.kind not in self.kinds:
                continue
            want = canonical_json(item.published_payload)
            got = sql.get(item.kind)
            if item.payload is not None and (got.encode() if got is not None else None) != want:
                detail = f"SQL {got!r} != Python {want.decode()!r}"
                found.append(Finding("reference_mismatch", item.kind, source_id, detail))
            elif item.payload is None and got is not None:
                detail = f"SQL {got!r} != Python tombstone"
                found.append(Finding("reference_mismatch", item.kind, source_id, detail))
            stored = hashes.get(item.kind)
            if stored is None or (item.kind, source_id) in suspects:
                continue  # never published, or checked from its stored payload below
            computed = hashlib.sha256(want).hexdigest()
            if stored != computed:
                detail = f"stored {stored}, payload hashes to {computed}"
                found.append(Finding("hash_mismatch", item.kind, source_id, detail))

    def check_stored_hashes(self, items: list[Item], found: list[Finding]) -> None:
        """Hash the stored payload text of items SQL already flagged (rare): the stored
        bytes are the canonical ones, so their SHA-256 is the hash."""
        if not items:
            return
        with self.conn.cursor(row_factory=class_row(StoredItem)) as cur:
            stored = cur.execute(
                query("verify_content_items"),
                {"kinds": [k for k, _ in items], "source_ids": [s for _, s in items]},
            )
            for item in stored:
                computed = hashlib.sha256(item.payload.encode()).hexdigest()
                if computed != item.payload_hash:
                    detail = f"stored {item.payload_hash}, payload hashes to {computed}"
                    found.append(Finding("hash_mismatch", item.kind, item.source_id, detail))

    def check_tombstone_hash(self) -> None:
        row = self.conn.execute(query("tombstone_hash")).fetchone()
        expected = payload_hash({})
        if not row or row[0] != expected:
            detail = f"SQL hashes {{}} to {row and row[0]}, Python to {expected}"
            self.report.add(Finding("reference_mismatch", "capture", None, detail))


def around(ids: set[int], lo: int | None, hi: int | None) -> list[Range]:
    """The ranges that cover (lo, hi] except the rows ``ids`` (all inside it), in order;
    empty ones left out."""
    ranges: list[Range] = []
    start = lo
    for x in sorted(ids):
        if x > SMALLEST_ID and (start is None or x - 1 > start):
            ranges.append((start, x - 1))
        start = x
    if start != LARGEST_ID and (hi is None or start is None or hi > start):
        ranges.append((start, hi))
    return ranges


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
