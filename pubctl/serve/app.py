"""The ASGI application of ``pubctl serve``: the feed, health and metrics routes.

Requests borrow a connection from one ``AsyncConnectionPool`` only while their query
runs. A long-poll that finds nothing new waits on the in-memory ``Notifier`` (see
``listener.py``), holding no connection, and re-reads the feed only once the head
(the last published rev, read by the server itself) has moved past the rev it waits
past. Long-polls with the same question share their reads: the first read of those
that arrive together (a crowd reconnecting) and the re-read of those woken together
are one query and one encoded body. ``/healthz`` and the head re-reads use a
connection of their own (``health.py``), never the pool.

A request without ``wait`` is answered from the page cache (``cache.py``) while the
head it was read at still stands: a hot page and its 304 cost no query. Misses of the
same question at the same head share one read, as long-polls do.

Caching by others: every answer carries ``Cache-Control``. A 200 without ``wait`` says
``public, max-age=S`` with ``--cache-max-age S`` (a CDN or proxy may serve it to other
viewers for S seconds; a stale page is harmless, see ``docs/viewer.md``), else
``no-cache`` (any cache must ask again; no shared cache stores it for a request with a
token). A 304 says what the 200 it validates would say (RFC 9110, 15.4.5). Long-polls,
errors, ``/healthz`` and ``/metrics`` say ``no-store``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pubctl import db
from pubctl.feed import PAGE_MAX_BYTES
from pubctl.queries import query
from pubctl.serve import openapi, protocol
from pubctl.serve.auth import TokenCheck
from pubctl.serve.cache import PageCache
from pubctl.serve.diagnosis import UNAVAILABLE, WRONG_REVISION, diagnose, wrong_revision
from pubctl.serve.health import HealthProbe, HealthRow
from pubctl.serve.listener import Head, Listener, Notifier
from pubctl.serve.metrics import CONTENT_TYPE, Metrics
from pubctl.serve.page import Page
from pubctl.serve.params import BadParameter, FeedParams, parse_feed_query

log = logging.getLogger("pubctl.serve")

DEFAULT_POOL_SIZE = 10
DEFAULT_POOL_TIMEOUT_S = 5.0
# While the listener has lost the database, a request waits at most this long for a
# pool connection: the database is likely down, and a viewer should get its 503 (and
# Retry-After) within about a second, not after the full pool timeout.
DOWN_POOL_TIMEOUT_S = 0.8
# /healthz answers within a second: 503 when pub.health() has not answered by then.
HEALTH_TIMEOUT_S = 0.8
# An empty page read for a long-poll serves the long-polls with the same question that
# arrive within this long, while the head has not moved (a crowd reconnecting).
EMPTY_PAGE_TTL_S = 1.0
MAX_EMPTY_PAGES = 4096
# A reconnection that keeps failing is abandoned after this long; the next request
# then starts a fresh one at once instead of waiting out a long backoff.
POOL_RECONNECT_TIMEOUT_S = 10.0
# The head is read again this often even when nothing says it moved: a migration (an
# upgrade, a downgrade, the published state dropped and created again) sends no
# notification, and kept pages must not outlive it by more than this. One pub.health()
# on the health connection.
HEAD_CHECK_S = 2.0
RETRY_AFTER_UNREACHABLE_S = 5
RETRY_AFTER_BUSY_S = 1
JSON = "application/json"
NO_STORE = {"Cache-Control": "no-store"}
FEED_PATH = "/published/feed"
MAX_PARSED = 1024


@dataclass(frozen=True)
class ServeConfig:
    """What the application needs to know."""

    url: str
    tokens: tuple[str, ...] = ()
    pool_size: int = DEFAULT_POOL_SIZE
    pool_timeout: float = DEFAULT_POOL_TIMEOUT_S
    head_revision: str = ""
    # Seconds a CDN or proxy may serve a 200 without ``wait`` to any viewer (0: none).
    cache_max_age: int = 0
    page_max_bytes: int = PAGE_MAX_BYTES


class Unavailable(Exception):
    """The database cannot answer now: 503 with Retry-After."""

    def __init__(
        self, reason: str, retry_after: int, told: str | None = None, status: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        # What the viewer is told, when it is more than "retry later" (diagnosis.py),
        # and the status /healthz would give for it.
        self.told = told
        self.status = status


class FeedIdMismatch(Exception):
    """The cursor belongs to a published state that no longer exists: 409."""

    def __init__(self, current: str) -> None:
        super().__init__(current)
        self.current = current


def _json(status: int, content: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """An answer that is not a page: never cacheable."""
    body = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(
        body, status_code=status, media_type=JSON, headers={**NO_STORE, **(headers or {})}
    )


class _RawText(Loader):
    """Text values as the bytes the server sent: the page's items go into the body as
    they come, never decoded into a str and encoded again."""

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


async def _text_as_bytes(conn: psycopg.AsyncConnection[Any]) -> None:
    # The pool runs the feed query only: its text columns (the feed id and the items)
    # come as UTF-8 bytes (the session's client_encoding, psycopg's default).
    conn.adapters.register_loader("text", _RawText)


def _splice() -> str:
    """serve's page query: feed_page_items inside serve_feed_page (sql/queries.sql)."""
    page = query("feed_page_items").rstrip().removesuffix(";")
    return query("serve_feed_page").replace("{feed_page_items}", page)


