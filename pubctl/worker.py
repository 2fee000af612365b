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
from typing import Protocol

import psycopg

from pubctl import apply, db, feed
from pubctl.queries import query
from pubctl.revision import require_current

log = logging.getLogger("pubctl.worker")

WAIT_SLICE_S = 0.25
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


class Observer(Protocol):
    """What the worker reports as it goes (the metrics server's figures)."""

    def connected(self, *, again: bool) -> None: ...

    def disconnected(self) -> None: ...

    def batch_applied(self, seconds: float) -> None: ...


class _NoObserver:
    def connected(self, *, again: bool) -> None:
        pass

    def disconnected(self) -> None:
        pass

    def batch_applied(self, seconds: float) -> None:
        pass


def run(
    url: str,
    *,
    batch_size: int = apply.DEFAULT_BATCH_SIZE,
    poll_interval: float = 5.0,
    stop: StopFlag | None = None,
    observer: Observer | None = None,
) -> None:
    """Run until stopped. While the database is away, tries to reconnect about every
    second (with jitter), and catches up as soon as it is back.

    The first connection must succeed: a wrong URL or password fails at once (exit 3)
    instead of retrying silently; a service manager restarts the worker if needed. When
    the published state is removed or replaced under it, it stops with
    :class:`pubctl.feed.StateLost` (exit 3): a worker must not go on with a state it did
    not start with.
    """
    stop = stop or StopFlag()
    seen = observer or _NoObserver()
    where = db.describe(url)
    down_since: float | None = None
    identity: str | None = None
    summary = _PeriodicSummary()
    while not stop():
        try:
            with db.connect(url, autocommit=True) as conn:
                identity = _check_state(conn, where, identity)
                conn.execute(query("worker_presence_lock"))
                conn.execute(query("listen_outbox"))
                if down_since is None:
                    log.info("worker started on %s (batch size %d)", where, batch_size)
                    seen.connected(again=False)
                else:
                    log.warning(
                        "reconnected after %.1fs without the database",
                        time.monotonic() - down_since,
                    )
                    down_since = None
                    seen.connected(again=True)
                while not stop():
                    _check_state(conn, where, identity)
                    try:
                        summary.add(_drain(conn, batch_size, stop, seen))
                    except apply.ApplierBusy as busy:
                        # Another applier is wedged inside a batch: keep polling.
                        log.warning("%s", busy)
                    _wait_for_notify(conn, poll_interval, stop)
        except (psycopg.OperationalError, db.ConnectError) as exc:
            if identity is None:
                raise
            seen.disconnected()
            if down_since is None:
                down_since = time.monotonic()
                log.warning(
                    "lost the database (%s); retrying",
                    db.mask(next(iter(str(exc).splitlines()), type(exc).__name__), url),
                )
            deadline = time.monotonic() + feed.retry_delay()
            while time.monotonic() < deadline and not stop():
                time.sleep(0.05)
        except psycopg.Error:
            # Dropped under the open connection ("schema pub does not exist", "could not
            # open relation with OID ..."): say what happened instead.
            if identity is None:
                raise
            became = feed.what_became_of(url, identity)
            if became is None:
                raise
            raise feed.state_lost(became[0], where, identity, became[1], "worker") from None
    summary.flush()
    log.info("worker stopped (%s)", stop.signal_name or "stop requested")


def _check_state(
    conn: psycopg.Connection[tuple[object, ...]], where: str, identity: str | None
) -> str:
    """The feed id of the published state; StateLost when it is not ``identity`` (None:
    the first look, which requires this pubctl's revision)."""
    if identity is None:
        require_current(conn, where)
    current = feed.current_identity(conn)
    if identity is not None and current != identity:
        what = "removed" if current is None else "replaced"
        raise feed.state_lost(what, where, identity, current, "worker")
    if current is None:
        require_current(conn, where)  # names `pubctl migrate`
        raise AssertionError("migrated, yet no feed id")
    return current


def _drain(
    conn: psycopg.Connection[tuple[object, ...]],
    batch_size: int,
    stop: StopFlag,
    seen: Observer,
) -> apply.ApplyTotals:
    started = time.monotonic()

    def on_batch(r: apply.BatchResult) -> None:
        nonlocal started
        now = time.monotonic()
        seen.batch_applied(now - started)
        started = now
        log.debug(
            "batch: %d rows, %d changed, %d unchanged, %d dropped",
            r.consumed, r.changed, r.unchanged, r.dropped,
        )  # fmt: skip

    return apply.drain(conn, batch_size, should_stop=stop, on_batch=on_batch)
