"""`pubctl serve`'s metrics stay true through what operators do: the published state
dropped and installed again (a new feed, revs from 1 again), the listening connection
lost. And every metric the shipped Prometheus rules and Grafana dashboard use is one a
real `pubctl serve` or `pubctl worker --metrics-port` exports."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from pubctl.serve.metrics import Metrics

from support.cli import run_subprocess, spawn
from support.db import Database
from support.serve import Served, reader_url, wait_until

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "pubctl-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "pubctl-dashboard.json"

# What `pubctl worker --metrics-port` exports (CONTRACT section 6), with their types.
WORKER_METRICS = {
    "pubctl_outbox_backlog": "gauge",
    "pubctl_outbox_oldest_age_seconds": "gauge",
    "pubctl_capture_ok": "gauge",
    "pubctl_publishing_enabled": "gauge",
    "pubctl_last_rev": "gauge",
    "pubctl_apply_batch_duration_seconds": "histogram",
    "pubctl_worker_reconnects_total": "counter",
    "pubctl_worker_up": "gauge",
}
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def pubctl(db: Database, *args: str) -> Any:
    return run_subprocess(*args, "--database-url", db.url)


def samples(text: str) -> dict[str, float]:
    """Every sample of a Prometheus text exposition, by its series (name and labels)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            found[series] = float(value)
    return found


def metric(served: Served, series: str) -> float:
    answer = httpx.get(served.url("/metrics"), timeout=10)
    assert answer.status_code == 200, answer.text
    return samples(answer.text)[series]


def last_rev(db: Database) -> int:
    with db.connect() as conn:
        row = conn.execute("SELECT last_rev FROM pub.rev_counter").fetchone()
    assert row is not None
    return int(row[0])


