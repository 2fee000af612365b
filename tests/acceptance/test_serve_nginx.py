"""`pubctl serve --cache-max-age` behind a real shared cache: nginx with `proxy_cache`,
configured as docs/scaling.md shows, run as a throwaway child process.

200 viewers follow the feed through nginx (each pages on from `next_after` until
`has_more` is false, then polls again) while the application writes and the applier
publishes. At the end every viewer's copy equals `pub.content`: pages a cache served
late are harmless, since an item that changed comes again under a larger rev. And the
origin saw about one request per distinct page per max-age, not one per viewer."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.db import Database
from support.serve import Served, publish, reader_url, wait_until

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
)
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx-light)"
)

VIEWERS = 200
MAX_AGE = 1
LIMIT = 100
WRITING_S = 4.0
POLL_S = 1.0

CONFIG = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
{user}
events {{ worker_connections 2048; }}
http {{
    log_format origin '$msec $upstream_cache_status $upstream_addr $status "$request_uri"';
    access_log {tmp}/access.log origin;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    proxy_cache_path {tmp}/cache keys_zone=pubctl_feed:10m max_size=256m inactive=10m
                     use_temp_path=off;
    upstream pubctl_serve {{
        server {origin};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location /published/feed {{
            proxy_pass http://pubctl_serve;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache pubctl_feed;
            proxy_cache_lock on;
            proxy_cache_use_stale updating;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Nginx:
    """nginx in the foreground, everything it writes in ``tmp``."""

    def __init__(self, tmp: Path, origin: str) -> None:
        self.tmp = tmp
        self.port = _free_port()
        user = "user root root;" if os.geteuid() == 0 else ""
        conf = tmp / "nginx.conf"
        conf.write_text(CONFIG.format(tmp=tmp, user=user, origin=origin, port=self.port))
        assert NGINX is not None
        args = [NGINX, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]
        check = subprocess.run([*args, "-t"], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen([*args, "-g", "daemon off;"], stderr=subprocess.PIPE)
        self.base = f"http://127.0.0.1:{self.port}"
        if not wait_until(self._up, timeout=10):
            self.stop()
            raise AssertionError("nginx did not start:\n" + self.errors())

    def _up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return self.proc.poll() is not None  # exited: stop waiting, fail above

    def errors(self) -> str:
        log = self.tmp / "error.log"
        return log.read_text() if log.exists() else ""

    def fetches(self) -> list[tuple[float, str, str]]:
        """(time, cache status, request URI) of every request nginx sent to the origin."""
        found = []
        for line in (self.tmp / "access.log").read_text().splitlines():
            at, status, upstream, _code, uri = line.split(" ", 4)
            if upstream != "-":
                found.append((float(at), status, uri.strip('"')))
        return found

    def requests(self) -> int:
        return len((self.tmp / "access.log").read_text().splitlines())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def nginx_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "nginx"
    path.mkdir()
    yield path


SEED = """
INSERT INTO study_topic (id, name) SELECT g, 'Topic ' || g FROM generate_series(1, 20) g;
INSERT INTO study_question (id, topic_id, exam_name, exam_round, number, body, choices, answer,
                            explanation, explanation_status)
SELECT g, 1 + g % 20, 'Exam', g % 4, g, 'Question ' || g, '["a","b","c"]', g % 3,
       'Because ' || g, CASE WHEN g % 2 = 0 THEN 'ready' ELSE 'draft' END
