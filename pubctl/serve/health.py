"""The connection of its own that ``/healthz`` and the head re-reads use.

``/healthz`` must answer within a second however busy the request pool is, so it never
borrows from that pool: ``HealthProbe`` keeps one connection (opened through
``pubctl.db`` like every other, reopened when lost) and runs ``pub.health()`` on it,
one query at a time. Callers that arrive while a query runs share it, so a flood of
health checks costs one query at a time, not one each. A caller gives up after its
own timeout while the query goes on; a query that hangs is abandoned (and its
connection closed) after ``QUERY_LIMIT_S``.

The same query tells the ``Notifier`` (``listener.py``) what was last published: a
re-read asks for a *fresh* row, read by a query that started after it asked, since
it must see the commit whose notification prompted it.

On a streaming standby the same row says so, with the replay lag (seconds and bytes
between the received and the replayed WAL) and whether WAL still streams in: built-in
functions every role may call, in the same query, so ``/healthz`` costs no more there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import psycopg

from pubctl import db
from pubctl.queries import query

APPLICATION_NAME = "pubctl serve health"
# A query (connecting included) still running after this long is abandoned.
QUERY_LIMIT_S = 5.0

# revision, feed_id, last_rev: what pub.health() returns; then replica, replay_lag_s,
# replay_lag_bytes, streaming (the last three None on a primary).
HealthRow = tuple[Any, ...]
HEALTH_COLUMNS = 7


class HealthProbe:
    """One connection, one ``pub.health()`` query at a time, shared by every caller."""

    def __init__(
        self,
        url: str,
        *,
        on_query: Callable[[str], None] = lambda _purpose: None,
    ) -> None:
        self.url = url
        self.on_query = on_query
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        # The query running or last run, and when it started (loop time).
        self._flight: asyncio.Task[HealthRow] | None = None
        self._started = 0.0

    async def read(
        self, purpose: str, *, fresh: bool = False, timeout: float | None = None
    ) -> HealthRow:
        """The row of ``pub.health()``. ``fresh``: from a query that started after this
        call (else a query already running will do). Raises ``TimeoutError`` when no row
        came within ``timeout`` seconds (the query goes on for later callers), and the
        query's ``psycopg.Error`` when it failed."""
        loop = asyncio.get_running_loop()
        asked = loop.time()
        deadline = None if timeout is None else asked + timeout
        while True:
            flight = self._flight
            if flight is None or flight.done():
                flight = self._start(purpose)
            started = self._started
            left = None if deadline is None else max(deadline - loop.time(), 0.0)
            done, _pending = await asyncio.wait((flight,), timeout=left)
            if not done:
                raise TimeoutError(f"pub.health() did not answer within {timeout:g}s")
            if fresh and started < asked:
                continue  # it may have missed what the caller wants to see: once more
            return flight.result()

    def _start(self, purpose: str) -> asyncio.Task[HealthRow]:
        loop = asyncio.get_running_loop()
        self._started = loop.time()
        flight = loop.create_task(self._query(purpose), name="pubctl-health")
        flight.add_done_callback(_retrieved)
        self._flight = flight
        return flight

    async def _query(self, purpose: str) -> HealthRow:
        try:
            return await asyncio.wait_for(self._query_once(purpose), QUERY_LIMIT_S)
        except (psycopg.Error, asyncio.TimeoutError, asyncio.CancelledError) as exc:
            conn = self._conn
            if conn is not None and (
                conn.broken or conn.closed or not isinstance(exc, psycopg.Error)
            ):
                self._conn = None
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
            raise

    async def _query_once(self, purpose: str) -> HealthRow:
        conn = self._conn
        if conn is not None and not (conn.closed or conn.broken):
            try:
                return await self._run(conn, purpose)
            except psycopg.OperationalError:
                if not (conn.closed or conn.broken):
                    raise
                # Lost since its last use (a database restart): once more, on a new one.
                self._conn = None
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
        self._conn = None
        conn = await db.connect_async(self.url, autocommit=True, application_name=APPLICATION_NAME)
        self._conn = conn
        return await self._run(conn, purpose)

    async def _run(self, conn: psycopg.AsyncConnection[tuple[Any, ...]], purpose: str) -> HealthRow:
        self.on_query(purpose)
        cur = await conn.execute(query("serve_health_replay"))
        row = await cur.fetchone()
        return tuple(row) if row is not None else (None,) * HEALTH_COLUMNS

    async def close(self) -> None:
        flight, self._flight = self._flight, None
        if flight is not None and not flight.done():
            flight.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await flight
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


def _retrieved(flight: asyncio.Task[HealthRow]) -> None:
    """Its error is each caller's to report; none is left "never retrieved"."""
    if not flight.cancelled():
        flight.exception()
