"""Benchmark harness entry point (`make bench`).

Every scenario runs on a throwaway PostgreSQL server and reports ratios measured side
by side in one run. Scenarios register themselves in SCENARIOS as they are written.
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable
from pathlib import Path

import apply_feed
import backfill_bench
import bulk_writes
import chart
import feed_kinds
import orm_peer
import psycopg
import replicas
import revisions
import serve_bench
import single_row
import upgrade_bench
import verify_bench
import write_path

from pubctl.throwaway import ThrowawayPostgres

CHART = Path(__file__).with_name("write_path.png")

SCENARIOS: dict[str, Callable[[str, int], list[tuple[str, str]]]] = {
    "write path": write_path.run,
    "bulk writes": bulk_writes.run,
    "single row": single_row.run,
    "orm peer": orm_peer.run,
    "apply/feed": apply_feed.run,
    "feed kinds": feed_kinds.run,
    "backfill": backfill_bench.run,
    "verify": verify_bench.run,
    "serve": serve_bench.run,
    "serve pages": serve_bench.run_pages,
    "revisions": revisions.run,
    "upgrade": upgrade_bench.run,
    "replicas": replicas.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=int, default=100_000, help="rows per scenario")
    parser.add_argument(
        "--only", action="append", choices=list(SCENARIOS), help="run only this scenario"
    )
    parser.add_argument(
        "--chart", type=Path, default=CHART, help=f"write-path chart (default {CHART})"
    )
    args = parser.parse_args()
    # Durable settings, as in production: fsync and synchronous_commit stay on.
    settings = {"shared_buffers": "1GB", "max_connections": "50", "max_wal_size": "4GB"}
    with ThrowawayPostgres(settings) as pg:
        with psycopg.connect(pg.url) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        server = version[0] if version else "?"
        machine = f"{os.cpu_count()} cores, {platform.machine()}, PostgreSQL {server}"
        print(f"machine: {machine}")
        for number, (name, scenario) in enumerate(SCENARIOS.items()):
            if args.only and name not in args.only:
                continue
            dbname = f"bench_{number}"
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {dbname}")
            for label, figure in scenario(pg.url_for(dbname), args.scale):
                print(f"{name:12} {label:48} {figure}", flush=True)
    timings = {**write_path.TIMINGS, **orm_peer.TIMINGS}
    print(chart.draw(timings, args.chart, f"{machine}, scale {args.scale:,}"))


if __name__ == "__main__":
    main()
