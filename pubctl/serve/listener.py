"""Waking long-polls: one LISTEN connection for the whole server, notifications as hints.

Every waiting request waits on the ``Notifier``, in memory; none holds a database
connection. One ``Listener`` task keeps a single connection listening on
``pubctl_published`` (sent by each apply batch that published something, when it
commits) and tells the ``Notifier`` that something *may* have been published.

A notification is only a hint. Any role that may connect can send one, with any
payload, as often as it likes, so its payload is never read and no waiter is answered
because of it. The ``Notifier`` re-reads what was really published, the feed identity
and its last rev (``pub.health()``, one cheap query), at most once per
``REREAD_INTERVAL_S`` however many notifications arrive, and always once after the
last of them. Only when that head has moved does it wake the waiters, and each waiter
re-reads the feed only when the head moved past the rev it waits past (or the feed
identity changed). A burst of notifications, forged or real, therefore costs a few
head re-reads and never a query per waiter.

When the listening connection is lost, notifications sent meanwhile are lost with it:
the listener reconnects with backoff and, once listening again, asks for a re-read
(and reports the reconnection). The first connection asks for a re-read too, so a
request that arrived before the server was listening is re-checked as well, but it is
no reconnection: ``on_reconnect`` fires only for a connection that follows a lost one.

A streaming hot standby cannot LISTEN (and the primary's notifications would come
before the standby has replayed the commit anyway). The listener asks on every
connection whether the server is in recovery; on a standby it watches replay instead:
every ``REPLAY_POLL_S`` it reads the replayed WAL position (``pg_last_wal_replay_lsn()``,
no table touched) on its one connection, and hints the ``Notifier`` only when that
position moved. The ``Notifier`` then re-reads the head as after a notification, so
one cheap query per poll serves every waiter of the process, and a long-poll is
answered within about ``REPLAY_POLL_S`` plus one head read of the change's replay.
When the standby is promoted (recovery ends), the same connection starts listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from pubctl import db
from pubctl.queries import query

log = logging.getLogger("pubctl.serve")

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
# At most one re-read of the head starts per interval, whatever the notifications.
REREAD_INTERVAL_S = 0.1
# A re-read that failed is tried again after this long, then less often, down to once
# per REREAD_MAX_RETRY_S (one cheap attempt; the listener's return is not kept waiting).
REREAD_RETRY_S = 0.5
REREAD_MAX_RETRY_S = 2.0
# On a standby: how often the replayed WAL position is read.
REPLAY_POLL_S = 0.25


@dataclass(frozen=True)
class Head:
    """What the database says was last published: the feed identity and its last rev,
    and the pubctl revision it is at (a migration may rewrite what pages hold without
    publishing anything)."""

    feed_id: str
    last_rev: int
    revision: str = ""

    def past(self, feed_id: str, rev: int) -> bool:
        """Whether a reader that found nothing newer than ``rev`` in feed ``feed_id``
        may now find something: the last rev moved past it, or the feed was replaced."""
        return self.last_rev > rev or self.feed_id != feed_id


class Notifier:
    """Where long-polls wait for the head to move.

    ``generation`` counts the times the head changed (and the stop). A waiter reads it
    together with ``head`` before it reads the feed and waits for it to move past that
    value, so a change arriving between its read and its wait is never lost.
    """

    def __init__(
        self,
        read_head: Callable[[], Awaitable[Head]],
        *,
        interval: float = REREAD_INTERVAL_S,
        retry: float = REREAD_RETRY_S,
    ) -> None:
        self.generation = 0
        self.head: Head | None = None
        # False from a failed re-read of the head until one succeeds: the head may have
        # moved unseen meanwhile (nothing is answered from memory then).
        self.fresh = True
        self.closing = False
        self.interval = interval
        self.retry = retry
        self._read_head = read_head
        self._woken: asyncio.Future[None] | None = None
        self._pending = False
        # A check asked for (not a notification): read at once, outside the throttle.
        self._check = False
        self._next_read = -math.inf
        self._task: asyncio.Task[None] | None = None

    def _wake(self) -> None:
        self.generation += 1
        woken, self._woken = self._woken, None
        if woken is not None and not woken.done():
            woken.set_result(None)

    def hint(self) -> None:
        """Something may have been published (a notification, whatever its payload, or
        a listener that may have missed some): re-read the head soon. A re-read starts
        at once unless one that found nothing new started less than ``interval`` ago
        (forged notifications cost at most one re-read per interval; real publishes,
        each of which moves the head, are read at once); one always starts after the
        last hint."""
        if self.closing:
            return
        self._pending = True
        self._start()

    def check(self) -> None:
        """Re-read the head once, outside the throttle of ``hint`` and without moving
        it: for the server's own periodic check and for reads that found another head.
        Hints are what notifications send, and only they are throttled; a check that
        delayed the next notification's re-read would delay every long-poll behind it
        (a check every 2 s, or a health probe, right before a publish)."""
        if self.closing:
            return
        self._check = True
        self._start()

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._reread(), name="pubctl-head")

    async def _reread(self) -> None:
        loop = asyncio.get_running_loop()
        retry = self.retry
        try:
            while (self._pending or self._check) and not self.closing:
                if self._pending:
                    delay = self._next_read - loop.time()
                    if delay > 0 and not self._check:
                        await asyncio.sleep(delay)
                        continue
                    if delay <= 0:
                        self._pending = False
                        self._next_read = loop.time() + self.interval
                self._check = False
                try:
                    head = await self._read_head()
                except Exception as exc:
                    self.fresh = False
                    if retry == self.retry:  # the first failure of a run: once
                        log.warning(
                            "cannot read the last published rev (%s); retrying, long-polls "
                            "wake on their timeout meanwhile",
                            next(iter(str(exc).splitlines()), "") or type(exc).__name__,
                        )
                    self._pending = True
                    self._next_read = loop.time() + retry
                    retry = min(retry * 2, REREAD_MAX_RETRY_S)
                    continue
                if retry != self.retry:
                    log.warning("the last published rev is read again")
                retry = self.retry
                self.fresh = True
                if self.observe(head):
                    # Something was published: the next notification is likely another
                    # publish, read at once. Only re-reads that found nothing new (a
                    # notification anyone may send) hold the next one back.
                    self._next_read = -math.inf
        finally:
            self._task = None

    def observe(self, head: Head) -> bool:
        """The database says ``head`` was last published (read after every change this
        server was told of): waiters wake if it differs from what they last saw. True
        when it did."""
        if head != self.head:
            self.head = head
            self._wake()
            return True
        return False

    def close(self) -> None:
        """The server is stopping: release every waiter now."""
        self.closing = True
        self._wake()

    async def stop(self) -> None:
        self.close()
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_past(self, generation: int, timeout: float) -> bool:
        """Wait until ``self.generation`` moves past ``generation``; False on timeout."""
        if self.generation != generation:
            return True
        # One future per generation, shared by every waiter: waking thousands of them is
        # one set_result, and asyncio.wait needs no task per waiter (wait_for does).
        if self._woken is None:
            self._woken = asyncio.get_running_loop().create_future()
        done, _pending = await asyncio.wait((self._woken,), timeout=timeout)
        return bool(done) or self.generation != generation


class Listener:
    """Keeps one connection listening and feeds the ``Notifier``."""

    def __init__(
        self,
        url: str,
        notifier: Notifier,
        *,
        on_notification: Callable[[], None] = lambda: None,
        on_reconnect: Callable[[], None] = lambda: None,
    ) -> None:
        self.url = url
        self.notifier = notifier
        self.connected = False
        self.on_notification = on_notification
        self.on_reconnect = on_reconnect
        self.replay_poll = REPLAY_POLL_S
        # What the last connection found: a standby in recovery (its replay is watched
        # instead of listening), and its replay lag in seconds as last read.
        self.replica = False
        self.replay_lag_s: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._backoff = FIRST_BACKOFF_S
        self._down_since: float | None = None
        # Whether a connection was ever listening: the next one is a reconnection.
        self._was_listening = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="pubctl-listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _listen(self) -> None:
        async with await db.connect_async(
            self.url, autocommit=True, application_name="pubctl serve listener"
        ) as conn:
            position = await self._replay_position(conn)
            self.replica = position is not None
            if not self.replica:
                await conn.execute(query("listen_published"))
            self.connected = True
            self._backoff = FIRST_BACKOFF_S
            if self._down_since is not None:
                log.warning(
                    "listener reconnected after %.1fs without the database",
                    asyncio.get_running_loop().time() - self._down_since,
                )
                self._down_since = None
            # Notifications may have been missed while not listening.
            self.notifier.hint()
            if self._was_listening:
                self.on_reconnect()
            self._was_listening = True
            if position is not None:
                log.info(
                    "the database is a standby in recovery: long-polls wake when its replay "
                    "moves (read every %gs)",
                    self.replay_poll,
                )
                await self._watch_replay(conn, position)
                # Promoted: listen from now on, and catch what was published meanwhile.
                await conn.execute(query("listen_published"))
                self.replica = False
                self.replay_lag_s = None
                log.warning("the standby was promoted: listening for publishes from now on")
                self.notifier.hint()
            async for _note in conn.notifies():
                # A hint, whoever sent it: the payload is never read.
                self.notifier.hint()
                self.on_notification()

    async def _replay_position(self, conn: psycopg.AsyncConnection[Any]) -> str | None:
        """The replayed WAL position of a standby in recovery (None: not in recovery)."""
        cur = await conn.execute(query("replay_position"))
        row = await cur.fetchone()
        assert row is not None
        in_recovery, position, lag = row
        self.replay_lag_s = None if lag is None else float(lag)
        return str(position) if in_recovery else None

    async def _watch_replay(self, conn: psycopg.AsyncConnection[Any], position: str) -> None:
        """On a standby: hint the notifier whenever the replayed position moves, until
        recovery ends (promotion). One query per poll, whatever the number of waiters."""
        while True:
            await asyncio.sleep(self.replay_poll)
            now = await self._replay_position(conn)
            if now is None:
                return
            if now != position:
                position = now
                self.notifier.hint()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            reason = "the server closed the connection"
            try:
                await self._listen()
            except psycopg.Error as exc:
                reason = db.mask(next(iter(str(exc).splitlines()), type(exc).__name__), self.url)
            self.connected = False
            if self._down_since is None:
                self._down_since = loop.time()
                log.warning(
                    "listener lost the database (%s); retrying, long-polls wake on their "
                    "timeout meanwhile",
                    reason,
                )
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
