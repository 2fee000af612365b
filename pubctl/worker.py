"""``pubctl worker``: apply continuously, woken by NOTIFY, polling as a fallback.

Stops cleanly on SIGTERM or SIGINT between batches. A batch is one transaction, so a
SIGKILL at any moment loses nothing and publishes nothing twice: the killed batch's
transaction rolls back and the next worker applies those outbox rows again.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType

import psycopg

from pubctl import apply, db
from pubctl.queries import query
from pubctl.revision import require_current

log = logging.getLogger("pubctl.worker")

WAIT_SLICE_S = 0.25
MAX_BACKOFF_S = 30.0
SUMMARY_EVERY_S = 60.0


class StopFlag:
    """Set by SIGTERM/SIGINT; checked between batches and while waiting."""

    def __init__(self) -> None:
        self.stopped = False
        self.signal_name = ""

    def __call__(self) -> bool:
        return self.stopped

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        self.stopped = True
        self.signal_name = signal.Signals(signum).name

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.handler)
        signal.signal(signal.SIGINT, self.handler)


def _wait_for_notify(
    conn: psycopg.Connection[tuple[object, ...]], poll_interval: float, stop: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + poll_interval
    while not stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        for _note in conn.notifies(timeout=min(WAIT_SLICE_S, left), stop_after=1):
            return


class _PeriodicSummary:
    """What was applied, logged at most once per SUMMARY_EVERY_S: under a steady load
    the worker wakes many times a second, and one line per wake-up would flood the log
    (``-v`` logs every batch instead)."""

    def __init__(self) -> None:
        self.totals = apply.ApplyTotals()
        self.since = time.monotonic()

    def add(self, totals: apply.ApplyTotals) -> None:
        self.totals.merge(totals)
        if self.totals.batches and time.monotonic() - self.since >= SUMMARY_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self.totals.batches:
            log.info(
                "applied %s in the last %.0fs",
                self.totals.summary(),
                time.monotonic() - self.since,
            )
        self.totals = apply.ApplyTotals()
        self.since = time.monotonic()


def run(
    url: str,
    *,
    batch_size: int = apply.DEFAULT_BATCH_SIZE,
    poll_interval: float = 5.0,
    stop: StopFlag | None = None,
) -> None:
    """Run until stopped; reconnects with backoff when the database goes away.

    The first connection must succeed: a wrong URL or password fails at once (exit 3)
    instead of retrying silently; a service manager restarts the worker if needed.
    """
    stop = stop or StopFlag()
    backoff = 0.5
    down_since: float | None = None
    connected_once = False
    summary = _PeriodicSummary()
    while not stop():
        try:
            with db.connect(url, autocommit=True) as conn:
                connected_once = True
                require_current(conn, db.describe(url))
                conn.execute(query("worker_presence_lock"))
                conn.execute(query("listen_outbox"))
                if down_since is not None:
                    log.warning(
                        "reconnected after %.1fs without the database",
                        time.monotonic() - down_since,
                    )
                    down_since = None
                backoff = 0.5
                log.info("worker started on %s (batch size %d)", db.describe(url), batch_size)
                while not stop():
                    try:
                        totals = apply.drain(
                            conn,
                            batch_size,
                            should_stop=stop,
                            on_batch=lambda r: log.debug(
                                "batch: %d rows, %d changed, %d unchanged, %d dropped",
                                r.consumed, r.changed, r.unchanged, r.dropped,
                            ),
                        )  # fmt: skip
                        summary.add(totals)
                    except apply.ApplierBusy as busy:
                        # Another applier is wedged inside a batch: keep polling.
                        log.warning("%s", busy)
                    _wait_for_notify(conn, poll_interval, stop)
        except (psycopg.OperationalError, db.ConnectError) as exc:
            if not connected_once:
                raise
            if down_since is None:
                down_since = time.monotonic()
                log.warning(
                    "lost the database (%s); retrying",
                    db.mask(next(iter(str(exc).splitlines()), type(exc).__name__), url),
                )
            deadline = time.monotonic() + backoff
            while time.monotonic() < deadline and not stop():
                time.sleep(0.1)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
    summary.flush()
    log.info("worker stopped (%s)", stop.signal_name or "stop requested")
