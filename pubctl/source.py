"""What pubctl needs of the application's tables, and the check that they have it.

The tables belong to the application; pubctl only reads them and attaches triggers.
Extra columns and any column order are fine; these columns must exist with these types.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg
from psycopg.rows import dict_row

from pubctl.queries import query

ID_TYPES = ("smallint", "integer", "bigint")
INT_TYPES = ("smallint", "integer")
TEXT_TYPES = ("text", "character varying")
TIMESTAMP_TYPES = ("timestamp with time zone", "timestamp without time zone")

SOURCE_TABLES: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "study_topic": {
        "id": ID_TYPES,
        "name": TEXT_TYPES,
        "exam_round_size": INT_TYPES,
        "deleted_at": TIMESTAMP_TYPES,
    },
    "study_question": {
        "id": ID_TYPES,
        "topic_id": ID_TYPES,
        "exam_name": TEXT_TYPES,
        "exam_round": INT_TYPES,
        "number": INT_TYPES,
        "body": TEXT_TYPES,
        "choices": ("jsonb",),
        "answer": INT_TYPES,
        "explanation": TEXT_TYPES,
        "explanation_status": TEXT_TYPES,
        "deleted_at": TIMESTAMP_TYPES,
    },
}


def source_problems(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> list[str]:
    """Everything missing or wrong in the application's tables, one line each.

    An empty list means the tables are fit for pubctl's triggers. The database holds the
    same rules once pubctl is installed (``pub.source_shape_problems``), where status and
    verify read them.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            query("source_columns"), {"schema": schema, "tables": list(SOURCE_TABLES)}
        ).fetchall()
    found: dict[str, dict[str, dict[str, object]]] = {}
    for row in rows:
        found.setdefault(str(row["table_name"]), {})[str(row["column_name"])] = row
    problems: list[str] = []
    for table, columns in SOURCE_TABLES.items():
        if table not in found:
            problems.append(f"table {schema}.{table} is missing")
            continue
        for column, allowed in columns.items():
            if column not in found[table]:
                problems.append(f"column {schema}.{table}.{column} is missing")
                continue
            type_name = str(found[table][column]["type_name"])
            if type_name not in allowed:
                problems.append(
                    f"column {schema}.{table}.{column} is {type_name}, expected "
                    + " or ".join(allowed)
                )
        id_column = found[table].get("id")
        if id_column is not None and not id_column["is_primary_key"]:
            problems.append(f"column {schema}.{table}.id is not the primary key")
        elif id_column is not None and id_column["deferrable_key"]:
            problems.append(
                f"the primary key of {schema}.{table} is DEFERRABLE: one statement could swap "
                "two ids, which row-by-row capture cannot publish correctly"
            )
        any_column = next(iter(found[table].values()))
        if any_column["relkind"] == "p":
            problems.append(
                f"{schema}.{table} is partitioned: writes to a partition itself would bypass "
                "capture"
            )
        elif any_column["has_children"]:
            problems.append(
                f"{schema}.{table} has inheritance children: writes to them would bypass capture"
            )
    return problems
