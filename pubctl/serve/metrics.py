"""Prometheus metrics of ``pubctl serve``, in a registry of its own.

| metric | type | what |
| --- | --- | --- |
| ``pubctl_serve_requests_total{route,status}`` | counter | answered requests |
| ``pubctl_serve_request_duration_seconds{route}`` | histogram | time to answer, holds included |
| ``pubctl_serve_waiting_long_polls`` | gauge | requests held waiting for a publish |
| ``pubctl_serve_last_rev_served`` | gauge | the largest rev an answer of this feed carried |
| ``pubctl_serve_last_rev`` | gauge | the current feed's last rev, as the server last read it |
| ``pubctl_serve_notifications_total`` | counter | publish notifications received (hints) |
| ``pubctl_serve_database_queries_total{purpose}`` | counter | queries run: feed, head, health |
| ``pubctl_serve_page_cache_lookups_total{result}`` | counter | no-wait pages: hit, miss, bypass |
| ``pubctl_serve_page_cache_bytes`` | gauge | bytes of body the page cache holds |
| ``pubctl_serve_page_cache_entries`` | gauge | pages the page cache holds |
| ``pubctl_serve_listener_connected`` | gauge | 1 while the listening connection is up |
| ``pubctl_serve_listener_reconnects_total`` | counter | listener reconnections after a loss |
| ``pubctl_serve_replica`` | gauge | 1 while the database is a standby in recovery |
| ``pubctl_serve_replay_lag_seconds`` | gauge | a standby's replay lag (0 on a primary) |
| ``pubctl_serve_pool_connections{state}`` | gauge | pool connections: open, idle, in_use, max |
| ``pubctl_serve_pool_waiting_requests`` | gauge | requests queued for a pool connection |

The revs follow the current feed: when the published state is dropped and installed
again (a new ``feed_id``), both rev gauges start again from the new feed, and answers
or head reads of the replaced feed that land later are ignored. Revs of different feeds
are never compared, so an alert on ``pubctl_serve_last_rev_served`` lagging
``pubctl_serve_last_rev`` stays true across a reset.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp as App
from starlette.types import Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROUTES = ("/published/feed", "/healthz", "/metrics")
QUERY_PURPOSES = ("feed", "head", "health")
CACHE_RESULTS = ("hit", "miss", "bypass")
# Replaced feeds remembered, so that a late read of one is never taken for a new feed.
RETIRED_FEEDS = 16
# Long-polls hold up to 60 s, so the buckets reach past it.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 61)


class _PoolCollector(Collector):
    def __init__(self, stats: Callable[[], Mapping[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        size = stats.get("pool_size", 0)
        idle = stats.get("pool_available", 0)
        family = GaugeMetricFamily(
            "pubctl_serve_pool_connections",
            "Database connections of the request pool, by state.",
            labels=["state"],
        )
        family.add_metric(["open"], size)
        family.add_metric(["idle"], idle)
        family.add_metric(["in_use"], max(size - idle, 0))
        family.add_metric(["max"], stats.get("pool_max", 0))
        yield family
        waiting = GaugeMetricFamily(
            "pubctl_serve_pool_waiting_requests", "Requests waiting for a pool connection."
        )
        waiting.add_metric([], stats.get("requests_waiting", 0))
        yield waiting


class Metrics:
    """Every metric of one server."""

    def __init__(self, pool_stats: Callable[[], Mapping[str, int]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "pubctl_serve_requests", "Answered requests.", ["route", "status"], registry=r
        )
        self.duration = Histogram(
            "pubctl_serve_request_duration_seconds",
            "Seconds to answer a request, long-poll holds included.",
            ["route"],
            buckets=BUCKETS,
            registry=r,
        )
        self.waiting = Gauge(
            "pubctl_serve_waiting_long_polls", "Requests held waiting for a publish.", registry=r
        )
        self.last_rev_served = Gauge(
            "pubctl_serve_last_rev_served",
            "The largest rev any answer of the current feed carried (0 after a reset until "
            "an answer carries one).",
            registry=r,
        )
        self.last_rev = Gauge(
            "pubctl_serve_last_rev",
            "The current feed's last published rev, as the server last read it "
            "(pub.health(): re-reads after publish notifications, and /healthz).",
            registry=r,
        )
        self.notifications = Counter(
            "pubctl_serve_notifications", "Publish notifications received.", registry=r
        )
        self.queries = Counter(
            "pubctl_serve_database_queries",
            "Queries the server ran, by purpose: feed (a page), head (a re-read of the last "
            "published rev after notifications), health (/healthz).",
            ["purpose"],
            registry=r,
        )
        for purpose in QUERY_PURPOSES:
            self.queries.labels(purpose)
        self.page_cache = Counter(
            "pubctl_serve_page_cache_lookups",
            "Feed pages asked for without wait, by result: hit (answered from memory, no "
            "query), miss (read from the database, then kept), bypass (the cache was not "
            "usable: the server was not sure to hear of every publish).",
            ["result"],
            registry=r,
        )
        for result in CACHE_RESULTS:
            self.page_cache.labels(result)
        self.page_cache_bytes = Gauge(
            "pubctl_serve_page_cache_bytes", "Bytes of body the page cache holds.", registry=r
        )
        self.page_cache_entries = Gauge(
            "pubctl_serve_page_cache_entries", "Pages the page cache holds.", registry=r
        )
        self.listener_connected = Gauge(
            "pubctl_serve_listener_connected",
            "1 while the connection listening for publishes is up.",
            registry=r,
        )
        self.listener_reconnects = Counter(
            "pubctl_serve_listener_reconnects",
            "Times the listening connection was established again after a loss (0 at start-up).",
            registry=r,
        )
        self.replica = Gauge(
            "pubctl_serve_replica",
            "1 while the database is a streaming standby in recovery (long-polls wake when "
            "its replay moves, not on notifications).",
            registry=r,
        )
        self.replay_lag = Gauge(
            "pubctl_serve_replay_lag_seconds",
            "On a standby, the age of the last replayed commit while received WAL waits to "
            "be replayed (0 when all of it is replayed, and on a primary).",
            registry=r,
        )
        r.register(_PoolCollector(pool_stats))
        # The feed the rev gauges describe, and the feeds it replaced (most recent last).
        self._feed_id: str | None = None
        self._retired: deque[str] = deque(maxlen=RETIRED_FEEDS)
        self._served = 0
        self._head = 0

    def count_query(self, purpose: str) -> None:
        self.queries.labels(purpose).inc()

    def _current(self, feed_id: str) -> bool:
        """Whether ``feed_id`` is the current feed, adopting it when it is new (the
        rev gauges start again from 0); False for a feed that was replaced."""
        if feed_id == self._feed_id:
            return True
        if feed_id in self._retired:
            return False  # a read that started before the reset and landed after it
        if self._feed_id is not None:
            self._retired.append(self._feed_id)
        self._feed_id = feed_id
        self._served = 0
        self._head = 0
        self.last_rev_served.set(0)
        self.last_rev.set(0)
        return True

    def head(self, feed_id: str | None, last_rev: int | None) -> None:
        """The database says feed ``feed_id``'s last rev is ``last_rev``."""
        if feed_id is None or not self._current(feed_id):
            return
        # Revs only grow within a feed: a read that started earlier never moves it back.
        if int(last_rev or 0) > self._head:
            self._head = int(last_rev or 0)
            self.last_rev.set(self._head)

    def served(self, feed_id: str, rev: int | None) -> None:
        """An answer of feed ``feed_id`` carried items up to ``rev`` (None: none)."""
        if not self._current(feed_id):
            return
        if rev is not None and rev > self._served:
            self._served = rev
            self.last_rev_served.set(rev)
            if rev > self._head:  # published after the server's last read of the head
                self._head = rev
                self.last_rev.set(rev)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self, app: App) -> App:
        """An ASGI wrapper that counts every HTTP answer by route and status."""
        # The labelled children, looked up once each: a hot page is answered in tens of
        # microseconds, and labels() costs a few.
        durations: dict[str, Any] = {}
        answers: dict[tuple[str, int], Any] = {}

        def count(route: str, status: int, seconds: float) -> None:
            duration = durations.get(route)
            if duration is None:
                duration = durations[route] = self.duration.labels(route)
            duration.observe(seconds)
            answered = answers.get((route, status))
            if answered is None:
                answered = answers[(route, status)] = self.requests.labels(route, str(status))
            answered.inc()

        async def measured(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            path = scope.get("path", "")
            route = path if path in ROUTES else "other"
            status = [0]

            async def send_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = int(message["status"])
                await send(message)

            start = time.perf_counter()
            try:
                await app(scope, receive, send_status)
            finally:
                count(route, status[0] or 500, time.perf_counter() - start)

        return measured
