"""Capture at the head revision against an earlier one (the one before it, or
PUBCTL_BENCH_BASELINE), side by side: the
write-path figures a migration must not worsen (bulk insert, no-op UPDATE, single-row
inserts), measured in two databases of the same server, interleaved, reported as
head / previous."""

from __future__ import annotations

import os
import statistics
import threading
import time

import psycopg
import single_row
import write_path

from pubctl.migrate import migrate, revisions
from pubctl.queries import read_sql_file

REPEATS = int(os.environ.get("PUBCTL_BENCH_REPEATS", "5"))


def _prepare(url: str, revision: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(read_sql_file("sample_app_schema.sql").encode())
        migrate(url, revision)
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'bench')")
        conn.execute(write_path.STAGE.replace("%(rows)s", str(rows)).encode())
        conn.execute("VACUUM ANALYZE bench_staged")


def _bulk_insert(url: str) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE pub.settings SET publishing_enabled = false")
        conn.execute("TRUNCATE study_question, pub.outbox")
        conn.execute("UPDATE pub.settings SET publishing_enabled = true")
        conn.execute("CHECKPOINT")
        cols = write_path.COLUMNS
        return write_path._timed(
            conn, [f"INSERT INTO study_question ({cols}) SELECT {cols} FROM bench_staged"]
        )


def _insert_after_update(url: str) -> float:
    """The bulk insert in a transaction that first updated a row of the same table:
    capture then reads the inserted rows' current state (the path that keeps the last
    state winning), which plain bulk inserts never take."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE pub.settings SET publishing_enabled = false")
        conn.execute("TRUNCATE study_question, pub.outbox")
        conn.execute("UPDATE pub.settings SET publishing_enabled = true")
        conn.execute("CHECKPOINT")
        cols = write_path.COLUMNS
        return write_path._timed(
            conn,
            [
                f"INSERT INTO study_question ({cols}) SELECT {cols} FROM bench_staged"
                " ORDER BY id DESC LIMIT 1",
                "UPDATE study_question SET answer = 3 - answer"
                " WHERE id = (SELECT max(id) FROM study_question)",
                f"INSERT INTO study_question ({cols}) SELECT {cols} FROM bench_staged"
                " WHERE id < (SELECT max(id) FROM bench_staged)",
            ],
        )


def _noop_update(url: str) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM study_question")
        return write_path._timed(
            conn, ["UPDATE study_question SET updated_at = updated_at + interval '1 second'"]
        )


def _bulk_update(url: str) -> float:
    """UPDATE of body and explanation of every question, the outbox drained and vacuumed
    first (its normal state)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE pub.outbox")
        conn.execute("VACUUM study_question, pub.outbox")
        conn.execute("CHECKPOINT")
        return write_path._timed(
            conn,
            ["UPDATE study_question SET body = body || '.', explanation = explanation || '.'"],
        )


def _set_based_projection(url: str) -> float:
    """Every question's items projected into the outbox in one statement: a backfill
    page over the whole table."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE pub.outbox")
        conn.execute("CHECKPOINT")
        return write_path._timed(
            conn,
            ["SELECT pub.backfill_page('study_question', NULL, 1000000, false, false)"],
        )


def _single_row_tps(url: str) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        # New ids after the ones the bulk insert gave explicitly.
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('study_question', 'id'),"
            " (SELECT COALESCE(max(id), 0) + 1 FROM study_question))"
        )
    counts = [0] * single_row.CLIENTS
    stop = time.monotonic() + single_row.SECONDS
    sql = single_row.INSERT.format(table="study_question")

    def client(slot: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            n = 0
            while time.monotonic() < stop:
                conn.execute(sql, (n, n))
                n += 1
            counts[slot] = n

    threads = [threading.Thread(target=client, args=(i,)) for i in range(single_row.CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / single_row.SECONDS


def run(url: str, rows: int) -> list[tuple[str, str]]:
    """head / previous for each figure: times for the writes, tps for single rows."""
    # The revision to compare with: the one before the head, or PUBCTL_BENCH_BASELINE
    # (the head of the last release, say, when several revisions came since).
    previous = os.environ.get("PUBCTL_BENCH_BASELINE", revisions()[-2])
    head = revisions()[-1]
    with psycopg.connect(url, autocommit=True) as conn:
        base = conn.info.dbname
        for name in ("previous", "head"):
            conn.execute(f"DROP DATABASE IF EXISTS {base}_{name}")
            conn.execute(f"CREATE DATABASE {base}_{name}")
    urls = {name: url.replace(f"/{base}", f"/{base}_{name}") for name in ("previous", "head")}
    _prepare(urls["previous"], previous, rows)
    _prepare(urls["head"], head, rows)
    figures = {
        "bulk insert": _bulk_insert,
        "insert after update": _insert_after_update,
        "no-op update": _noop_update,
        "bulk update": _bulk_update,
        "set-based projection": _set_based_projection,
        "single-row tps": _single_row_tps,
    }
    results: dict[str, dict[str, list[float]]] = {f: {"previous": [], "head": []} for f in figures}
    for repeat in range(REPEATS + 1):
        # Alternate which database goes first, so that neither always runs warm.
        order = ("previous", "head") if repeat % 2 else ("head", "previous")
        for figure, measure in figures.items():
            for name in order:
                value = measure(urls[name])
                if repeat:
                    results[figure][name].append(value)

    def ratio(figure: str) -> str:
        values = results[figure]
        rs = sorted(h / p for h, p in zip(values["head"], values["previous"], strict=True))
        med = statistics.median(values["head"]) / statistics.median(values["previous"])
        return f"{med:.3f}x (min {rs[0]:.2f}, max {rs[-1]:.2f})"

    return [
        (f"bulk insert {rows} rows: time {head} / {previous}", ratio("bulk insert")),
        (
            f"update + bulk insert {rows} rows in one transaction: time {head} / {previous}",
            ratio("insert after update"),
        ),
        (f"no-op update {rows} rows: time {head} / {previous}", ratio("no-op update")),
        (f"bulk UPDATE {rows} rows: time {head} / {previous}", ratio("bulk update")),
        (
            f"set-based projection of {rows} rows: time {head} / {previous}",
            ratio("set-based projection"),
        ),
        (f"single-row inserts: tps {head} / {previous}", ratio("single-row tps")),
    ]