def read_all(served: Served, feed_id: str | None = None) -> dict[str, Any]:
    """Page through the whole feed as a viewer does; the last answer."""
    after = 0
    while True:
        params: dict[str, Any] = {"after": after, "limit": 10000}
        if feed_id is not None:
            params["feed_id"] = feed_id
        answer = httpx.get(served.url("/published/feed"), params=params, timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        after = body["next_after"]
        if not body["has_more"]:
            return dict(body)


def seed(db: Database, questions: int, rounds: int) -> None:
    """Topics and questions, published, then edited ``rounds`` times (more revs)."""
    with db.connect() as conn:
        conn.execute("UPDATE pub.settings SET publishing_enabled = true")
        conn.execute(
            "INSERT INTO study_topic (id, name) SELECT g, 't' || g FROM generate_series(1, 3) g"
        )
        conn.execute(
            "INSERT INTO study_question (id, topic_id, body, choices, explanation, explanation_status)"
            " SELECT g, 1, 'q' || g, '[\"a\"]', 'e', 'ready' FROM generate_series(1, %s) g",
            (questions,),
        )
        conn.execute("SELECT pub.apply_batch(1000000)")
        for n in range(rounds):
            conn.execute("UPDATE study_question SET body = %s || id", (f"edit {n} of ",))
            conn.execute("SELECT pub.apply_batch(1000000)")


def test_revs_follow_the_current_feed_across_a_drop_and_reinstall(pub_db: Database) -> None:
    seed(pub_db, questions=60, rounds=8)
    old_last = last_rev(pub_db)
    with Served(reader_url(pub_db)) as served:
        old = read_all(served)
        assert old["next_after"] == old_last
        assert wait_until(lambda: metric(served, "pubctl_serve_last_rev_served") == old_last)
        assert wait_until(lambda: metric(served, "pubctl_serve_last_rev") == old_last)

        # The operator drops the published state and installs it again: a new feed whose
        # revs start from 1, far below the old feed's.
        down = pubctl(pub_db, "migrate", "--revision", "base", "--drop-published-state")
        assert down.code == 0, down
        assert pubctl(pub_db, "migrate").code == 0
        reader_url(pub_db)  # the reader's grants went with the old schema
        assert pubctl(pub_db, "backfill", "all").code == 0
        assert pubctl(pub_db, "apply").code == 0  # publishes, and notifies serve
        new_last = last_rev(pub_db)
        assert 0 < new_last < old_last

        # The apply's notification makes the server read the new head: both gauges now
        # describe the new feed, before any viewer asked for it.
        assert wait_until(lambda: metric(served, "pubctl_serve_last_rev") == new_last), (
            metric(served, "pubctl_serve_last_rev"),
            new_last,
            served.log,
        )
        assert metric(served, "pubctl_serve_last_rev_served") == 0

        # A viewer holding the old feed's identity is told to restart, and the answer
        # that says so moves nothing.
        stale = httpx.get(
            served.url("/published/feed"),
            params={"after": old_last, "feed_id": old["feed_id"]},
            timeout=10,
        )
        assert stale.status_code == 409, stale.text
        assert metric(served, "pubctl_serve_last_rev_served") == 0
        new = read_all(served)
        assert new["feed_id"] != old["feed_id"] and new["next_after"] == new_last
        assert metric(served, "pubctl_serve_last_rev_served") == new_last

        # The new feed goes on: a write published later moves both.
        with pub_db.connect() as conn:
            conn.execute("UPDATE study_topic SET name = 'renamed' WHERE id = 1")
            conn.execute("SELECT pub.apply_batch(1000)")
        assert wait_until(lambda: metric(served, "pubctl_serve_last_rev") == new_last + 1)
        read_all(served, feed_id=new["feed_id"])
        assert metric(served, "pubctl_serve_last_rev_served") == new_last + 1
    assert "Traceback" not in served.log


def test_a_late_answer_of_a_replaced_feed_moves_nothing() -> None:
    """A read that started before the reset and lands after it (a page, or a head
    re-read) is of a feed already replaced: it neither moves the gauges nor brings the
    old feed back."""
    metrics = Metrics(lambda: {})

    def gauges() -> tuple[float, float]:
        text = metrics.render().decode()
        found = samples(text)
        return found["pubctl_serve_last_rev"], found["pubctl_serve_last_rev_served"]

    metrics.head("old", 95004)
    metrics.served("old", 95004)
    assert gauges() == (95004, 95004)
    metrics.head("new", 200)
    assert gauges() == (200, 0)
    metrics.served("old", 95003)
    metrics.head("old", 95004)
    assert gauges() == (200, 0)
    metrics.served("new", 150)
    metrics.head("new", 120)  # a re-read that started before the answer: never back
    assert gauges() == (200, 150)
    metrics.served("new", 230)  # published after the server's last read of the head
    assert gauges() == (230, 230)
    metrics.served("newer", None)  # an empty answer of yet another feed
    assert gauges() == (0, 0)


def listener_pids(db: Database) -> list[int]:
    with db.connect() as conn:
        return [
            pid
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'pubctl serve listener'"
            )
        ]


def test_listener_reconnects_count_losses_only(pub_db: Database) -> None:
    with Served(reader_url(pub_db)) as served:
        assert wait_until(lambda: metric(served, "pubctl_serve_listener_connected") == 1)
        assert wait_until(lambda: len(listener_pids(pub_db)) == 1)
        # Connecting at start-up is no reconnection.
        assert metric(served, "pubctl_serve_listener_reconnects_total") == 0
        for losses in (1, 2):
            (pid,) = listener_pids(pub_db)
            with pub_db.connect() as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            assert wait_until(
                lambda n=losses: metric(served, "pubctl_serve_listener_reconnects_total") == n,
                timeout=15,
            ), served.log
            assert wait_until(lambda: metric(served, "pubctl_serve_listener_connected") == 1)
            assert wait_until(lambda lost=pid: listener_pids(pub_db) not in ([], [lost]))
        # Listening again: a publish reaches the server's head.
        with pub_db.connect() as conn:
            conn.execute("UPDATE pub.settings SET publishing_enabled = true")
            conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'after the losses')")
            conn.execute("SELECT pub.apply_batch(1000)")
        rev = last_rev(pub_db)
        assert wait_until(lambda: metric(served, "pubctl_serve_last_rev") == rev)
        assert metric(served, "pubctl_serve_listener_reconnects_total") == 2
    assert "listener lost the database" in served.log
    assert "Traceback" not in served.log


