"""`pubctl serve` as a viewer sees it: a real server process on a free port, a real HTTP
client, a role with only the feed reader's grants. Paging, kinds, the canonical payload
bytes, ETags, long-polls, feed identity, tokens and every refused input."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import rfc8785

from support import rawhttp
from support.cli import pubctl_executable, run_inprocess
from support.db import Database, ServerInfo
from support.serve import Served, publish, reader_url, wait_until

FILE_TOKEN = "token-from-file"
ENV_TOKEN = "token-from-env"
AUTH = {"Authorization": f"Bearer {ENV_TOKEN}"}
ITEM_KEYS = ["rev", "kind", "pub_id", "source_id", "payload", "payload_hash", "schema_version", "deleted"]  # fmt: skip

MIXED = """
INSERT INTO study_topic (id, name, exam_round_size) SELECT g, 'Topic ' || g || ' ✓', g FROM generate_series(1, 12) g;
INSERT INTO study_question (id, topic_id, exam_name, exam_round, number, body, choices, answer, explanation, explanation_status)
SELECT g, 1 + g % 12, 'Exam "' || g % 3 || '"', g % 4, g, 'Body ' || g || ' \\ é 中 "q"', '["a","b\\n","ç"]', g % 2,
       'Why ' || g, CASE WHEN g % 3 = 0 THEN 'draft' ELSE 'ready' END
FROM generate_series(1, 150) g;
SELECT pub.apply_batch(100000);
UPDATE study_question SET deleted_at = now() WHERE id % 10 = 0;
UPDATE study_topic SET name = name || '!' WHERE id % 4 = 0;
DELETE FROM study_question WHERE id = 11;
UPDATE study_topic SET deleted_at = now() WHERE id = 12;
"""


@pytest.fixture(scope="module")
def served_db(pub_template: Any, pg_server: ServerInfo) -> Iterator[Database]:
    """One database for the whole module, cloned from the migrated template."""
    name = "pubctl_test_serve"
    with psycopg.connect(pg_server.url(pg_server.maintenance_dbname), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pub_template.template_dbname}"')
    db = Database(url=pg_server.url(name), server=pg_server)
    with db.connect() as conn:
        conn.execute(MIXED.encode())
        conn.execute("SELECT pub.apply_batch(100000)")
    yield db
    with psycopg.connect(pg_server.url(pg_server.maintenance_dbname), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def server(served_db: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    token_file = tmp_path_factory.mktemp("serve") / "tokens"
    token_file.write_text(f"# viewers\n{FILE_TOKEN}\n\n")
    with Served(
        reader_url(served_db),
        "--token-file",
        str(token_file),
        "--pool-size",
        "3",
        env={"PUBCTL_FEED_TOKENS": f"{ENV_TOKEN}, other-token"},
    ) as served:
        yield served


@pytest.fixture
def client(server: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, headers=AUTH, timeout=30) as c:
        yield c


def db_feed(db: Database, kinds: list[str] | None = None) -> list[dict[str, Any]]:
    with db.connect() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute("SELECT * FROM pub.feed(0, 1000000, %s)", (kinds,)).fetchall()
    for row in rows:
        row["pub_id"] = str(row["pub_id"])
    return rows


def page_through(client: httpx.Client, limit: int, kinds: list[str] | None = None) -> list[Any]:
    items: list[Any] = []
    after = 0
    while True:
        params: list[tuple[str, str | int]] = [("after", after), ("limit", limit)]
        params += [("kind", k) for k in kinds or []]
        answer = client.get("/published/feed", params=params)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert list(body) == ["items", "next_after", "has_more", "feed_id"]
        assert len(body["items"]) <= limit
        assert body["next_after"] == (body["items"][-1]["rev"] if body["items"] else after)
        items += body["items"]
        after = body["next_after"]
        if not body["has_more"]:
            # has_more false: a further request now returns nothing.
            rest = client.get("/published/feed", params=[("after", after), *params[2:]]).json()
            assert rest["items"] == []
            return items
        assert len(body["items"]) == limit


def test_paging_equals_pub_feed(client: httpx.Client, served_db: Database) -> None:
    expected = db_feed(served_db)
    assert len(expected) > 200 and any(row["deleted"] for row in expected)
    for limit in (1000, 7, len(expected)):
        items = page_through(client, limit)
        assert all(list(item) == ITEM_KEYS for item in items)
        assert items == expected, limit
    full = client.get("/published/feed", params={"limit": len(expected) - 1}).json()
    assert full["has_more"] is True and len(full["items"]) == len(expected) - 1


@pytest.mark.parametrize(
    "kinds", [["topic"], ["question", "explanation"], ["explanation", "topic"]]
)
def test_kind_filters(client: httpx.Client, served_db: Database, kinds: list[str]) -> None:
    expected = db_feed(served_db, kinds)
    assert {row["kind"] for row in expected} == set(kinds)
    assert page_through(client, 25, kinds) == expected


def payload_spans(body: bytes) -> list[tuple[bytes, str]]:
    """Each item's payload bytes and payload_hash, sliced from the raw body."""
    spans = []
    start = 0
    while (i := body.find(b',"payload":', start)) >= 0:
        j = body.index(b',"payload_hash":"', i)
        spans.append((body[i + len(b',"payload":') : j], body[j + 17 : j + 17 + 64].decode()))
        start = j
    return spans


