"""`pubctl serve`: cold pages over HTTP against the same rows fetched with psycopg in
the same process, a hot page (200 and 304) against a minimal Starlette app on the same
uvicorn returning the same bytes from memory, commit-to-viewer latency through a
long-poll with `pubctl worker` running, and 2,000 held long-polls woken by one write.

The hot page is driven by Debian's `wrk` when it is installed (one thread, 16 keep-alive
connections), else by an asyncio client in this process; the figures say which."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psycopg
from apply_feed import p50_p99, running_worker

from pubctl.migrate import migrate
from pubctl.queries import read_sql_file

REPEATS = 3
PAGE = 1000
POOL_SIZE = 10
EXE = str(Path(sys.executable).with_name("pubctl"))

FILL = """
INSERT INTO study_topic (id, name) SELECT g, 'topic ' || g FROM generate_series(1, 50) g;
INSERT INTO study_question (id, topic_id, exam_name, exam_round, number, body, choices, answer,
                            explanation, explanation_status)
SELECT g, 1 + g % 50, 'Exam ' || g % 7, g % 4, g % 40, rpad('Question ' || g || ' ', 300, 'xy é'),
       '["alpha","beta","gamma","delta"]', g % 4, rpad('Because ' || g, 500, 'z'),
       CASE WHEN g % 2 = 0 THEN 'ready' ELSE 'draft' END
FROM generate_series(1, %(rows)s) g;
"""


def _serve(url: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [EXE, "--database-url", url, "serve", "--port", "0", "--pool-size", str(POOL_SIZE)],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("listening on "):
            base = line.removeprefix("listening on ").strip()
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, base
    raise RuntimeError("pubctl serve did not start")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def _ratio(a: list[float], b: list[float]) -> str:
    rs = sorted(x / y for x, y in zip(a, b, strict=True))
    return f"{statistics.median(a) / statistics.median(b):.2f}x (min {rs[0]:.2f}, max {rs[-1]:.2f})"


# The reference side: the page's rows with the feed identity, payloads as text, one
# snapshot, as a client of pub.feed would fetch them with psycopg.
ROWS = """
SELECT i.feed_id::text, f.rev, f.kind, f.pub_id::text, f.source_id, f.payload::text,
       f.payload_hash, f.schema_version, f.deleted
FROM (SELECT pub.feed_id() AS feed_id) AS i
LEFT JOIN LATERAL pub.feed(%(after_rev)s, %(max_rows)s, %(kinds)s) AS f ON true
ORDER BY f.rev
"""


def _expected_body(rows: list[tuple[object, ...]], after: int) -> bytes:
    """The body serve must answer for these rows, written in Python: each item the
    fields of pub.feed with the payload's stored text spliced in."""
    found = [row for row in rows if row[1] is not None]
    items = []
    for row in found[:PAGE]:
        record = dict(zip(("rev", "kind", "pub_id", "source_id"), row[1:5], strict=True))
        head = json.dumps(record, ensure_ascii=False, separators=(",", ":"))[:-1]
        tail = json.dumps(
            dict(zip(("payload_hash", "schema_version", "deleted"), row[6:], strict=True)),
            ensure_ascii=False,
            separators=(",", ":"),
        )[1:]
        items.append(f'{head},"payload":{row[5]},{tail}')
    next_after = found[:PAGE][-1][1] if found else after
    more = "true" if len(found) > PAGE else "false"
    return (
        f'{{"items":[{",".join(items)}],"next_after":{next_after},"has_more":{more},'
        f'"feed_id":"{rows[0][0]}"}}'
    ).encode()


def _page_vs_psycopg(url: str, base: str, after: int) -> tuple[list[float], list[float], int]:
    """Cold pages: each request is for another page (another cursor), so the server's
    caches never answer. One side fetches the rows (payloads as text) with psycopg; the
    other asks serve, which reads the page and sends it."""
    http_t: list[float] = []
    direct_t: list[float] = []
    size = 0
    with psycopg.connect(url, autocommit=True) as conn, httpx.Client(base_url=base) as client:
        for round_ in range(REPEATS + 1):
            cursors = [after + round_ * 1000 + n * 13 for n in range(30)]
            fetched = []
            start = time.perf_counter()
            for cursor in cursors:
                params = {"after_rev": cursor, "max_rows": PAGE + 1, "kinds": None}
                fetched.append(conn.execute(ROWS, params).fetchall())
            direct = time.perf_counter() - start
            start = time.perf_counter()
            contents = [
                client.get("/published/feed", params={"after": cursor}).content
                for cursor in cursors
            ]
            over_http = time.perf_counter() - start
            for cursor, rows, content in zip(cursors, fetched, contents, strict=True):
                assert content == _expected_body(rows, cursor)
            size = len(contents[0])
            if round_:  # the first round warms up
                direct_t.append(direct)
                http_t.append(over_http)
    return http_t, direct_t, size


