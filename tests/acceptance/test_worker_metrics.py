"""`pubctl worker --metrics-port`: Prometheus metrics of a real worker, scraped over HTTP."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from support.cli import run_subprocess, spawn
from support.db import Database

NAMES = {
    "pubctl_outbox_backlog": "gauge",
    "pubctl_outbox_oldest_age_seconds": "gauge",
    "pubctl_capture_ok": "gauge",
    "pubctl_publishing_enabled": "gauge",
    "pubctl_last_rev": "gauge",
    "pubctl_apply_batch_duration_seconds": "histogram",
    "pubctl_worker_reconnects": "counter",
    "pubctl_worker_up": "gauge",
}


class Worker:
    def __init__(self, db: Database) -> None:
        self.proc = spawn(
            db.url, "worker", "--metrics-port", "0", "--poll-interval", "0.5",
            stderr=subprocess.PIPE,
        )  # fmt: skip
        self.log: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.url = self._wait_for_log(r"serving metrics on (http://\S+)").group(1)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def _wait_for_log(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.log):
                found = re.search(pattern, line)
                if found:
                    return found
            assert self.proc.poll() is None, "".join(self.log)
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the log: {''.join(self.log)}")

    def scrape(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url, timeout=5) as answer:
            assert answer.status == 200
            text = answer.read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        return families

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.reader.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code


def value(families: dict[str, Any], name: str, sample: str | None = None) -> float:
    family = families[name]
    for s in family.samples:
        if s.name == (sample or name):
            return float(s.value)
    raise AssertionError(f"no sample {sample or name} in {family}")


def _until(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_a_worker_serves_its_metrics_and_the_status_figures(pub_db: Database) -> None:
    started = time.monotonic()
    with pub_db.connect() as conn:
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'Anatomy')")
    worker = Worker(pub_db)
    try:
        _until(lambda: value(worker.scrape(), "pubctl_last_rev") == 1)
        m = worker.scrape()
        assert {name: f.type for name, f in m.items()} == NAMES
        assert value(m, "pubctl_worker_up") == 1
        assert value(m, "pubctl_worker_reconnects", "pubctl_worker_reconnects_total") == 0
        assert value(m, "pubctl_outbox_backlog") == 0
        assert value(m, "pubctl_outbox_oldest_age_seconds") == 0, "0 when the outbox is empty"
        assert "0 when the outbox is empty" in m["pubctl_outbox_oldest_age_seconds"].documentation
        assert value(m, "pubctl_capture_ok") == 1
        assert value(m, "pubctl_publishing_enabled") == 1
        batches = value(m, "pubctl_apply_batch_duration_seconds",
                        "pubctl_apply_batch_duration_seconds_count")  # fmt: skip
        assert batches >= 1

        # The applier held up by another session: scrapes go on, and show the backlog
        # as `status --json` does.
        with pub_db.connect(autocommit=False) as holder:
            holder.execute("LOCK TABLE pub.applier_lock IN EXCLUSIVE MODE")
            with pub_db.connect() as conn:
                conn.execute("UPDATE study_topic SET name = 'held' WHERE id = 1")
            time.sleep(1.2)
            scrape_started = time.monotonic()
            m = worker.scrape()
            assert time.monotonic() - scrape_started < 1.0
            status = json.loads(
                run_subprocess("--database-url", pub_db.url, "status", "--json").out
            )
            assert value(m, "pubctl_outbox_backlog") == status["outbox_backlog"] == 1
            age = value(m, "pubctl_outbox_oldest_age_seconds")
            assert 1.0 <= age <= status["outbox_oldest_age_s"]
            assert value(m, "pubctl_last_rev") == status["last_rev"] == 1
            holder.rollback()
        _until(lambda: value(worker.scrape(), "pubctl_last_rev") == 2)
        assert value(worker.scrape(), "pubctl_outbox_backlog") == 0

        assert run_subprocess("--database-url", pub_db.url, "disable").code == 0
        assert value(worker.scrape(), "pubctl_publishing_enabled") == 0
        assert run_subprocess("--database-url", pub_db.url, "enable").code == 0

        # The worker's session ended by the server: one reconnection, counted.
        with pub_db.connect() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pub.lock_holders('worker') WHERE granted"
            )
        worker._wait_for_log(r"reconnected after")
        m = worker.scrape()
        assert value(m, "pubctl_worker_reconnects", "pubctl_worker_reconnects_total") == 1
        assert value(m, "pubctl_worker_up") == 1
        with pub_db.connect() as conn:
            conn.execute("UPDATE study_topic SET name = 'after' WHERE id = 1")
        _until(lambda: value(worker.scrape(), "pubctl_last_rev") == 3)
    finally:
        code = worker.stop()
    assert code == 0, "".join(worker.log)
    print(f"took {time.monotonic() - started:.1f}s")


def test_metrics_port_taken_is_one_line_and_exit_3(pub_db: Database) -> None:
    worker = Worker(pub_db)
    try:
        port = worker.url.rsplit(":", 1)[1].split("/")[0]
        result = run_subprocess(
            "--database-url", pub_db.url, "worker", "--metrics-port", port, timeout=30
        )
    finally:
        worker.stop()
    assert result.code == 3, result
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.err
    assert "Traceback" not in result.err
