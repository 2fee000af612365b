"""Draining the outbox into ``pub.content``: the loop around ``pub.apply_batch``.

The churn decision and the rev assignment are in SQL (``sql/schema/50_apply.sql``);
this module only calls one batch after another, each in its own transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg.rows import class_row, dict_row

from pubctl.errors import PubctlError
from pubctl.holders import LockHolder
from pubctl.queries import query

DEFAULT_BATCH_SIZE = 1000


@dataclass
class BatchResult:
    """What one ``pub.apply_batch`` call did."""

    consumed: int
    changed: int
    unchanged: int
    dropped: int


@dataclass
class ApplyTotals:
    """What a whole drain did."""

    batches: int = 0
    consumed: int = 0
    changed: int = 0
    unchanged: int = 0
    dropped: int = 0

    def merge(self, other: ApplyTotals) -> None:
        """Add another drain's totals to these."""
        self.batches += other.batches
        self.add_counts(other)

    def add(self, result: BatchResult) -> None:
        """Count one batch."""
        self.batches += 1
        self.add_counts(result)

    def add_counts(self, other: BatchResult | ApplyTotals) -> None:
        self.consumed += other.consumed
        self.changed += other.changed
        self.unchanged += other.unchanged
        self.dropped += other.dropped

    def summary(self) -> str:
        """One line for humans."""
        return (
            f"{self.batches} batch{'' if self.batches == 1 else 'es'}, "
            f"{self.consumed} outbox rows consumed: "
            f"{self.changed} items changed, {self.unchanged} unchanged, {self.dropped} dropped"
        )


class ApplierBusy(PubctlError):
    """Another apply batch held the applier's lock for longer than pub.apply_batch waits."""


def apply_batch(conn: psycopg.Connection[tuple[object, ...]], batch_size: int) -> BatchResult:
    """Apply one batch in its own transaction (``conn`` must be in autocommit mode)."""
    try:
        with conn.cursor(row_factory=class_row(BatchResult)) as cur:
            result = cur.execute(query("apply_batch"), {"batch_size": batch_size}).fetchone()
    except psycopg.errors.LockNotAvailable:
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(query("applier_holders")).fetchall()
        names = "; ".join(LockHolder.from_row(r).describe() for r in rows) or "(it just ended)"
        raise ApplierBusy(
            f"another apply batch held the applier's lock for 10s: {names}",
            hint="an applier stuck inside a batch: end that session (pg_terminate_backend)",
        ) from None
    assert result is not None
    return result


def drain(
    conn: psycopg.Connection[tuple[object, ...]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[BatchResult], None] | None = None,
) -> ApplyTotals:
    """Apply batches until the outbox has nothing committed left (or ``should_stop``)."""
    totals = ApplyTotals()
    while not should_stop():
        result = apply_batch(conn, batch_size)
        if result.consumed == 0:
            break
        totals.add(result)
        if on_batch is not None:
            on_batch(result)
    return totals
