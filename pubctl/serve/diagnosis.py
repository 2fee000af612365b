"""What a failure to read the database means for a viewer, told apart: a database that
does not answer, a missing privilege (named), pubctl not installed. ``/healthz`` and
the feed's 503s both say it, and that the database is at another pubctl revision."""

from __future__ import annotations

import psycopg
from psycopg import errors

from pubctl import db

UNAVAILABLE = "unavailable"
MISSING_PRIVILEGE = "missing_privilege"
NOT_MIGRATED = "not_migrated"
WRONG_REVISION = "wrong_revision"

READER_RIGHTS = (
    "a feed reader needs USAGE on schema pub and EXECUTE on pub.feed, pub.feed_id and "
    "pub.health (GRANT pubctl_feed_reader TO the role serve connects as)"
)


def diagnose(exc: BaseException, url: str) -> tuple[str, str]:
    """``(status, reason)`` for ``exc``, raised while reading the database at ``url``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    first = db.mask(text.split(" LINE ")[0], url)
    if isinstance(exc, errors.InsufficientPrivilege):
        return MISSING_PRIVILEGE, f"missing privilege: {first}; {READER_RIGHTS}"
    if isinstance(exc, errors.UndefinedFunction | errors.InvalidSchemaName | errors.UndefinedTable):
        return NOT_MIGRATED, (
            f"pubctl is not installed in this database ({first}): run `pubctl migrate`"
        )
    if isinstance(exc, psycopg.Error) and not isinstance(exc, psycopg.OperationalError):
        return UNAVAILABLE, f"the database refused the query: {first}"
    return UNAVAILABLE, "the database does not answer"


def wrong_revision(revision: str | None, needed: str) -> str:
    """Why a database at pubctl revision ``revision`` cannot be served by a server that
    needs ``needed``: ``/healthz`` and the feed's 503s say it alike."""
    return f"the database is at pubctl revision {revision or 'none'}; this server needs {needed}"