def test_payload_bytes_are_rfc8785_and_hash_to_payload_hash(client: httpx.Client) -> None:
    raw = client.get("/published/feed", params={"limit": 10000}).content
    items = json.loads(raw)["items"]
    spans = payload_spans(raw)
    assert len(spans) == len(items) > 200
    for (payload_bytes, hash_in_body), item in zip(spans, items, strict=True):
        assert hash_in_body == item["payload_hash"]
        assert hashlib.sha256(payload_bytes).hexdigest() == item["payload_hash"]
        assert payload_bytes == rfc8785.dumps(item["payload"])
    assert any("中".encode() in payload for payload, _ in spans), "non-ASCII is written as UTF-8"


@pytest.mark.parametrize(
    ("after", "limit", "kinds"), [(0, 10000, []), (5, 7, []), (3, 25, ["question", "topic"])]
)
def test_http_items_are_the_cli_lines_byte_for_byte(
    client: httpx.Client, served_db: Database, after: int, limit: int, kinds: list[str]
) -> None:
    """One JSON form of an item: serve's body is its items as `pubctl feed` prints them
    (same bytes), joined by commas."""
    kind_args = [arg for kind in kinds for arg in ("--kind", kind)]
    printed = subprocess.run(
        [pubctl_executable(), "--database-url", reader_url(served_db), "feed",
         "--after", str(after), "--limit", str(limit), *kind_args],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    lines = printed.splitlines()
    assert len(lines) > 5 and b"\xe4\xb8\xad" in printed, "non-ASCII as UTF-8, not escaped"
    answer = client.get(
        "/published/feed",
        params=[("after", after), ("limit", limit), *(("kind", kind) for kind in kinds)],
    )
    body = answer.json()
    assert len(body["items"]) == len(lines)
    assert answer.content == (
        b'{"items":['
        + b",".join(lines)
        + b'],"next_after":%d,"has_more":%s,"feed_id":"%s"}'
        % (body["next_after"], b"true" if body["has_more"] else b"false", body["feed_id"].encode())
    )


def test_etag_conditional_get_and_head(client: httpx.Client, served_db: Database) -> None:
    first = client.get("/published/feed", params={"kind": "topic"})
    etag = first.headers["etag"]
    assert etag.startswith('"') and first.headers["content-type"] == "application/json"
    assert client.get("/published/feed", params={"kind": "topic"}).headers["etag"] == etag
    same = client.get("/published/feed", params={"kind": "topic"}, headers={"If-None-Match": etag})
    assert same.status_code == 304 and same.headers["etag"] == etag and same.content == b""
    listed = client.get(
        "/published/feed", params={"kind": "topic"}, headers={"If-None-Match": f'"x", W/{etag}'}
    )
    assert listed.status_code == 304
    other = client.get("/published/feed", params={"kind": "question", "limit": 3})
    assert other.headers["etag"] != etag
    head = client.head("/published/feed", params={"kind": "topic"})
    assert head.status_code == 200 and head.content == b""
    assert head.headers["etag"] == etag
    assert int(head.headers["content-length"]) == len(first.content)
    head_304 = client.head(
        "/published/feed", params={"kind": "topic"}, headers={"If-None-Match": etag}
    )
    assert head_304.status_code == 304 and head_304.headers["etag"] == etag
    publish(served_db, "UPDATE study_topic SET name = 'renamed' WHERE id = 1")

    def conditional() -> httpx.Response | None:
        answer = client.get(
            "/published/feed", params={"kind": "topic"}, headers={"If-None-Match": etag}
        )
        return answer if answer.status_code == 200 else None

    # Within moments: the server learns of the publish from the applier's notification.
    changed = wait_until(conditional, timeout=5)
    assert changed is not None and changed.headers["etag"] != etag


HUGE = "after=" + "1" * (10 * 2**20)


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("after=-1", "after"),
        ("after=abc", "after"),
        ("after=1.5", "after"),
        ("after=", "after"),
        ("after=99999999999999999999", "after"),
        ("after=1&after=2", "after"),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("limit=%201", "limit"),
        ("kind=lesson", "kind"),
        ("kind=topic&kind=", "kind"),
        ("wait=1e9", "wait"),
        ("wait=61", "wait"),
        ("wait=-1", "wait"),
        ("wait=nan", "wait"),
        ("wait=1&wait=2", "wait"),
        ("wait=60.0000000001", "wait"),
        ("wait=6.1e1", "wait"),
        ("wait=-1e-9", "wait"),
        ("wait=.5", "wait"),
        ("wait=5.", "wait"),
        ("wait=1e", "wait"),
        ("wait=0x1", "wait"),
        ("wait=inf", "wait"),
        ("feed_id=not-a-uuid", "feed_id"),
        ("feed_id={00000000-0000-4000-8000-000000000000}", "feed_id"),
        ("feed_id=00000000000040008000000000000000", "feed_id"),
        ("feed_id=urn:uuid:00000000-0000-4000-8000-000000000000", "feed_id"),
        ("kind=topic&" * 17, "kind"),
        ("kinds=topic", "kinds"),
        (HUGE, "after"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(
    client: httpx.Client, server: Served, query: str, parameter: str
) -> None:
    if len(query) > 60000:  # beyond what httpx sends: raw HTTP/1.1
        status, text = raw_get(server.base, f"/published/feed?{query}")
    else:
        answer = client.get(f"/published/feed?{query}")
        status, text = answer.status_code, answer.text
    assert status == 400, text
    body = json.loads(text)
    assert set(body) == {"error", "parameter"} and body["parameter"] == parameter
    assert "Traceback" not in text and len(text) < 500


def raw_get(base: str, target: str) -> tuple[int, str]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ENV_TOKEN}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def test_unknown_routes_and_methods(client: httpx.Client, server: Served) -> None:
    for path in ("/", "/published", "/published/feed/x", "/feed"):
        answer = client.get(path)
        assert answer.status_code == 404 and answer.json()["error"]
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        answer = client.request(method, "/published/feed")
        assert answer.status_code == 405 and "GET" in answer.headers["allow"]
        assert answer.json()["error"]
    assert "Traceback" not in server.log


METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


def test_a_trailing_slash_is_404_and_nothing_ever_redirects(server: Served) -> None:
    """Every route and method: no 307 whose Location would come from the Host header."""
    host, port = rawhttp.host_port(server.base)
    targets = [
        f"{route}{tail}"
        for route in ("/published/feed", "/healthz", "/metrics", "/openapi.json")
        for tail in ("/", "//", "/?after=1&wait=5")
    ] + ["/published/", "//published/feed", "/published//feed"]

    async def ask_all() -> list[tuple[str, str, int, dict[str, str], bytes]]:
        answers = []
        for target in targets:
            for method in METHODS:
                for headers in ({"Host": "evil.example"}, {**AUTH, "Host": "evil.example:1"}):
                    status, fields, body, _at = await rawhttp.request(
                        method, host, port, target, headers
                    )
                    answers.append((method, target, status, fields, body))
        return answers

    answers = asyncio.run(ask_all())
    assert len(answers) == len(targets) * len(METHODS) * 2
    for method, target, status, fields, body in answers:
        assert status == 404, (method, target, status)
        assert "location" not in fields, (method, target, fields)
        if method != "HEAD":
            assert json.loads(body) == {"error": "no such route"}, (method, target)
    assert "Traceback" not in server.log


def test_tokens(server: Served) -> None:
    with httpx.Client(base_url=server.base, timeout=30) as anonymous:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ENV_TOKEN},
                        {"Authorization": f"Basic {ENV_TOKEN}"}, {"Authorization": "Bearer  x"}):  # fmt: skip
            for path in ("/published/feed", "/metrics"):
                answer = anonymous.get(path, headers=headers)
                assert answer.status_code == 401, (path, headers)
                assert answer.json() == {"error": "missing or invalid bearer token"}
                assert answer.headers["www-authenticate"].startswith("Bearer")
        for token in (FILE_TOKEN, ENV_TOKEN, "other-token"):
            ok = anonymous.get("/published/feed", headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200
        assert anonymous.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "wait",
    ["1.802744152145689", "0.5", "60", "0", "-0", "1e1", "6E1", "1.5e%2B1", "2.5e-7", "007.5"],
)
def test_wait_takes_any_decimal_number_from_0_to_60(client: httpx.Client, wait: str) -> None:
    answer = client.get(f"/published/feed?after=0&limit=1&wait={wait}")
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["items"]) == 1


