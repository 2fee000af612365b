"""``pubctl status``: one look at the state of publishing in a database."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from pubctl import __version__, capture, db, revision
from pubctl.queries import query


def collect(url: str) -> dict[str, Any]:
    """Open the database at ``url`` and gather the report (see :func:`report`)."""
    with db.connect(url) as conn:
        return report(conn, db.describe(url))


def report(conn: psycopg.Connection[Any], where: str) -> dict[str, Any]:
    """The status report; fails (naming ``pubctl migrate``) when not installed.

    docs/operations.md ("Monitoring") documents every field, with its unit."""
    current = revision.current_revision(conn)
    # An older revision this pubctl knows (the database was downgraded for a rollback, or
    # not upgraded yet) is reported, saying so; anything else is refused as by every
    # command.
    behind = current in revision.REVISIONS and current != revision.HEAD
    if not behind:
        revision.check(current, where)
    recorded = capture.switch(conn)
    problems = [p for p in capture.problems(conn) if not p.is_switch]
    with conn.cursor(row_factory=dict_row) as cur:
        numbers = cur.execute(query("status_publishing")).fetchone()
        two_phase = cur.execute(query("prepared_transactions")).fetchone()
    assert numbers is not None and two_phase is not None

    def seconds(name: str) -> float | None:
        value = numbers[name]
        return round(float(value), 3) if value is not None else None

    return {
        "database": where,
        "pubctl_version": __version__,
        "revision": current,
        "head_revision": revision.HEAD,
        "revision_behind": behind,
        "app_schema": recorded.app_schema,
        "feed_id": numbers["feed_id"],
        "publishing_enabled": recorded.publishing_enabled,
        "publishing_changed_at": recorded.changed_at,
        "capture_ok": not problems,
        "capture_problems": [{"subject": p.subject, "problem": p.problem} for p in problems],
        "outbox_backlog": int(numbers["backlog"]),
        "outbox_oldest_age_s": seconds("oldest_backlog_age_s"),
        "last_rev": int(numbers["last_rev"]),
        "last_published_age_s": seconds("last_published_age_s"),
        "items": numbers["items"] or {},
        "open_writers": int(numbers["open_writers"]),
        "oldest_open_writer_age_s": seconds("oldest_open_writer_age_s"),
        "workers_running": int(numbers["workers"]),
        "worker_last_active_s": seconds("worker_last_active_s"),
        "applier_busy": bool(numbers["applying"]),
        "max_prepared_transactions": int(two_phase["max_prepared"]),
        "prepared_transactions": int(two_phase["prepared_now"]),
    }


def render(report: dict[str, Any]) -> str:
    """The human form of the report."""
    revision = report["revision"]
    head = report["head_revision"]
    problems = report["capture_problems"]
    oldest = report["outbox_oldest_age_s"]
    items = report["items"]
    item_text = ", ".join(
        f"{kind} {counts['live']} live / {counts['tombstones']} tombstones"
        for kind, counts in sorted(items.items())
    )
    lines = [
        f"database:        {report['database']}",
        f"revision:        {revision}"
        + (
            " (head)"
            if revision == head
            else f" (this pubctl's head is {head}: `pubctl migrate` upgrades it; or use "
            "the pubctl release made for it)"
        ),
        f"app schema:      {report['app_schema']}",
        f"publishing:      {'on' if report['publishing_enabled'] else 'off'}"
        f" (since {report['publishing_changed_at']})",
        "capture:         "
        + (
            "ok (all 8 triggers as attached, nothing bypasses them)"
            if not problems
            else "NOT CAPTURING: " + "; ".join(f"{p['subject']}: {p['problem']}" for p in problems)
        ),
        f"outbox backlog:  {report['outbox_backlog']} rows"
        + (f", oldest {oldest:.1f}s old" if oldest is not None else ""),
        f"open writers:    {_open_writers(report)}",
        f"last rev:        {report['last_rev']} (feed id {report['feed_id']})",
        f"items:           {item_text or 'none published yet'}",
        f"workers:         {report['workers_running']} running"
        + (", applying now" if report["applier_busy"] else ""),
    ]
    if report["max_prepared_transactions"] > 0:
        # Information, not a capture problem: see operations.md, "Applications that use
        # PREPARE TRANSACTION".
        lines.append(
            f"two-phase:       allowed (max_prepared_transactions = "
            f"{report['max_prepared_transactions']}, {report['prepared_transactions']} prepared "
            "now); writers that PREPARE TRANSACTION need pubctl.notify = off"
        )
    return "\n".join(lines)


def _open_writers(report: dict[str, Any]) -> str:
    count = report["open_writers"]
    if not count:
        return "none"
    age = report["oldest_open_writer_age_s"]
    return f"{count} open transaction{'' if count == 1 else 's'} writing the outbox" + (
        f", oldest open {age:.1f}s" if age is not None else ""
    )