def _latency(url: str, base: str, writes: int = 1000) -> tuple[float, float]:
    samples: list[float] = []
    with (
        running_worker(url),
        psycopg.connect(url, autocommit=True) as writer,
        httpx.Client(base_url=base, timeout=60) as viewer,
    ):
        after = viewer.get("/healthz").json()["last_rev"]
        for n in range(writes):
            name = f"latency {n}"
            got: list[float] = []

            def poll(cursor: int = after, want: str = name, got: list[float] = got) -> None:
                while True:
                    answer = viewer.get(
                        "/published/feed", params={"after": cursor, "wait": 30}
                    ).json()
                    cursor = answer["next_after"]
                    if any(i["payload"].get("name") == want for i in answer["items"]):
                        got.append(time.perf_counter())
                        return

            poller = threading.Thread(target=poll)
            poller.start()
            time.sleep(0.002)  # the long-poll is held before the write
            writer.execute("UPDATE study_topic SET name = %s WHERE id = 1", (name,))
            committed = time.perf_counter()
            poller.join(30)
            samples.append(got[0] - committed)
            after = viewer.get("/healthz").json()["last_rev"]
    return p50_p99(samples)


async def _get(host: str, port: int, target: str) -> tuple[int, float]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        at = time.perf_counter()
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        return int(head.split()[1]), at
    finally:
        writer.close()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _serve_connections(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pubctl serve%'"
    ).fetchone()
    return int(str(row[0])) if row else 0


def _many(
    url: str, proc: subprocess.Popen[str], base: str, count: int = 2000
) -> list[tuple[str, str]]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT last_rev FROM pub.rev_counter").fetchone()
        after = int(str(row[0])) if row else 0

        async def hold() -> tuple[list[tuple[int, float]], int, float, float]:
            tasks = [
                asyncio.create_task(_get(host, int(port), f"/published/feed?after={after}&wait=60"))
                for _ in range(count)
            ]
            await asyncio.sleep(0)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                text = httpx.get(base + "/metrics").text
                if f"pubctl_serve_waiting_long_polls {float(count)}" in text:
                    break
            held_with = _serve_connections(conn)
            rss = _rss_mib(proc.pid)
            conn.execute("UPDATE study_topic SET name = 'wake up' WHERE id = 2")
            conn.execute("SELECT pub.apply_batch(1000)")
            written = time.perf_counter()
            answers = await asyncio.gather(*tasks)
            return answers, held_with, rss, written

        answers, held_with, rss, written = asyncio.run(hold())
    woken = sorted(at - written for status, at in answers if status == 200)
    return [
        (f"{count} long-polls held: server db connections", f"{held_with} (pool {POOL_SIZE} + 1)"),
        (f"{count} long-polls held: server RSS", f"{rss:.0f} MiB"),
        (
            f"{count} long-polls woken by one write: first / median / last",
            f"{woken[0] * 1000:.0f} / {woken[len(woken) // 2] * 1000:.0f} / "
            f"{woken[-1] * 1000:.0f} ms ({len(woken)} answered 200)",
        ),
    ]


# The peer: the smallest Starlette app answering the same bytes (and 304 for their tag)
# from memory, on uvicorn configured as `pubctl serve` configures it.
PEER = """
import sys
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

body = open(sys.argv[1], "rb").read()
etag = sys.argv[2]


async def feed(request: Request) -> Response:
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(body, media_type="application/json", headers={"ETag": etag})


app = Starlette(routes=[Route("/published/feed", feed)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_config=None, access_log=False,
            lifespan="off", http="httptools", loop="auto", server_header=False)
"""
HOT_SECONDS = 4.0
HOT_CLIENTS = 16


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _peer(body: bytes, etag: str) -> tuple[subprocess.Popen[bytes], str, str]:
    folder = tempfile.mkdtemp(prefix="pubctl-peer-")
    path = os.path.join(folder, "body.json")
    with open(path, "wb") as out:
        out.write(body)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", PEER, path, etag, str(port)])
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/published/feed").content == body:
                return proc, base, folder
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the peer app did not start")


def _wrk(url: str, header: str | None) -> float:
    wrk = shutil.which("wrk")
    assert wrk is not None
    args = [wrk, "-t1", f"-c{HOT_CLIENTS}", f"-d{HOT_SECONDS:g}s"]
    if header:
        args += ["-H", header]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    found = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert found and not non2xx, out
    return float(found.group(1))


