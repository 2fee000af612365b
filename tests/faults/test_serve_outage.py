"""While the database is down, `pubctl serve` answers 503 within about a second (not
after its full pool timeout), with Retry-After, and comes back by itself."""

from __future__ import annotations

import time

import httpx
import psycopg
from psycopg import conninfo

from support.db import Database
from support.serve import Served, reader_url, terminate_serve_backends, wait_until


def _allow_connections(db: Database, allowed: bool) -> None:
    name = conninfo.conninfo_to_dict(db.url)["dbname"]
    with psycopg.connect(db.server.url(db.server.maintenance_dbname), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')


def _listener_connected(served: Served) -> float:
    for line in httpx.get(served.url("/metrics"), timeout=10).text.splitlines():
        if line.startswith("pubctl_serve_listener_connected "):
            return float(line.split()[1])
    raise AssertionError("no listener metric")


def test_feed_requests_get_their_503_within_a_second_while_the_database_is_down(
    pub_db: Database,
) -> None:
    with Served(reader_url(pub_db)) as served:  # the default pool timeout: 5 s
        assert httpx.get(served.url("/published/feed"), timeout=10).status_code == 200
        _allow_connections(pub_db, False)
        try:
            terminate_serve_backends(pub_db)
            assert wait_until(lambda: _listener_connected(served) == 0, timeout=10)
            for _ in range(3):
                started = time.monotonic()
                answer = httpx.get(served.url("/published/feed"), timeout=30)
                elapsed = time.monotonic() - started
                assert answer.status_code == 503 and answer.headers["retry-after"]
                assert elapsed < 1.5, f"503 after {elapsed:.2f}s"
        finally:
            _allow_connections(pub_db, True)
        assert wait_until(
            lambda: httpx.get(served.url("/published/feed"), timeout=30).status_code == 200,
            timeout=30,
        )
