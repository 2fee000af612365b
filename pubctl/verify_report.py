"""What `pubctl verify` found: the findings, counted per category and kind, and their
two forms (the table for humans, JSON for scripts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pubctl.sources import KINDS

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
# Differences a backfill and an apply repair (the source is right, the published state
# lags or is wrong).
REPUBLISHABLE = {"missing", "stale", "orphaned", "hash_mismatch", "old_schema"}


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
        """Count a finding; keep it as an example while there are fewer than ``limit``."""
        per_kind = self.counts.setdefault(finding.category, {})
        per_kind[finding.kind] = per_kind.get(finding.kind, 0) + 1
        shown = self.examples.setdefault(finding.category, [])
        if len(shown) < self.limit:
            shown.append(finding)

    def total(self, category: str) -> int:
        """How many findings of ``category``, all kinds together."""
        return sum(self.counts.get(category, {}).values())

    @property
    def drift(self) -> int:
        failing = set(CATEGORIES) - (set() if self.fail_on_pending else NOT_DRIFT)
        return sum(self.total(c) for c in failing)

    @property
    def clean(self) -> bool:
        return self.drift == 0

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (`pubctl verify --json`)."""
        return {
            "clean": self.clean,
            "drift": self.drift,
            "pending_outbox_rows": self.pending_outbox_rows,
            "checked": self.checked,
            "counts": {c: self.counts[c] for c in CATEGORIES if c in self.counts},
            "examples": [f.as_dict() for c in CATEGORIES for f in self.examples.get(c, [])],
        }

    def render(self) -> str:
        """The human form: a table of counts, then the examples, then the verdict (with
        what to run when the source and the published state disagree)."""
        lines = []
        kinds = [*KINDS, "capture"]
        header = f"{'category':<20}" + "".join(f"{k:>13}" for k in kinds)
        lines.append(header)
        for category in CATEGORIES:
            per_kind = self.counts.get(category, {})
            lines.append(f"{category:<20}" + "".join(f"{per_kind.get(k, 0):>13}" for k in kinds))
        shown = [f for c in CATEGORIES for f in self.examples.get(c, [])]
        if shown:
            lines.append("")
            for f in shown:
                where = f"{f.kind} {f.source_id}" if f.source_id is not None else f.kind
                lines.append(f"{f.category}: {where}" + (f": {f.detail}" if f.detail else ""))
        lines.append("")
        checked = ", ".join(f"{n} {s} rows" for s, n in self.checked.items())
        if self.clean:
            pending = self.total("pending")
            lines.append(
                f"clean: published state equals the source ({checked})"
                + (f"; {pending} items pending in the outbox" if pending else "")
            )
        else:
            lines.append(f"DRIFT: {self.drift} findings ({checked})")
            if any(self.total(c) for c in REPUBLISHABLE):
                lines.append(
                    "to publish what the source says: `pubctl backfill all`, then "
                    "`pubctl apply` (or a running worker), then verify again"
                )
            if self.total("invalid"):
                lines.append(
                    "invalid rows cannot be published as they are: correct them in the "
                    "application (capture refuses such writes, and a backfill stops at them)"
                )
        return "\n".join(lines)