def test_a_decimal_wait_holds_that_long(client: httpx.Client) -> None:
    after = head_rev(client)
    start = time.monotonic()
    answer = client.get(f"/published/feed?after={after}&wait=3.5e-1")
    assert answer.status_code == 200 and answer.json()["items"] == []
    assert 0.3 <= time.monotonic() - start < 5


def test_feed_id_in_capitals_is_the_same_feed_id(client: httpx.Client) -> None:
    current = client.get("/published/feed", params={"limit": 1}).json()["feed_id"]
    assert client.get("/published/feed", params={"feed_id": current.upper()}).status_code == 200


def test_feed_id_mismatch_is_409_with_the_current_one(client: httpx.Client) -> None:
    current = client.get("/published/feed", params={"limit": 1}).json()["feed_id"]
    assert client.get("/published/feed", params={"feed_id": current}).status_code == 200
    stale = client.get(
        "/published/feed",
        params={"feed_id": "00000000-0000-4000-8000-000000000000", "after": 5, "wait": 5},
    )
    assert stale.status_code == 409
    assert stale.json()["feed_id"] == current and stale.json()["error"]


def head_rev(client: httpx.Client) -> int:
    return int(client.get("/healthz").json()["last_rev"])


def test_long_poll_is_woken_by_a_write_and_times_out_empty(
    client: httpx.Client, served_db: Database
) -> None:
    after = head_rev(client)
    start = time.monotonic()
    quiet = client.get("/published/feed", params={"after": after, "wait": 1})
    held = time.monotonic() - start
    assert quiet.status_code == 200 and quiet.json()["items"] == []
    assert quiet.json()["next_after"] == after and quiet.json()["has_more"] is False
    assert 0.9 <= held < 3, held

    answers: list[tuple[httpx.Response, float]] = []

    def poll() -> None:
        response = client.get("/published/feed", params={"after": after, "wait": 30})
        answers.append((response, time.monotonic()))

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.5)
    assert not answers, "held while nothing is newer"
    publish(served_db, "UPDATE study_topic SET name = 'woken' WHERE id = 2")
    committed = time.monotonic()
    waiter.join(10)
    response, answered = answers[0]
    assert response.status_code == 200
    assert [item["payload"]["name"] for item in response.json()["items"]] == ["woken"]
    assert answered - committed < 1.0, answered - committed


