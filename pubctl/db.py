"""Connecting to the database, and keeping passwords out of everything pubctl prints.

The database comes from ``--database-url``, else ``PUBCTL_DATABASE_URL``, else
``DATABASE_URL``, else the libpq environment (``PGHOST``, ``PGPORT``, ...): an empty
conninfo string lets libpq read its environment by itself.

Every session pubctl opens, synchronous or not (commands, the worker, the migrations,
``serve``'s pool and listener, the demo), goes through :func:`session_kwargs`, which
pins ``search_path`` to ``pg_catalog, pg_temp`` in the startup packet. An operator or
function that a table owner plants in ``public``, in the application's schema or in a
schema named after the connecting role (``"$user"``) is then never on the path, so
it can never be picked over a built-in, whatever a query's casts or polymorphic calls
leave open. Startup options outrank ``ALTER ROLE/DATABASE ... SET search_path``.
``tests/unit/test_one_connect_path.py`` holds every other way of connecting out of the
code.
"""

from __future__ import annotations

import os
import re
from typing import Any

import psycopg
from psycopg import conninfo

from pubctl.errors import PubctlError

APPLICATION_NAME = "pubctl"
CONNECT_TIMEOUT_S = 10
# Nobody but the superuser can write pg_catalog, and pg_temp is this session's own (and
# is never searched for functions or operators).
SEARCH_PATH = "pg_catalog,pg_temp"

_URI_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)(?P<pw>[^@/\s]*)(?P<tail>@)", re.I
)
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)", re.I)


class BadDatabaseUrl(PubctlError):
    """The database URL cannot be parsed."""


class ConnectError(PubctlError):
    """The database cannot be reached (or refuses the login)."""


def _passwords(url: str) -> list[str]:
    found: list[str] = []
    for pattern in (_URI_PASSWORD, _KV_PASSWORD):
        found += [m.group("pw").strip("'") for m in pattern.finditer(url)]
    try:
        parsed = conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        parsed = {}
    if parsed.get("password"):
        found.append(str(parsed["password"]))
    env = os.environ.get("PGPASSWORD")
    if env:
        found.append(env)
    return [p for p in found if p]


def mask(text: str, url: str = "") -> str:
    """Return ``text`` with every password (in URLs, key=value pairs, or the one in
    ``url`` and ``$PGPASSWORD``) replaced by ``***``."""
    text = _URI_PASSWORD.sub(r"\g<head>***\g<tail>", text)
    text = _KV_PASSWORD.sub(r"\g<head>***", text)
    for secret in sorted(_passwords(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def validate_url(url: str) -> str:
    """Check that ``url`` parses as a libpq conninfo, ports included; raise
    ``BadDatabaseUrl`` if not (a usage error: exit 2)."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise BadDatabaseUrl(mask(_first_line(exc), url)) from None
    # libpq parses "port=abc" happily and only refuses it when connecting.
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise BadDatabaseUrl(f"invalid port {port!r}: expected a number from 1 to 65535")
    return url


def describe(url: str) -> str:
    """A short, password-free description such as ``app@db.example:5432/study``."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return mask(url)

    def get(key: str, env: str, default: str) -> str:
        value = params.get(key) or os.environ.get(env) or default
        return str(value)

    user = get("user", "PGUSER", os.environ.get("USER", "?"))
    host = get("host", "PGHOST", "local socket")
    port = get("port", "PGPORT", "5432")
    dbname = get("dbname", "PGDATABASE", user)
    return mask(f"{user}@{host}:{port}/{dbname}", url)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def session_options(url: str) -> str:
    """The ``options`` startup parameter for ``url``: the user's own (from the URL, else
    ``$PGOPTIONS``, which libpq would otherwise use) followed by pubctl's pinned search
    path, which therefore wins over any ``-c search_path`` before it."""
    try:
        given = conninfo.conninfo_to_dict(url).get("options")
    except psycopg.Error:
        given = None
    if given is None:
        given = os.environ.get("PGOPTIONS", "")
    pinned = "-c search_path=" + SEARCH_PATH
    return f"{given} {pinned}".strip()


def session_kwargs(url: str, *, application_name: str = APPLICATION_NAME) -> dict[str, Any]:
    """Connection parameters for every session pubctl opens (see the module's doc)."""
    return {
        "application_name": application_name,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "options": session_options(url),
    }


def connection_failed(url: str, exc: BaseException) -> ConnectError:
    """The one-line error for a connection that could not be opened."""
    detail = " ".join(str(exc).split())
    detail = detail.removeprefix("connection failed: ")
    return ConnectError(
        f"cannot connect to {describe(url)}: {mask(detail, url)}",
        hint="check --database-url, PUBCTL_DATABASE_URL, DATABASE_URL or the PG* variables",
    )


def connect(
    url: str, *, autocommit: bool = False, application_name: str = APPLICATION_NAME
) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection, turning failures into a one-line ``PubctlError``."""
    validate_url(url)
    try:
        return psycopg.connect(
            url, autocommit=autocommit, **session_kwargs(url, application_name=application_name)
        )
    except psycopg.OperationalError as exc:
        raise connection_failed(url, exc) from None


async def connect_async(
    url: str, *, autocommit: bool = False, application_name: str = APPLICATION_NAME
) -> psycopg.AsyncConnection[tuple[object, ...]]:
    """:func:`connect` for asyncio code (``serve``'s listener): the same session
    parameters; connection failures are left to the caller, which retries them."""
    validate_url(url)
    return await psycopg.AsyncConnection.connect(
        url, autocommit=autocommit, **session_kwargs(url, application_name=application_name)
    )
