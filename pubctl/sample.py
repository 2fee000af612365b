"""The sample application tables (``pubctl init-sample-schema``), for demos and tests.

They belong to the application in a real install; pubctl's migrations never create
them. The schema is created only when it does not exist, so a role with CREATE on an
existing schema (``public``) is enough.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from pubctl.queries import query, read_sql_file


def create_tables(conn: psycopg.Connection[Any], schema: str) -> None:
    """Create study_topic and study_question in ``schema`` (in one transaction)."""
    ident = sql.Identifier(schema)
    with conn.transaction():
        row = conn.execute(query("sample_schema_exists"), {"schema": schema}).fetchone()
        if not row or not row[0]:
            conn.execute(sql.SQL(query("create_sample_schema")).format(schema=ident))
        conn.execute(sql.SQL(query("set_sample_search_path")).format(schema=ident))
        conn.execute(read_sql_file("sample_app_schema.sql").encode())