# --- the names the rules and the dashboard use -------------------------------------------


def family(name: str) -> str:
    """A sample's metric family: ``x_bucket``, ``x_count``, ``x_sum`` are ``x``'s."""
    for suffix in ("_bucket", "_count", "_sum", "_created"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def used_names() -> set[str]:
    """Every pubctl metric name the rules' expressions and the dashboard's queries use."""
    # Each rule's expression: from "expr:" to its "for:" (folded blocks included).
    exprs = re.findall(r"expr: (.*?)\n\s+for:", RULES.read_text(), re.S)
    assert len(exprs) >= 10
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    names = {name for expr in exprs for name in re.findall(r"\bpubctl_[a-z_]+\b", expr)}
    assert names, "no metric name found in the rules and the dashboard"
    return names


def exported_names(text: str) -> set[str]:
    """Metric names of an exposition: every sample name, and every family's name."""
    names = {re.split(r"[{ ]", series, maxsplit=1)[0] for series in samples(text)}
    return names | {family(name) for name in names}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_metrics_text(db: Database) -> str | None:
    """The /metrics of a real `pubctl worker --metrics-port P`; None when the worker has
    no such option."""
    helped = run_subprocess("worker", "--help")
    if "--metrics-port" not in helped.out:
        return None
    port = free_port()
    worker = spawn(db.url, "worker", "--metrics-port", str(port), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                if answer.status_code == 200 and "pubctl_worker_up 1" in answer.text:
                    return answer.text
            except httpx.HTTPError:
                pass
            if worker.poll() is not None or time.monotonic() > deadline:
                _out, err = worker.communicate(timeout=5)
                raise AssertionError(f"pubctl worker served no /metrics on {port}:\n{err}")
            time.sleep(0.1)
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.communicate(timeout=15)


def test_every_metric_the_rules_and_the_dashboard_use_is_exported(pub_db: Database) -> None:
    used = used_names()
    serve_used = {name for name in used if name.startswith("pubctl_serve_")}
    worker_used = used - serve_used
    seed(pub_db, questions=3, rounds=1)
    with Served(reader_url(pub_db)) as served:
        # One answer of each kind the rules count: labelled series appear once used.
        read_all(served)
        httpx.get(served.url("/healthz"), timeout=10)
        text = httpx.get(served.url("/metrics"), timeout=10).text
    missing = serve_used - exported_names(text)
    assert not missing, f"used but not exported by pubctl serve: {sorted(missing)}"

    # The worker's names: only those of its documented metrics (with the samples a
    # histogram or counter has).
    documented = set(WORKER_METRICS)
    for name, kind in WORKER_METRICS.items():
        if kind == "histogram":
            documented |= {name + "_bucket", name + "_count", name + "_sum"}
    unknown = worker_used - documented
    assert not unknown, f"used but not among the worker's metrics: {sorted(unknown)}"
    exported = worker_metrics_text(pub_db)
    if exported is None:
        pytest.skip(
            "pubctl worker has no --metrics-port yet: the worker's names were checked "
            "against its documented list only, not against a real /metrics"
        )
    missing = worker_used - exported_names(exported)
    assert not missing, f"used but not exported by pubctl worker: {sorted(missing)}"


def test_metric_types_match_how_the_rules_use_them() -> None:
    """rate()/increase() only over counters and histogram samples; a gauge is never
    rated (a reset would read as a huge negative rate)."""
    text = RULES.read_text() + DASHBOARD.read_text()
    for fn, name in re.findall(r"\b(rate|increase|irate)\((pubctl_[a-z_]+)", text):
        assert name.endswith(SUFFIXES), f"{fn}() over {name}, which is not a counter"
