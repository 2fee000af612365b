"""Named SQL queries, loaded from ``sql/queries.sql``.

Every runtime query lives in that one file under a ``-- name: <name>`` header, so
Python code calls queries by name and holds no SQL text of its own.
"""

from __future__ import annotations

import functools
import re

from pubctl.shipped import sql_folder

_HEADER = re.compile(r"^--\s*name:\s*(?P<name>[a-z_][a-z0-9_]*)\s*$", re.M)


def read_sql_file(name: str) -> str:
    """Return the text of a file shipped in the ``sql/`` directory."""
    return (sql_folder() / name).read_text(encoding="utf-8")


def schema_files() -> list[str]:
    """The parts of the current schema (``sql/schema/*.sql``), in the order they run."""
    return sorted(f"schema/{entry.name}" for entry in (sql_folder() / "schema").glob("*.sql"))


@functools.cache
def all_queries() -> dict[str, str]:
    """Every named query of ``queries.sql``, by name."""
    text = read_sql_file("queries.sql")
    parts = _HEADER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice in queries.sql")
        queries[name] = body.strip()
    return queries


def query(name: str) -> str:
    """The SQL text of the named query."""
    return all_queries()[name]
