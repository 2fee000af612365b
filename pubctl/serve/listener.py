"""Waking long-polls: one LISTEN connection for the whole server.

Every waiting request waits on the ``Notifier``, in memory; none holds a database
connection. One ``Listener`` task keeps a single connection listening on
``pubctl_published`` (sent by each apply batch that published something, when it
commits, with the new last rev as payload) and wakes every waiter at once.

When that connection is lost, notifications sent meanwhile are lost with it: the
listener reconnects with backoff and, once listening again, wakes every waiter so that
each re-reads the feed. The first connection counts as a reconnection too, so a request
that arrived before the server was listening is re-checked as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg

from pubctl import db
from pubctl.queries import query

log = logging.getLogger("pubctl.serve")

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0


class Notifier:
    """Where long-polls wait for something newer to be published.

    ``generation`` counts wake-ups. A waiter reads it before it reads the feed and
    waits for it to move past that value, so a notification arriving between its read
    and its wait is never lost.
    """

    def __init__(self) -> None:
        self.generation = 0
        self.max_rev = 0
        self.reset_generation = 0
        self.closing = False
        self._woken: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        self.generation += 1
        woken, self._woken = self._woken, None
        if woken is not None and not woken.done():
            woken.set_result(None)

    def published(self, rev: int) -> None:
        """The applier committed a batch whose last rev is ``rev``."""
        self.max_rev = max(self.max_rev, rev)
        self._wake()

    def reset(self) -> None:
        """Notifications may have been missed: every waiter must re-read."""
        self._wake()
        self.reset_generation = self.generation

    def close(self) -> None:
        """The server is stopping: release every waiter now."""
        self.closing = True
        self._wake()

    def newer_since(self, generation: int, after: int) -> bool:
        """Whether a waiter that last read at ``generation`` with cursor ``after`` may
        find something new: a rev beyond its cursor was published, or notifications
        may have been missed since."""
        return self.max_rev > after or self.reset_generation > generation

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
        self._task: asyncio.Task[None] | None = None
        self._backoff = FIRST_BACKOFF_S
        self._down_since: float | None = None

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
            await conn.execute(query("listen_published"))
            self.connected = True
            self._backoff = FIRST_BACKOFF_S
            if self._down_since is not None:
                log.warning(
                    "listener reconnected after %.1fs without the database",
                    asyncio.get_running_loop().time() - self._down_since,
                )
                self._down_since = None
            self.notifier.reset()
            self.on_reconnect()
            async for note in conn.notifies():
                try:
                    rev = int(note.payload)
                except ValueError:
                    self.notifier.reset()
                else:
                    self.notifier.published(rev)
                self.on_notification()

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
