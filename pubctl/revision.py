"""Which pubctl schema revision a database is at, and the check every command makes.

The revision ids are listed here rather than read from the migration scripts: every
command checks the revision, and only ``pubctl migrate`` needs Alembic (a test holds
this list equal to the scripts).
"""

from __future__ import annotations

from typing import Any

import psycopg

from pubctl.errors import NotMigratedError, SchemaNewerError
from pubctl.queries import query

REVISIONS = ("0100", "0101", "0102", "0103", "0104", "0105")
HEAD = REVISIONS[-1]
# The revision that creates the published state (pub.content): going below it drops
# what viewers read, coming back creates it anew under another feed identity.
CONTENT_REVISION = "0100"
# Revision ids of the development history before 0.1.0, which the baseline (0100)
# replaced. That history was never released, so there is no upgrade path from it: a
# database at one of these is named as such, rather than as one from a newer pubctl.
PRE_RELEASE = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009")
PRE_RELEASE_HINT = (
    "remove it with the pubctl that installed it (`pubctl migrate --revision base`, adding "
    "`--drop-published-state` if it asks), then run `pubctl migrate` and "
    "`pubctl backfill all`"
)

Conn = psycopg.Connection[Any]


def current_revision(conn: Conn) -> str | None:
    """The revision the database is at, or None when pubctl is not installed."""
    row = conn.execute(query("has_version_table")).fetchone()
    if not row or not row[0]:
        return None
    version = conn.execute(query("pub_version")).fetchone()
    return str(version[0]) if version else None


def check(revision: str | None, where: str) -> str:
    """Raise unless ``revision`` is this pubctl's head; ``where`` names the database."""
    if revision is None:
        raise NotMigratedError(f"{where} has no pubctl schema", hint="run `pubctl migrate` first")
    if revision in PRE_RELEASE:
        raise NotMigratedError(
            f"{where} is at pubctl revision {revision}, from the unreleased history before "
            f"0.1.0; this pubctl needs {HEAD}",
            hint=PRE_RELEASE_HINT,
        )
    if revision not in REVISIONS:
        raise SchemaNewerError(
            f"{where} was migrated by a newer pubctl (revision {revision}); "
            f"this pubctl only knows revisions up to {HEAD}",
            hint="upgrade pubctl; do not downgrade the database with an older pubctl",
        )
    if revision != HEAD:
        raise NotMigratedError(
            f"{where} is at pubctl revision {revision}, this pubctl needs {HEAD}",
            hint="run `pubctl migrate`",
        )
    return revision


def require_current(conn: Conn, where: str) -> str:
    """Check the database is migrated to exactly this pubctl's head.

    Raises ``NotMigratedError`` (naming ``pubctl migrate``) when it is not installed or
    behind, and ``SchemaNewerError`` when a newer pubctl migrated it.
    """
    return check(current_revision(conn), where)