def _first_line(exc: BaseException) -> str:
    return next(iter(str(exc).strip().splitlines()), "") or type(exc).__name__


class FeedServer:
    """The pool, the listener and the long-polls of one running server."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.tokens = TokenCheck(config.tokens)
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]] = (
            AsyncConnectionPool(
                config.url,
                min_size=1,
                max_size=config.pool_size,
                open=False,
                kwargs={
                    "autocommit": True,
                    **db.session_kwargs(config.url, application_name="pubctl serve"),
                },
                configure=_text_as_bytes,
                check=AsyncConnectionPool.check_connection,
                reconnect_timeout=POOL_RECONNECT_TIMEOUT_S,
                name="pubctl-serve",
            )
        )
        self.metrics = Metrics(self.pool.get_stats)
        self._feed_queries = self.metrics.queries.labels("feed")
        self.probe = HealthProbe(config.url, on_query=self.metrics.count_query)
        self.notifier: Notifier | None = None
        self.listener: Listener | None = None
        # Long-poll reads by question and head generation: running, and found empty.
        self._flights: dict[tuple[Any, ...], asyncio.Task[Page]] = {}
        self._empty: dict[tuple[Any, ...], tuple[Page, float]] = {}
        self._empty_generation = 0
        self.waiting = 0
        # Pages without wait, by question, valid for one (head generation, epoch): see
        # _cached_page. The epoch moves when a read finds the database ahead of the
        # head this server knows, or the listener comes back after a loss.
        self.pages = PageCache()
        self._epoch = 0
        self._page_flights: dict[tuple[Any, ...], asyncio.Task[Page]] = {}
        self._cache = {r: self.metrics.page_cache.labels(r) for r in ("hit", "miss", "bypass")}
        self.metrics.page_cache_bytes.set_function(lambda: float(self.pages.bytes))
        self.metrics.page_cache_entries.set_function(lambda: float(len(self.pages)))
        self._page_query = _splice()
        self._head_check: asyncio.Task[None] | None = None

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.notifier = Notifier(self._read_head)
        self.listener = Listener(
            self.config.url,
            self.notifier,
            on_notification=self.metrics.notifications.inc,
            on_reconnect=self._listener_reconnected,
        )
        self.metrics.listener_connected.set_function(
            lambda: 1.0 if self.listener and self.listener.connected else 0.0
        )
        self.metrics.replica.set_function(
            lambda: 1.0 if self.listener and self.listener.replica else 0.0
        )
        self.metrics.replay_lag.set_function(
            lambda: (self.listener.replay_lag_s or 0.0) if self.listener else 0.0
        )
        await self.pool.open(wait=False)
        self.listener.start()
        self._head_check = asyncio.get_running_loop().create_task(
            self._check_head(), name="pubctl-head-check"
        )

    async def _check_head(self) -> None:
        """Read the head every ``HEAD_CHECK_S`` while listening: what no notification
        tells (a migration, a reinstall) still moves the head, and drops kept pages."""
        while True:
            await asyncio.sleep(HEAD_CHECK_S)
            if self.notifier is not None and self.listener is not None and self.listener.connected:
                self.notifier.check()

    def _listener_reconnected(self) -> None:
        # Publishes may have gone unheard while it was away: no kept page is trusted.
        self._epoch += 1
        self.metrics.listener_reconnects.inc()

    def begin_shutdown(self) -> None:
        """Answer every held long-poll now (SIGTERM); new ones are not held."""
        if self.notifier is not None and not self.notifier.closing:
            log.info("stopping: answering %d held long-polls now", self.waiting)
            self.notifier.close()

    async def stop(self) -> None:
        self.begin_shutdown()
        check, self._head_check = self._head_check, None
        if check is not None:
            check.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await check
        if self.listener is not None:
            await self.listener.stop()
        if self.notifier is not None:
            await self.notifier.stop()
        await self.probe.close()
        await self.pool.close()

    # -- the head: what was last published --------------------------------------------

    async def _read_head(self) -> Head:
        """A fresh read of the head, for the notifier (started after its hint)."""
        try:
            row = await self.probe.read("head", fresh=True)
        except psycopg.Error as exc:
            raise Unavailable(db.mask(_first_line(exc), self.config.url), 0) from None
        self.metrics.head(None if row[1] is None else str(row[1]), row[2])
        return _head(row)

    # -- reading the feed -------------------------------------------------------------

    def _pool_wait(self) -> float:
        """How long a request may wait for a pool connection now."""
        listener = self.listener
        if listener is not None and not listener.connected:
            return min(self.config.pool_timeout, DOWN_POOL_TIMEOUT_S)
        return self.config.pool_timeout

    async def _query_page(self, params: FeedParams) -> Page:
        try:
            async with self.pool.connection(timeout=self._pool_wait()) as conn:
                self._feed_queries.inc()
                cur = await conn.execute(
                    self._page_query,
                    {
                        "after_rev": params.after,
                        "limit": params.limit,
                        "kinds": list(params.kinds) if params.kinds else None,
                        "separator": ",",
                        "max_bytes": self.config.page_max_bytes,
                    },
                )
                row = await cur.fetchone()
        except PoolTimeout as exc:
            raise Unavailable(
                f"no database connection within {self._pool_wait():g}s "
                f"(pool of {self.config.pool_size} busy, or the database is unreachable): "
                f"{_first_line(exc)}",
                RETRY_AFTER_BUSY_S,
            ) from None
        except psycopg.Error as exc:
            status, reason = diagnose(exc, self.config.url)
            raise Unavailable(
                f"database error: {db.mask(_first_line(exc), self.config.url)}",
                RETRY_AFTER_UNREACHABLE_S,
                told=reason if status != UNAVAILABLE else None,
            ) from None
        assert row is not None  # the query always returns one row
        feed_id_bytes, count, last_rev, has_more, items, revision, head_rev = row
        page = Page(
            bytes(feed_id_bytes).decode(), params.after, items or b"", int(count),
            None if last_rev is None else int(last_rev), bool(has_more), params.kinds or (),
            revision=bytes(revision or b"").decode(), head_rev=int(head_rev or 0),
        )  # fmt: skip
        self._check_state(page)
        return page

    def _check_state(self, page: Page) -> None:
        """A read saw the database's head (feed id, last rev, revision) in the snapshot
        of ``page``. If that is a state this server does not know (a notification not
        heard yet, or not sent: a standby's replay between two polls, a migration), the
        server is answering from a newer state than its kept pages, even when the page
        itself holds no rev beyond the known head (an item that left its rev for a later
        one beyond the page): the kept pages go (the epoch moves), and the head is read
        again. Such a page is never kept (``_keep`` wants its state to be the head). A
        database at another pubctl revision answers 503, as ``/healthz`` does."""
        notifier = self.notifier
        if notifier is None:
            return
        state = _state(page)
        head = notifier.head
        older = (
            head is not None
            and (state.feed_id, state.revision) == (head.feed_id, head.revision)
            and state.last_rev < head.last_rev
        )
        if state != head and not older:
            # An older snapshot (a read that started before the head moved) is of no
            # concern: the head moved since it started, so it is not kept anyway.
            self._epoch += 1
            notifier.check()
        if page.revision != self.config.head_revision:
            raise self._wrong_revision(page.revision)

    def _wrong_revision(self, revision: str) -> Unavailable:
        reason = wrong_revision(revision, self.config.head_revision)
        return Unavailable(reason, RETRY_AFTER_UNREACHABLE_S, told=reason, status=WRONG_REVISION)

    def _cache_usable(self) -> bool:
        """Pages are kept only while the server hears of every move of the head: its
        listener (or a standby's replay watch) is up and the head was read, the last
        re-read included."""
        notifier, listener = self.notifier, self.listener
        return (
            notifier is not None
            and not notifier.closing
            and notifier.head is not None
            and notifier.fresh
            and listener is not None
            and listener.connected
        )

    async def _cached_page(self, params: FeedParams) -> Page:
        """A page without ``wait``: from the cache while the head it was read at still
        stands, else read (requests of the same question at the same head share one
        read) and kept if the head did not move while it was read."""
        notifier = self.notifier
        assert notifier is not None
        if not self._cache_usable():
            self._cache["bypass"].inc()
            return await self._query_page(params)
        key = (params.after, params.limit, params.kinds)
        token = (notifier.generation, self._epoch)
        page = self.pages.get(key, token)
        if page is not None:
            self._cache["hit"].inc()
            return page
        self._cache["miss"].inc()
        flight_key = (*key, *token)
        flight = self._page_flights.get(flight_key)
        if flight is None:
            flight = asyncio.get_running_loop().create_task(
                self._query_page(params), name="pubctl-feed-read"
            )
            self._page_flights[flight_key] = flight
            flight.add_done_callback(lambda done: self._keep(flight_key, done))
        await asyncio.wait((flight,))
        return flight.result()

    def _keep(self, flight_key: tuple[Any, ...], flight: asyncio.Task[Page]) -> None:
        if self._page_flights.get(flight_key) is flight:
            del self._page_flights[flight_key]
        if flight.cancelled() or flight.exception() is not None or self.notifier is None:
            return  # the error is each waiter's to report
        page = flight.result()
        if self._cache_usable() and _state(page) == self.notifier.head:
            now = (self.notifier.generation, self._epoch)
            self.pages.put(flight_key[:3], flight_key[3:], now, page)

    async def _long_poll_page(self, params: FeedParams) -> tuple[Page, Head | None, int]:
        """A long-poll's read of the feed, with the head and generation the notifier had
        when that read started (everything up to that head is in the page).

        Long-polls asking the same question at the same generation share one query and
        one encoded body: those arriving while it runs join it, and an empty page
        serves those arriving within ``EMPTY_PAGE_TTL_S`` after it (until the head
        moves), so a crowd reconnecting at once costs one query per distinct question.
        Any later publish moves the head past the one returned here and wakes them."""
        notifier = self.notifier
        assert notifier is not None
        generation, head = notifier.generation, notifier.head
        key = (params.after, params.limit, params.kinds, generation)
        loop = asyncio.get_running_loop()
        empty = self._empty.get(key)
        if empty is not None and loop.time() - empty[1] < EMPTY_PAGE_TTL_S:
            return empty[0], head, generation
        flight = self._flights.get(key)
        if flight is None:
            flight = loop.create_task(self._query_page(params), name="pubctl-feed-read")
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._landed(key, done))
        # Waiting without awaiting the task: a waiter that goes away leaves it running
        # for the others.
        await asyncio.wait((flight,))
        return flight.result(), head, generation

    def _landed(self, key: tuple[Any, ...], flight: asyncio.Task[Page]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if flight.cancelled() or flight.exception() is not None:
            return  # the error is each waiter's to report
        page = flight.result()
        notifier = self.notifier
        if page.count or notifier is None or key[-1] != notifier.generation:
            return
        if len(self._empty) >= MAX_EMPTY_PAGES or self._empty_generation != key[-1]:
            self._empty.clear()  # the head moved since: none of them is of use
            self._empty_generation = key[-1]
        self._empty[key] = (page, asyncio.get_running_loop().time())

    def _check_identity(self, params: FeedParams, page: Page) -> None:
        if params.feed_id is not None and params.feed_id != page.feed_id:
            raise FeedIdMismatch(page.feed_id)

    async def read_feed(self, params: FeedParams) -> Page:
        """The page after ``params.after``; with ``wait``, held until something newer is
        published, the wait is over, or the server stops."""
        notifier = self.notifier
        assert notifier is not None
        head = notifier.head
        if head is not None and head.revision != self.config.head_revision:
            raise self._wrong_revision(head.revision)
        if params.wait <= 0 or notifier.closing:
            page = await self._cached_page(params)
            self._check_identity(params, page)
            return page
        page, seen, generation = await self._long_poll_page(params)
        self._check_identity(params, page)
        if page.count or notifier.closing:
            return page
        loop = asyncio.get_running_loop()
        deadline = loop.time() + params.wait
        self.metrics.waiting.inc()
        self.waiting += 1
        try:
            while not notifier.closing:
                if notifier.generation != generation:
                    # The head changed: read the feed again only if it moved past what
                    # this page covers (an empty page covers up to the head seen
                    # before it was read, or the cursor if that is further).
                    generation, head = notifier.generation, notifier.head
                    covered = params.after
                    if seen is not None and seen.feed_id == page.feed_id:
                        covered = max(covered, seen.last_rev)
                    if head is not None and head.past(page.feed_id, covered):
                        page, seen, generation = await self._long_poll_page(params)
                        self._check_identity(params, page)
                        if page.count:
                            break
                    continue
                left = deadline - loop.time()
                if left <= 0 or not await notifier.wait_past(generation, left):
                    break
        finally:
            self.metrics.waiting.dec()
            self.waiting -= 1
        return page


def _head(row: HealthRow) -> Head:
    return Head(str(row[1]), int(row[2] or 0), str(row[0] or ""))


def _state(page: Page) -> Head:
    """The head of the snapshot ``page`` was read in."""
    return Head(page.feed_id, page.head_rev or 0, page.revision)


def replica_details(row: HealthRow) -> dict[str, Any]:
    """What ``/healthz`` says of a standby (health.py): ``replica``, and on a standby how
    far its replay is behind the WAL it received and whether WAL still streams in."""
    replica, lag_s, lag_bytes, streaming = (tuple(row[3:7]) + (None,) * 4)[:4]
    if not replica:
        return {"replica": False}
    return {
        "replica": True,
        "replay_lag_s": None if lag_s is None else round(float(lag_s), 3),
        "replay_lag_bytes": None if lag_bytes is None else int(lag_bytes),
        "streaming": bool(streaming),
    }


def _if_none_match(header: str | None, etag: str) -> bool:
    if not header:
        return False
    for candidate in header.split(","):
        tag = candidate.strip().removeprefix("W/")
        if tag in (etag, "*"):
            return True
    return False


def create_app(config: ServeConfig) -> tuple[Any, FeedServer]:
    """The ASGI application (metrics middleware around Starlette) and its server."""
    server = FeedServer(config)
    unauthorized = {"WWW-Authenticate": 'Bearer realm="pubctl"'}

    def denied(request: Request) -> Response | None:
        if server.tokens.allows(request.headers.get("authorization")):
            return None
        log.warning("401 %s from %s: no valid bearer token", request.url.path, _peer(request))
        return _json(401, {"error": "missing or invalid bearer token"}, unauthorized)

    # Query strings already parsed, valid ones only: hot pages come with the same few.
    parsed: dict[bytes, FeedParams] = {}

    async def feed(request: Request) -> Response:
        refusal = denied(request)
        if refusal is not None:
            return refusal
        query_string = request.scope["query_string"]
        url_bytes = request.scope.get(protocol.SCOPE_KEY)
        params = parsed.get(query_string) if url_bytes is None else None
        if params is None:
            try:
                params = parse_feed_query(query_string, url_bytes)
            except BadParameter as exc:
                log.warning("400 from %s: %s: %s", _peer(request), exc.parameter, exc.error)
                return _json(400, {"error": exc.error, "parameter": exc.parameter})
            if url_bytes is None:
                if len(parsed) >= MAX_PARSED:
                    parsed.clear()
                parsed[query_string] = params
        try:
            page = await server.read_feed(params)
        except FeedIdMismatch as exc:
            log.info("409 from %s: feed_id %s, now %s", _peer(request), params.feed_id, exc.current)
            return _json(
                409,
                {
                    "error": "feed_id names a published state that no longer exists; "
                    "start again from after=0",
                    "feed_id": exc.current,
                },
            )
        except Unavailable as exc:
            log.error("503 /published/feed: %s", exc.reason)
            said: dict[str, Any] = {"error": exc.told or "the database is unavailable; retry later"}
            if exc.status is not None:
                said["status"] = exc.status
            return _json(503, said, {"Retry-After": str(exc.retry_after)})
        server.metrics.served(page.feed_id, page.last_rev)
        if params.wait > 0:
            cache_control = "no-store"  # a held answer is never one to replay
        elif config.cache_max_age > 0:
            cache_control = f"public, max-age={config.cache_max_age}"
        else:
            cache_control = "no-cache"
        headers = {"ETag": page.etag, "Cache-Control": cache_control}
        if _if_none_match(request.headers.get("if-none-match"), page.etag):
            # The Cache-Control of the 200 it validates (RFC 9110, 15.4.5).
            return Response(status_code=304, headers=headers)
        return Response(page.body, media_type=JSON, headers=headers)

    async def healthz(_request: Request) -> Response:
        # Its own connection, never the feed's pool (health.py).
        try:
            row = await server.probe.read("health", timeout=HEALTH_TIMEOUT_S)
        except (TimeoutError, asyncio.TimeoutError, psycopg.Error) as exc:
            log.error("503 /healthz: %s", db.mask(_first_line(exc), config.url))
            status, reason = diagnose(exc, config.url)
            return _json(
                503,
                {"status": status, "reason": reason},
                {"Retry-After": str(RETRY_AFTER_UNREACHABLE_S)},
            )
        revision, feed_id, last_rev = row[:3]
        if feed_id is not None:
            server.metrics.head(str(feed_id), last_rev)
            notifier, listener = server.notifier, server.listener
            if (
                notifier is not None
                and listener is not None
                and listener.connected
                and notifier.head != _head(row)
            ):
                # Another head than the one pages are kept for (a reinstall, a migration
                # no notification told): read it again, which drops them if it holds.
                # (With the listener away nothing is kept; its return re-reads the head.)
                notifier.check()
        listener = server.listener
        details: dict[str, Any] = {
            "revision": revision,
            "feed_id": feed_id,
            "last_rev": last_rev,
            "listener": "connected" if listener and listener.connected else "reconnecting",
            **replica_details(row),
        }
        if revision != config.head_revision:
            reason = wrong_revision(revision, config.head_revision)
            log.error("503 /healthz: %s", reason)
            return _json(
                503,
                {"status": WRONG_REVISION, "reason": reason, **details},
                {"Retry-After": str(RETRY_AFTER_UNREACHABLE_S)},
            )
        return _json(200, {"status": "ok", **details})

    description = openapi.encoded()

    async def describe(_request: Request) -> Response:
        # No token needed: the description holds nothing a viewer may not know.
        return Response(description, media_type=JSON)

    async def metrics(request: Request) -> Response:
        refusal = denied(request)
        if refusal is not None:
            return refusal
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        text = {404: "no such route", 405: "method not allowed; use GET or HEAD"}.get(
            exc.status_code, "bad request"
        )
        path = _short(request.url.path)
        log.info("%d %s %s from %s", exc.status_code, request.method, path, _peer(request))
        return _json(exc.status_code, {"error": text}, dict(exc.headers or {}))

    async def internal_error(request: Request, exc: Exception) -> Response:
        detail = db.mask(_first_line(exc), config.url)
        log.error("500 %s: %s: %s", request.url.path, type(exc).__name__, detail)
        return _json(500, {"error": "internal error"})

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = Starlette(
        routes=[
            Route(FEED_PATH, _guarded(feed, internal_error), methods=["GET"]),
            Route("/healthz", _guarded(healthz, internal_error), methods=["GET"]),
            Route("/metrics", _guarded(metrics, internal_error), methods=["GET"]),
            Route("/openapi.json", _guarded(describe, internal_error), methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    # Never redirect: Starlette would answer a trailing-slash path with a 307 whose
    # Location is built from the client's Host header. 404, like any unknown path.
    app.router.redirect_slashes = False
    others = _no_store_unless_said(app)
    feed_route = _guarded(feed, internal_error)

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        # A feed GET or HEAD goes straight to its handler: a hot page is answered in tens
        # of microseconds, and Starlette's routing and exception layers would double
        # that. Every other request (405s of the feed path included) goes through them.
        if (
            scope["type"] == "http"
            and scope["path"] == FEED_PATH
            and scope["method"] in ("GET", "HEAD")
        ):
            response = await feed_route(Request(scope, receive))
            await response(scope, receive, send)
        else:
            await others(scope, receive, send)

    return server.metrics.middleware(dispatch), server


def _no_store_unless_said(app: ASGIApp) -> ASGIApp:
    """Every answer that does not say how it may be cached says ``no-store``: errors
    (404 and 405 included), ``/healthz``, ``/metrics``."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def say(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers") or []
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    message["headers"] = [*headers, (b"cache-control", b"no-store")]
            await send(message)

        await app(scope, receive, say if scope["type"] == "http" else send)

    return wrapped


def _guarded(
    handler: Callable[[Request], Awaitable[Response]],
    on_error: Callable[[Request, Exception], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Any unexpected error becomes a logged 500 without details, never a traceback."""

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            return await on_error(request, exc)

    return guarded


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"


def _short(path: str) -> str:
    return path if len(path) <= 80 else path[:80] + "..."
