"""``pubctl worker --metrics-port P``: Prometheus metrics on ``http://HOST:P/metrics``,
for deployments that run no ``pubctl serve``.

| metric | type | unit | what |
| --- | --- | --- | --- |
| ``pubctl_outbox_backlog`` | gauge | rows | outbox rows not applied yet |
| ``pubctl_outbox_oldest_age_seconds`` | gauge | seconds | age of the oldest outbox row; 0 when the outbox is empty |
| ``pubctl_capture_ok`` | gauge | 1/0 | every capture trigger attached and enabled, nothing bypasses them |
| ``pubctl_publishing_enabled`` | gauge | 1/0 | publishing is on |
| ``pubctl_last_rev`` | gauge | rev | the newest rev published |
| ``pubctl_apply_batch_duration_seconds`` | histogram | seconds | time of each apply batch of this worker |
| ``pubctl_worker_reconnects_total`` | counter | reconnections | reconnections after a loss of the database (not the first connection) |
| ``pubctl_worker_up`` | gauge | 1/0 | 1 while the worker is connected |

The database figures are those of ``pubctl status --json`` (:func:`pubctl.status.report`),
read once per scrape on a connection of the metrics server's own, in the server's
thread: a scrape never waits for the apply loop, nor the apply loop for a scrape. When
they cannot be read (the database is away), those gauges are left out of the answer.
"""  # noqa: E501

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg
from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from pubctl import db, status
from pubctl.errors import PubctlError

log = logging.getLogger("pubctl.worker")

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
APPLICATION_NAME = "pubctl worker metrics"


class WorkerMetrics(Collector):
    """The worker's own figures (a :class:`pubctl.worker.Observer`) and, at each
    scrape, the database's (one status report)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._scrape_lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self.up = 0
        self.reconnects = 0
        self._bucket_counts = [0] * len(BUCKETS)
        self._count = 0
        self._sum = 0.0

    # --- the worker reports (pubctl.worker.Observer) ---------------------------------

    def connected(self, *, again: bool) -> None:
        with self._lock:
            self.up = 1
            if again:
                self.reconnects += 1

    def disconnected(self) -> None:
        with self._lock:
            self.up = 0

    def batch_applied(self, seconds: float) -> None:
        with self._lock:
            self._count += 1
            self._sum += seconds
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self._bucket_counts[i] += 1

    # --- a scrape ------------------------------------------------------------------

    def _report(self) -> dict[str, Any] | None:
        """One status report on the metrics connection (opened again when lost)."""
        with self._scrape_lock:
            for _attempt in range(2):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = db.connect(
                            self.url, autocommit=True, application_name=APPLICATION_NAME
                        )
                    return status.report(self._conn, db.describe(self.url))
                except (psycopg.OperationalError, db.ConnectError):
                    self._close()
                except (psycopg.Error, PubctlError) as exc:
                    log.debug("metrics: cannot read the status: %s", exc)
                    return None
            return None

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def collect(self) -> Iterable[Metric]:
        return list(self._metrics())

    def _metrics(self) -> Iterator[Metric]:
        report = self._report()
        if report is not None:
            yield _gauge("pubctl_outbox_backlog", "Outbox rows not applied yet (rows).",
                         report["outbox_backlog"])  # fmt: skip
            yield _gauge(
                "pubctl_outbox_oldest_age_seconds",
                "Age of the oldest outbox row, in seconds; 0 when the outbox is empty.",
                report["outbox_oldest_age_s"] or 0.0,
            )
            yield _gauge("pubctl_capture_ok",
                         "1 when every capture trigger is attached and enabled, else 0.",
                         1 if report["capture_ok"] else 0)  # fmt: skip
            yield _gauge("pubctl_publishing_enabled", "1 when publishing is on, else 0.",
                         1 if report["publishing_enabled"] else 0)  # fmt: skip
            yield _gauge("pubctl_last_rev", "The newest rev published.", report["last_rev"])
        with self._lock:
            up, reconnects = self.up, self.reconnects
            counts, count, total = list(self._bucket_counts), self._count, self._sum
        histogram = HistogramMetricFamily(
            "pubctl_apply_batch_duration_seconds",
            "Time of each apply batch of this worker, in seconds.",
            buckets=[
                *((repr(bound), n) for bound, n in zip(BUCKETS, counts, strict=True)),
                ("+Inf", count),
            ],
            sum_value=total,
        )
        yield histogram
        yield CounterMetricFamily(
            "pubctl_worker_reconnects",
            "Reconnections of this worker after a loss of the database (not the first connection).",
            value=reconnects,
        )
        yield _gauge("pubctl_worker_up", "1 while this worker is connected, else 0.", up)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


class MetricsServer:
    """The HTTP server of ``--metrics-port``, in a thread of its own."""

    def __init__(self, metrics: WorkerMetrics, host: str, port: int) -> None:
        self.metrics = metrics
        registry = CollectorRegistry(auto_describe=False)
        registry.register(metrics)
        try:
            self._server, self._thread = start_http_server(port, host, registry=registry)
        except OSError as exc:
            raise PubctlError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}",
                hint="choose another --metrics-port (or --metrics-host)",
            ) from None
        self.port = int(self._server.server_port)
        self.host = host

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.metrics._close()