def test_health_and_metrics(client: httpx.Client) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["revision"] and health["feed_id"]
    client.get("/published/feed", params={"limit": 1})
    client.get("/published/feed", params={"limit": 0})
    text = client.get("/metrics").text
    for series in (
        'pubctl_serve_requests_total{route="/published/feed",status="200"}',
        'pubctl_serve_requests_total{route="/published/feed",status="400"}',
        'pubctl_serve_request_duration_seconds_bucket{le="0.005",route="/published/feed"}',
        "pubctl_serve_waiting_long_polls 0.0",
        "pubctl_serve_last_rev_served ",
        'pubctl_serve_pool_connections{state="max"} 3.0',
        "pubctl_serve_listener_connected 1.0",
    ):
        assert series in text, series


def test_non_loopback_host_needs_a_token(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.1"):
        result = run_inprocess(
            capsys, "--database-url", "postgresql://x@127.0.0.1:1/x", "serve", "--host", host
        )
        assert result.code == 2, result
        assert "--host" in result.err and "loopback" in result.err
    empty = tmp_path / "tokens"
    empty.write_text("\n# nothing\n")
    result = run_inprocess(capsys, "serve", "--token-file", str(empty))
    assert result.code == 2 and "holds no token" in result.err


def test_open_on_loopback_and_insecure_elsewhere(served_db: Database) -> None:
    url = reader_url(served_db)
    with Served(url) as open_server:
        assert httpx.get(open_server.url("/published/feed?limit=1")).status_code == 200
        assert httpx.get(open_server.url("/metrics")).status_code == 200
    with Served(url, "--host", "0.0.0.0", "--insecure-no-auth") as everywhere:
        port = everywhere.base.rsplit(":", 1)[1]
        assert httpx.get(f"http://127.0.0.1:{port}/published/feed?limit=1").status_code == 200


def test_pool_exhausted_is_503_with_retry_after(served_db: Database) -> None:
    with Served(reader_url(served_db), "--pool-size", "1", "--pool-timeout", "0.3") as small:
        answers: list[httpx.Response] = []
        with served_db.connect(autocommit=False) as locker:
            locker.execute("LOCK TABLE pub.content IN ACCESS EXCLUSIVE MODE")
            stuck = threading.Thread(
                target=lambda: answers.append(httpx.get(small.url("/published/feed"), timeout=30))
            )
            stuck.start()
            time.sleep(0.5)
            # Another question: the same one would share the stuck request's read.
            busy = httpx.get(small.url("/published/feed?limit=7"), timeout=30)
            assert busy.status_code == 503 and busy.headers["retry-after"]
            assert set(busy.json()) == {"error"} and "Traceback" not in busy.text
            locker.rollback()
        stuck.join(10)
        assert answers[0].status_code == 200
    assert "503" in small.log and "Traceback" not in small.log


def test_health_never_waits_behind_the_feed_pool(served_db: Database) -> None:
    """Every pool connection stuck behind a lock: /healthz still answers at once, on its
    own connection, and health checks arriving together share one query at a time."""
    url = reader_url(served_db)
    with Served(url, "--pool-size", "1", "--pool-timeout", "10") as small:
        answers: list[httpx.Response] = []
        with served_db.connect(autocommit=False) as locker:
            locker.execute("LOCK TABLE pub.content IN ACCESS EXCLUSIVE MODE")
            stuck = [
                threading.Thread(
                    target=lambda: answers.append(
                        httpx.get(small.url("/published/feed"), timeout=30)
                    )
                )
                for _ in range(3)
            ]
            for thread in stuck:
                thread.start()
            time.sleep(0.5)
            assert not answers, "the feed is stuck behind the lock"
            for _ in range(5):
                start = time.monotonic()
                health = httpx.get(small.url("/healthz"), timeout=30)
                took = time.monotonic() - start
                assert health.status_code == 200 and health.json()["status"] == "ok"
                assert took < 0.5, took
            before = _metric(small, 'pubctl_serve_database_queries_total{purpose="health"}')
            host, port = rawhttp.host_port(small.base)

            async def together() -> list[int]:
                answered = await asyncio.gather(
                    *(rawhttp.get(host, port, "/healthz") for _ in range(200))
                )
                return [status for status, _fields, _body, _at in answered]

            assert asyncio.run(together()) == [200] * 200
            health_queries = (
                _metric(small, 'pubctl_serve_database_queries_total{purpose="health"}') - before
            )
            assert 1 <= health_queries <= 100, health_queries
            locker.rollback()
        for thread in stuck:
            thread.join(15)
        assert [a.status_code for a in answers] == [200] * 3
    assert "Traceback" not in small.log


def test_health_has_one_connection_of_its_own_and_reopens_it_when_lost(
    served_db: Database,
) -> None:
    def health_sessions() -> list[int]:
        with served_db.connect() as conn:
            return [
                pid
                for (pid,) in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = 'pubctl serve health'"
                )
            ]

    others = set(health_sessions())  # the module's server
    with Served(reader_url(served_db)) as served:
        host, port = rawhttp.host_port(served.base)

        async def together() -> list[int]:
            answered = await asyncio.gather(
                *(rawhttp.get(host, port, "/healthz") for _ in range(50))
            )
            return [status for status, _fields, _body, _at in answered]

        assert asyncio.run(together()) == [200] * 50
        sessions = [pid for pid in health_sessions() if pid not in others]
        assert len(sessions) == 1, sessions
        with served_db.connect() as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (sessions[0],))
        # Lost behind its back: the next check opens another and still answers 200.
        start = time.monotonic()
        again = httpx.get(served.url("/healthz"), timeout=30)
        assert again.status_code == 200 and time.monotonic() - start < 1.0
        assert len([pid for pid in health_sessions() if pid not in others]) == 1
    assert "Traceback" not in served.log


