"""Connection details of the test server and of one test database."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import conninfo

from pubctl.throwaway import ThrowawayPostgres


@dataclass
class ServerInfo:
    """Connection details in the shape pytest-postgresql's ``depends_on`` expects."""

    host: str
    port: int
    user: str
    password: str | None
    options: str = ""
    maintenance_dbname: str = "postgres"
    template_dbname: str | None = None
    dbname: str = "postgres"
    throwaway: ThrowawayPostgres | None = None

    def url(self, dbname: str) -> str:
        return conninfo.make_conninfo(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=dbname
        )


@dataclass
class Database:
    """A test database: its URL, and a way to open more connections to it."""

    url: str
    server: ServerInfo

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.url, autocommit=autocommit)
