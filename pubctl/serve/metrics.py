"""Prometheus metrics of ``pubctl serve``, in a registry of its own.

| metric | type | what |
| --- | --- | --- |
| ``pubctl_serve_requests_total{route,status}`` | counter | answered requests |
| ``pubctl_serve_request_duration_seconds{route}`` | histogram | time to answer, holds included |
| ``pubctl_serve_waiting_long_polls`` | gauge | requests held waiting for a publish |
| ``pubctl_serve_last_rev_served`` | gauge | the largest rev any answer carried |
| ``pubctl_serve_notifications_total`` | counter | publish notifications received (hints) |
| ``pubctl_serve_database_queries_total{purpose}`` | counter | queries run: feed, head, health |
| ``pubctl_serve_listener_connected`` | gauge | 1 while the listening connection is up |
| ``pubctl_serve_listener_reconnects_total`` | counter | times the listener (re)connected |
| ``pubctl_serve_pool_connections{state}`` | gauge | pool connections: open, idle, in_use, max |
| ``pubctl_serve_pool_waiting_requests`` | gauge | requests queued for a pool connection |
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp as App
from starlette.types import Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROUTES = ("/published/feed", "/healthz", "/metrics")
QUERY_PURPOSES = ("feed", "head", "health")
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
            "pubctl_serve_last_rev_served", "The largest rev any answer carried.", registry=r
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
        self.listener_connected = Gauge(
            "pubctl_serve_listener_connected",
            "1 while the connection listening for publishes is up.",
            registry=r,
        )
        self.listener_reconnects = Counter(
            "pubctl_serve_listener_reconnects",
            "Times the listening connection was (re)established.",
            registry=r,
        )
        r.register(_PoolCollector(pool_stats))
        self._last_rev = 0

    def count_query(self, purpose: str) -> None:
        self.queries.labels(purpose).inc()

    def served(self, rev: int | None) -> None:
        if rev is not None and rev > self._last_rev:
            self._last_rev = rev
            self.last_rev_served.set(rev)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self, app: App) -> App:
        """An ASGI wrapper that counts every HTTP answer by route and status."""

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
                self.duration.labels(route).observe(time.perf_counter() - start)
                self.requests.labels(route, str(status[0] or 500)).inc()

        return measured
