"""Connecting to the database, and keeping passwords out of everything pubctl prints.

The database comes from ``--database-url``, else ``PUBCTL_DATABASE_URL``, else
``DATABASE_URL``, else the libpq environment (``PGHOST``, ``PGPORT``, ...): an empty
conninfo string lets libpq read its environment by itself.
"""

from __future__ import annotations

import os
import re

import psycopg
from psycopg import conninfo

from pubctl.errors import PubctlError

APPLICATION_NAME = "pubctl"
CONNECT_TIMEOUT_S = 10

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


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection, turning failures into a one-line ``PubctlError``."""
    validate_url(url)
    try:
        return psycopg.connect(
            url,
            autocommit=autocommit,
            application_name=APPLICATION_NAME,
            connect_timeout=CONNECT_TIMEOUT_S,
        )
    except psycopg.OperationalError as exc:
        detail = " ".join(str(exc).split())
        detail = detail.removeprefix("connection failed: ")
        raise ConnectError(
            f"cannot connect to {describe(url)}: {mask(detail, url)}",
            hint="check --database-url, PUBCTL_DATABASE_URL, DATABASE_URL or the PG* variables",
        ) from None