FROM generate_series(1, 120) g
"""


def _writer(db: Database, stop_at: float) -> None:
    """Writes of every kind, applied every 0.1 s, until ``stop_at``."""
    rng = random.Random(7)
    next_id = 1000
    with db.connect() as conn:
        while time.monotonic() < stop_at:
            for _ in range(5):
                action = rng.random()
                if action < 0.4:
                    conn.execute(
                        "UPDATE study_question SET body = %s WHERE id = %s",
                        (f"edited {rng.random()}", rng.randint(1, 120)),
                    )
                elif action < 0.55:
                    conn.execute(
                        "UPDATE study_topic SET name = %s WHERE id = %s",
                        (f"renamed {rng.random()}", rng.randint(1, 20)),
                    )
                elif action < 0.7:
                    conn.execute(
                        "UPDATE study_question SET explanation_status = %s WHERE id = %s",
                        (rng.choice(["ready", "draft"]), rng.randint(1, 120)),
                    )
                elif action < 0.85:
                    next_id += 1
                    conn.execute(
                        "INSERT INTO study_question (id, topic_id, exam_name, exam_round, number,"
                        " body, choices, answer, explanation, explanation_status) VALUES"
                        " (%s, 1, 'Exam', 1, 1, 'new', '[\"a\",\"b\"]', 0, 'why', 'ready')",
                        (next_id,),
                    )
                else:
                    conn.execute(
                        "DELETE FROM study_question WHERE id = %s", (rng.randint(1, next_id),)
                    )
            conn.execute("SELECT pub.apply_batch(100000)")
            time.sleep(0.1)
        conn.execute("SELECT pub.apply_batch(100000)")


def _published(db: Database) -> tuple[dict[tuple[str, int], Any], int]:
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT kind, source_id, payload::text, rev FROM pub.content WHERE NOT deleted"
        ).fetchall()
        last = conn.execute("SELECT last_rev FROM pub.rev_counter").fetchone()
    assert last is not None
    return {(k, s): (p, r) for k, s, p, r in rows}, int(last[0])


async def _viewer(
    base: str, tls: ssl.SSLContext, quiet: asyncio.Event, final: list[int]
) -> tuple[dict[tuple[str, int], Any], int]:
    """Follows the feed as docs/viewer.md says, on a connection of its own (one httpx
    client per viewer: one client's pool shared by 200 tasks costs more than the rest of
    the test); returns its copy and its request count."""
    copy: dict[tuple[str, int], Any] = {}
    after = 0
    asked = 0
    await asyncio.sleep(random.random() * POLL_S)
    async with httpx.AsyncClient(base_url=base, timeout=30, verify=tls) as client:
        while True:
            answer = await client.get("/published/feed", params={"after": after, "limit": LIMIT})
            asked += 1
            assert answer.status_code == 200, answer.text
            raw = answer.content
            body = answer.json()
            for item, start in zip(body["items"], _payload_starts(raw), strict=True):
                key = (item["kind"], item["source_id"])
                if item["deleted"]:
                    copy.pop(key, None)
                else:
                    copy[key] = (start, item["rev"])
            after = body["next_after"]
            if body["has_more"]:
                continue
            if quiet.is_set() and after >= final[0]:
                return copy, asked
            await asyncio.sleep(POLL_S * (0.5 + random.random()))


def _payload_starts(raw: bytes) -> Iterator[str]:
    """Each item's payload as the bytes of the body (the stored canonical text)."""
    start = 0
    while (i := raw.find(b',"payload":', start)) >= 0:
        j = raw.index(b',"payload_hash":"', i)
        yield raw[i + 11 : j].decode()
        start = j


def test_two_hundred_viewers_through_nginx_proxy_cache(pub_db: Database, nginx_dir: Path) -> None:
    publish(pub_db, SEED)
    with Served(reader_url(pub_db), "--cache-max-age", str(MAX_AGE)) as served:
        origin = served.base.removeprefix("http://")
        nginx = Nginx(nginx_dir, origin)
        try:
            first = httpx.get(nginx.base + "/published/feed?limit=1", timeout=10)
            assert first.status_code == 200, first.text
            assert first.headers["cache-control"] == f"public, max-age={MAX_AGE}"
            origin_before = _origin_feed_answers(served)

            async def crowd() -> list[tuple[dict[tuple[str, int], Any], int]]:
                quiet = asyncio.Event()
                final = [0]
                tls = ssl.create_default_context()  # unused (plain HTTP), made once
                viewers = [
                    asyncio.create_task(_viewer(nginx.base, tls, quiet, final))
                    for _ in range(VIEWERS)
                ]
                stop_at = time.monotonic() + WRITING_S
                writing = threading.Thread(target=_writer, args=(pub_db, stop_at))
                writing.start()
                while writing.is_alive():
                    await asyncio.sleep(0.1)
                final[0] = _published(pub_db)[1]
                quiet.set()
                return await asyncio.wait_for(asyncio.gather(*viewers), timeout=20)

            started = time.monotonic()
            copies = asyncio.run(crowd())
            took = time.monotonic() - started
            expected, last = _published(pub_db)
            origin_answers = _origin_feed_answers(served) - origin_before
        finally:
            nginx.stop()
        fetches = nginx.fetches()
        viewer_requests = nginx.requests()
        errors = nginx.errors()
    assert last > 300, "the writes went on while the viewers followed"
    for copy, _asked in copies:
        assert copy == expected
    # Every request nginx sent on reached the origin and was answered there, 200.
    assert len(fetches) == origin_answers + 1  # the first request above
    # About one origin request per distinct page per max-age, not one per viewer.
    by_page: dict[str, list[float]] = defaultdict(list)
    for at, _status, uri in fetches:
        by_page[uri].append(at)
    for uri, times in by_page.items():
        times.sort()
        allowed = (times[-1] - times[0]) / MAX_AGE + 2
        assert len(times) <= allowed, (uri, times)
    assert sum(asked for _copy, asked in copies) >= 5 * len(fetches), (
        f"{viewer_requests} viewer requests, {len(fetches)} reached the origin"
    )
    assert took < 30, took
    assert "[emerg]" not in errors and "[alert]" not in errors, errors


def _origin_feed_answers(served: Served) -> float:
    text = httpx.get(served.url("/metrics"), timeout=10).text
    series = 'pubctl_serve_requests_total{route="/published/feed",status="200"} '
    return sum(
        float(line.removeprefix(series)) for line in text.splitlines() if line.startswith(series)
    )