def _metric(served: Served, series: str) -> float:
    for line in httpx.get(served.url("/metrics"), timeout=10).text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    raise AssertionError(f"no series {series}")


def test_start_up_failures_are_one_line(
    capsys: pytest.CaptureFixture[str], app_db: Database
) -> None:
    result = run_inprocess(capsys, "--database-url", app_db.url, "serve", "--port", "0")
    assert result.code == 3 and "pubctl migrate" in result.err, result
    with app_db.connect() as conn:
        conn.execute("CREATE SCHEMA pub; CREATE ROLE feed_nogrant LOGIN")
    url = app_db.url.replace(f"user={app_db.server.user}", "user=feed_nogrant")
    result = run_inprocess(capsys, "--database-url", url, "serve", "--port", "0")
    assert result.code == 3 and "GRANT" in result.err, result
    assert len(result.err.strip().splitlines()) == 1
    with app_db.connect() as conn:
        conn.execute("DROP SCHEMA pub; DROP ROLE feed_nogrant")


def test_start_up_refuses_a_database_at_another_revision(
    capsys: pytest.CaptureFixture[str], pub_db: Database
) -> None:
    for version, code, words in (("9999", 4, "newer pubctl"), ("0007", 3, "before 0.1.0")):
        with pub_db.connect() as conn:
            conn.execute("UPDATE pub.alembic_version SET version_num = %s", (version,))
            if version == "0007":
                conn.execute("DROP FUNCTION pub.health()")  # as at that revision
        result = run_inprocess(capsys, "--database-url", pub_db.url, "serve", "--port", "0")
        assert result.code == code and words in result.err, result