def _hot_vs_peer(base: str, after: int) -> list[tuple[str, str]]:
    """The same hot page of PAGE items from `pubctl serve` and from the minimal peer, 200
    and 304, rounds alternating; the peer is the ceiling of Starlette on uvicorn."""
    target = f"/published/feed?after={after}"
    first = httpx.get(base + target)
    body, etag = first.content, first.headers["etag"]
    assert len(json.loads(body)["items"]) == PAGE
    peer, peer_base, folder = _peer(body, etag)
    tool = "wrk" if shutil.which("wrk") else "asyncio client"
    try:
        rates: dict[tuple[str, str], list[float]] = {}
        for _round in range(REPEATS):
            for name, where in (("serve", base), ("peer", peer_base)):
                for kind, header in (("200", None), ("304", f"If-None-Match: {etag}")):
                    if tool == "wrk":
                        rate = _wrk(where + target, header)
                    else:
                        plain, conditional = _hot_page(where, after, HOT_SECONDS, HOT_CLIENTS)
                        rate = conditional if header else plain
                    rates.setdefault((name, kind), []).append(rate)
    finally:
        peer.terminate()
        peer.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    figures = []
    for kind in ("200", "304"):
        serve_r, peer_r = rates[("serve", kind)], rates[("peer", kind)]
        figures.append(
            (
                f"hot page of {PAGE}, {kind}, serve / minimal Starlette ({tool})",
                f"{_ratio(serve_r, peer_r)}; {statistics.median(serve_r):,.0f} / "
                f"{statistics.median(peer_r):,.0f} pages/s ({len(body) / 1024:.0f} KiB)",
            )
        )
    return figures


def _hot_page(
    base: str, after: int, seconds: float = 5.0, clients: int = 16
) -> tuple[float, float]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    target = f"/published/feed?after={after}"
    etag = httpx.get(base + target).headers["etag"]

    async def client(extra: str, stop: float) -> int:
        reader, writer = await asyncio.open_connection(host, int(port))
        request = f"GET {target} HTTP/1.1\r\nHost: b\r\n{extra}\r\n".encode()
        done = 0
        while time.perf_counter() < stop:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length"):
                    await reader.readexactly(int(line.split(b":")[1]))
            done += 1
        writer.close()
        return done

    async def run(extra: str) -> float:
        stop = time.perf_counter() + seconds
        counts = await asyncio.gather(*(client(extra, stop) for _ in range(clients)))
        return sum(counts) / seconds

    plain = asyncio.run(run(""))
    conditional = asyncio.run(run(f"If-None-Match: {etag}\r\n"))
    return plain, conditional


def _fill(url: str, rows: int) -> int:
    """The published state of the scenarios; returns a rev a quarter of the way in."""
    questions = max(min(rows, 100_000) // 2, 2000)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(read_sql_file("sample_app_schema.sql").encode())
        migrate(url)
        conn.execute(FILL.replace("%(rows)s", str(questions)).encode())
        conn.execute("SELECT pub.apply_batch(1000000)")
        conn.execute("VACUUM ANALYZE pub.content")
        row = conn.execute("SELECT max(rev) FROM pub.content").fetchone()
    return int(str(row[0])) // 4 if row else 0


def _pages(url: str, base: str, middle: int) -> list[tuple[str, str]]:
    http_t, direct_t, size = _page_vs_psycopg(url, base, middle)
    return [
        (
            f"cold page of {PAGE} over HTTP / its rows fetched with psycopg",
            f"{_ratio(http_t, direct_t)}, {statistics.median(http_t) / 30 * 1000:.1f} ms a page"
            f" ({size / 1024:.0f} KiB)",
        ),
        *_hot_vs_peer(base, middle),
    ]


def run_pages(url: str, rows: int) -> list[tuple[str, str]]:
    """Only the page figures (cold and hot), for a quick run."""
    middle = _fill(url, rows)
    proc, base = _serve(url)
    try:
        return _pages(url, base, middle)
    finally:
        _stop(proc)


def run(url: str, rows: int) -> list[tuple[str, str]]:
    """Figures of `pubctl serve`."""
    middle = _fill(url, rows)
    proc, base = _serve(url)
    try:
        pages = _pages(url, base, middle)
        p50, p99 = _latency(url, base)
        many = _many(url, proc, base)
    finally:
        _stop(proc)
    return [
        *pages,
        ("commit -> long-polling viewer, worker running: p50", f"{p50 * 1000:.1f} ms"),
        ("commit -> long-polling viewer, worker running: p99", f"{p99 * 1000:.1f} ms"),
        *many,
    ]
