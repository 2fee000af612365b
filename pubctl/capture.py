"""Capture seen from outside: whether it can miss writes, and the publishing switch.

The triggers themselves are SQL (``sql/schema/40_capture.sql``); this module holds what
``status``, ``verify``, ``enable``, ``disable`` and ``backfill`` ask of them:

* :func:`problems`: everything that would let writes go unpublished without failing
  (one query, ``pub.capture_problems()``, for status and verify alike);
* :func:`set_publishing`: the switch;
* :func:`wait_for_unpublished_writers`: the barrier ``enable`` and a backfill's first
  page pass, the way ``CREATE INDEX CONCURRENTLY`` waits for older transactions. A
  transaction that skipped capture because publishing was off holds
  ``pub.unpublished_writers`` ROW EXCLUSIVE until it ends; the barrier waits until none
  is left, so that a backfill started afterwards sees every write they made.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row

from pubctl.errors import PubctlError
from pubctl.holders import LockHolder
from pubctl.queries import query

LOCK_NOT_AVAILABLE = "55P03"
WAIT_SLICE_S = 1.0
DEFAULT_WAIT_TIMEOUT_S = 300.0

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Problem:
    """One way capture can miss writes: what (a trigger, a table, a role) and why."""

    subject: str
    problem: str

    @property
    def is_switch(self) -> bool:
        """Publishing switched off: a choice, not a fault of capture."""
        return self.subject == "publishing"

    def __str__(self) -> str:
        return f"{self.subject}: {self.problem}"


@dataclass(frozen=True)
class Switch:
    """The row of ``pub.settings``: the switch, and where the application's tables are."""

    publishing_enabled: bool
    app_schema: str
    changed_at: datetime


def switch(conn: Conn) -> Switch:
    """The publishing switch and the application's schema, as recorded."""
    with conn.cursor(row_factory=class_row(Switch)) as cur:
        row = cur.execute(query("settings")).fetchone()
    assert row is not None, "pub.settings holds one row"
    return row


def problems(conn: Conn) -> list[Problem]:
    """Everything that would make capture miss writes without failing them."""
    with conn.cursor(row_factory=class_row(Problem)) as cur:
        return cur.execute(query("capture_problems")).fetchall()


def set_publishing(conn: Conn, enabled: bool) -> None:
    """Switch publishing on or off (committed when this returns)."""
    with conn.transaction():
        conn.execute(query("set_publishing"), {"enabled": enabled})


# An open transaction that wrote while publishing was off.
UnpublishedWriter = LockHolder


def unpublished_writers(conn: Conn) -> list[UnpublishedWriter]:
    """The open transactions that wrote while publishing was off."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query("unpublished_writers")).fetchall()
    return [LockHolder.from_row(r) for r in rows]


class WaitInterrupted(PubctlError):
    """Stopped (SIGTERM, SIGINT) while waiting for writers from before ``enable``."""


def wait_for_unpublished_writers(
    conn: Conn,
    timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
    on_wait: Callable[[list[UnpublishedWriter], float], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> float:
    """Wait until no transaction that wrote while publishing was off is open.

    Returns the seconds waited. Each attempt waits at most a second for the lock (so
    that writers queued behind the request are held no longer), then reports who is
    still open through ``on_wait``. Raises ``PubctlError`` naming them after
    ``timeout_s``, ``WaitInterrupted`` when ``should_stop`` says so.
    """
    started = time.monotonic()
    while True:
        if should_stop():
            raise WaitInterrupted("stopped while waiting for writers from before `enable`")
        try:
            with conn.transaction():
                conn.execute(
                    query("set_lock_timeout"), {"ms": f"{max(1, int(WAIT_SLICE_S * 1000))}ms"}
                )
                conn.execute(query("unpublished_writers_lock"))
            return time.monotonic() - started
        except psycopg.errors.LockNotAvailable:
            pass
        waited = time.monotonic() - started
        open_writers = unpublished_writers(conn)
        if on_wait is not None and open_writers:
            on_wait(open_writers, waited)
        if waited >= timeout_s:
            names = "; ".join(w.describe() for w in open_writers) or "(they just ended)"
            raise PubctlError(
                f"{len(open_writers)} transaction(s) that wrote while publishing was off "
                f"are still open after {waited:.0f}s: {names}",
                hint="their writes are published only by a backfill started after they end: "
                "end them (or wait longer with --wait-timeout), then run `pubctl backfill all`",
            )
