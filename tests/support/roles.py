"""Real roles for privilege tests: created in the test database's cluster, dropped again.

Roles are cluster-wide, so each test creates its own and removes them (with everything
they own or were granted in the test database) when it ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg import conninfo, sql

from support.db import Database


def role_url(db: Database, role: str, password: str | None = None) -> str:
    """The test database's URL, logging in as ``role``."""
    params = conninfo.conninfo_to_dict(db.url)
    params["user"] = role
    params.pop("password", None)
    if password is not None:
        params["password"] = password
    return conninfo.make_conninfo(**params)  # type: ignore[arg-type]


@dataclass
class Roles:
    """The roles one test created, and a superuser connection to manage them."""

    db: Database
    admin: psycopg.Connection
    names: list[str] = field(default_factory=list)

    def create(self, name: str, options: str = "LOGIN") -> str:
        self.admin.execute(
            sql.SQL("CREATE ROLE {} " + options).format(sql.Identifier(name))  # type: ignore[arg-type]
        )
        self.names.append(name)
        return name

    def url(self, name: str) -> str:
        return role_url(self.db, name)

    def connect(self, name: str, *, autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(self.url(name), autocommit=autocommit)


@contextmanager
def roles(db: Database) -> Iterator[Roles]:
    """Create roles with ``.create``; they are dropped when the block ends."""
    admin = db.connect()
    made = Roles(db=db, admin=admin)
    try:
        yield made
    finally:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE usename = ANY (%s) AND pid <> pg_backend_pid()",
            (made.names,),
        )
        for name in reversed(made.names):
            ident = sql.Identifier(name)
            admin.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(ident))
            admin.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            admin.execute(sql.SQL("ALTER ROLE {} RESET ALL").format(ident))
            admin.execute(sql.SQL("DROP ROLE {}").format(ident))
        admin.close()
