"""``pubctl status``: one look at the state of publishing in a database."""

from __future__ import annotations

from typing import Any

from pubctl import __version__, db, migrate
from pubctl.queries import query


def collect(url: str) -> dict[str, Any]:
    """Gather the status report; fails (naming ``pubctl migrate``) when not installed."""
    with db.connect(url) as conn:
        revision = migrate.require_current(conn, url)
        settings = conn.execute(query("settings")).fetchone()
        assert settings is not None
        publishing, app_schema, changed_at = settings
    return {
        "database": db.describe(url),
        "pubctl_version": __version__,
        "revision": revision,
        "head_revision": migrate.head_revision(),
        "app_schema": app_schema,
        "publishing_enabled": bool(publishing),
        "publishing_changed_at": changed_at,
    }


def render(report: dict[str, Any]) -> str:
    """The human form of the report: one ``key: value`` line per field."""
    revision = report["revision"]
    head = report["head_revision"]
    lines = [
        f"database:        {report['database']}",
        f"revision:        {revision}" + (" (head)" if revision == head else f" (head is {head})"),
        f"app schema:      {report['app_schema']}",
        f"publishing:      {'on' if report['publishing_enabled'] else 'off'}"
        f" (since {report['publishing_changed_at']})",
    ]
    return "\n".join(lines)
