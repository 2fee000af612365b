"""``pubctl rename-column``: rename a projected column of a source table in one step.

Capture reads the projected columns by name on every write, so a rename must change
the table and the capture that reads it together. One transaction does both:

1. it locks the table (ACCESS EXCLUSIVE, waiting at most ``lock_timeout_s``): writes
   wait for the commit, none runs half way;
2. it replaces what reads the column by name (the capture functions, the lists of
   projected columns), rendered from the definition with the column's new name;
3. it renames the column (the DDL guard lets exactly this change through: the
   projected columns it checks already name the new column);
4. it attaches the capture triggers again, so that their record names the new column.

The payloads do not change (a field keeps its key), so nothing is republished. The
definition (``pubctl/sources.py``) then names the column's new name with
``Column(name, types, column=new)``; until then every command reads the installed
names (:func:`installed`), and a migration rendered from a definition that still names
the old column fails (``shape check``) and changes nothing.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from pubctl import rendering, revision_sql, sources
from pubctl.errors import PubctlError
from pubctl.rendering import Rendered
from pubctl.sources import Definition


def _as_pub_owner(conn: psycopg.Connection[Any]) -> None:
    """In this transaction, act as the owner of schema pub when this session is a
    superuser: pub's functions are that role's code, which it may rewrite, so they never
    run with a superuser's rights (a superuser may act as any role)."""
    conn.execute(
        "SELECT set_config('role', n.nspowner::regrole::text, true)"
        " FROM pg_catalog.pg_namespace AS n, pg_catalog.pg_roles AS r"
        " WHERE n.nspname = 'pub' AND r.rolname = current_user AND r.rolsuper"
        " AND n.nspowner <> r.oid"
    )


def installed(conn: psycopg.Connection[Any]) -> Definition:
    """The definition with each projected column under the name the installed capture
    reads (``pub.source_columns``, in the definition's column order), read as pub's
    owner (:func:`_as_pub_owner`). A source whose installed columns do not match the
    definition one for one is taken as defined."""
    result = sources.DEFINITION
    role = conn.execute("SELECT current_setting('role')").fetchone()
    assert role is not None
    with conn.transaction():
        _as_pub_owner(conn)
        for source in result.sources:
            names = [
                str(row[0])
                for row in conn.execute(
                    "SELECT column_name FROM pub.source_columns(%s)", (source.table,)
                ).fetchall()
            ]
            if len(names) != len(source.columns) or not all(map(sources.plain_name, names)):
                continue
            for column, name in zip(source.columns, names, strict=True):
                if name != column.column_name:
                    result = result.renamed(source.table, column.name, name)
        conn.execute("SELECT set_config('role', %s, true)", (role[0],))
    return result


def _require_same_kinds(conn: psycopg.Connection[Any], definition: Definition) -> None:
    """The installed sources and kinds are this definition's: rendering from another
    would replace what the database has with what this process was given."""
    rows = conn.execute(
        "SELECT s, pub.source_kinds(s) FROM unnest(pub.source_tables()) AS s"
    ).fetchall()
    found = {str(table): tuple(kinds) for table, kinds in rows}
    wanted = {s.table: s.kinds for s in definition.sources}
    if found != wanted:
        raise PubctlError(
            "the database publishes other sources or kinds than this pubctl's definition "
            f"({', '.join(sorted(found))} against {', '.join(sorted(wanted))}); nothing was "
            "changed",
            hint="run the pubctl (and PUBCTL_DEFINITION) that migrated it",
        )


def _split(objects: list[Rendered]) -> tuple[list[Rendered], list[Rendered]]:
    """The objects replaced before the rename, and the triggers (and the final check),
    which name the column as it is after it."""
    after = [o for o in objects if o.identity.startswith("trigger ") or o.identity == "shape check"]
    return [o for o in objects if o not in after], after


def rename_column(
    conn: psycopg.Connection[Any], table: str, old: str, new: str, lock_timeout_s: float
) -> None:
    """Rename ``table``'s projected column ``old`` to ``new`` and replace the capture that
    reads it, in one transaction (see the module docstring)."""
    tables = sources.DEFINITION.by_table()
    if table not in tables:
        raise PubctlError(
            f"{table} is not a table pubctl publishes from",
            hint="its tables are " + ", ".join(tables),
        )
    if not sources.plain_name(new):
        raise PubctlError(
            f"{new!r} is not a name pubctl reads a column by",
            hint="lowercase letters, digits and _, at most 63 characters, not a reserved word "
            "(the capture functions name the column as it is)",
        )
    app = conn.execute("SELECT app_schema FROM pub.settings").fetchone()
    assert app is not None
    relation = sql.Identifier(str(app[0]), table)
    try:
        with conn.transaction():
            conn.execute(
                "SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_s * 1000)}ms",)
            )
            # First the lock: what is installed cannot change while this reads it.
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(relation))
            _as_pub_owner(conn)
            _require_same_kinds(conn, sources.DEFINITION)
            current = installed(conn)
            source = current.by_table()[table]
            column = next((c for c in source.columns if c.column_name == old), None)
            if column is None:
                raise PubctlError(
                    f"column {old} of {table} is not one pubctl reads",
                    hint="rename it with ALTER TABLE: capture does not read it; pubctl reads "
                    + ", ".join(c.column_name for c in source.columns),
                )
            if column == source.key:
                raise PubctlError(
                    f"column {old} of {table} is the key every item is published under",
                    hint="the key is not renamed in one step: keep its name",
                )
            before_rename, after_rename = _split(rendering.render(current))
            new_before, new_after = _split(
                rendering.render(current.renamed(table, column.name, new))
            )
            conn.execute(revision_sql.delta(before_rename, new_before).encode())
            # The rename itself as this session's role (the table's owner, or a superuser).
            conn.execute("RESET ROLE")
            conn.execute(
                sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                    relation, sql.Identifier(old), sql.Identifier(new)
                )
            )
            _as_pub_owner(conn)
            conn.execute(revision_sql.delta(after_rename, new_after).encode())
    except psycopg.errors.LockNotAvailable:
        raise PubctlError(
            f"{table} stayed locked for {lock_timeout_s:g}s; nothing was changed",
            hint="retry when the long transactions on it have ended, or give --lock-timeout",
        ) from None
    except psycopg.errors.DuplicateColumn:
        raise PubctlError(
            f"{table} already has a column {new}; nothing was changed",
            hint="choose another name",
        ) from None
