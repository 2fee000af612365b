"""A normalised description of everything pubctl owns in a database, for comparing the
schema the migrations build with the schema ``sql/schema/*.sql`` describes."""

from __future__ import annotations

from typing import Any

import psycopg


# An ACL as the sorted list of its entries, a never-granted (NULL) one as the default it
# means: granting and revoking again leaves the same rights spelled explicitly.
def _acl(column: str, kind: str, owner: str) -> str:
    return (
        f"(SELECT array_agg(a::text ORDER BY a::text) "
        f"FROM unnest(COALESCE({column}, acldefault({kind}, {owner}))) AS a)"
    )


_RELATION_ACL_KIND = "CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::\"char\""

CATALOG_QUERIES: dict[str, str] = {
    "schema": f"""
        SELECT nspname, {_acl("nspacl", "'n'", "nspowner")}, obj_description(oid, 'pg_namespace')
        FROM pg_namespace WHERE nspname = 'pub'
    """,
    "columns": """
        SELECT c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
               col_description(c.oid, a.attnum)
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
        WHERE n.nspname = 'pub' AND c.relname NOT LIKE 'alembic_version%'
        ORDER BY 1, 3
    """,
    "relations": f"""
        SELECT c.relname, c.relkind,
               {_acl("c.relacl", _RELATION_ACL_KIND, "c.relowner")},
               obj_description(c.oid, 'pg_class'),
               c.reloptions::text
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'pub' AND c.relname NOT LIKE 'alembic_version%'
        ORDER BY 1
    """,
    "constraints": """
        SELECT cl.relname, co.conname, pg_get_constraintdef(co.oid)
        FROM pg_constraint co
        JOIN pg_class cl ON cl.oid = co.conrelid
        JOIN pg_namespace n ON n.oid = cl.relnamespace
        WHERE n.nspname = 'pub' AND cl.relname NOT LIKE 'alembic_version%'
        ORDER BY 1, 2
    """,
    "indexes": """
        SELECT indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'pub' AND tablename NOT LIKE 'alembic_version%'
        ORDER BY 1
    """,
    "functions": f"""
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid),
               {_acl("p.proacl", "'f'", "p.proowner")}, p.proowner::regrole::text, obj_description(p.oid, 'pg_proc')
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'pub'
        ORDER BY 1, 2
    """,
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
        FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_proc p ON p.oid = t.tgfoid
        JOIN pg_namespace pn ON pn.oid = p.pronamespace
        WHERE pn.nspname = 'pub' AND NOT t.tgisinternal
        ORDER BY 1, 2
    """,
    "event_triggers": """
        SELECT evtname, evtevent, evtfoid::regproc::text, evtenabled, evttags::text
        FROM pg_event_trigger ORDER BY 1
    """,
    "types": """
        SELECT t.typname, t.typtype, format_type(t.oid, NULL)
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'pub' AND t.typrelid = 0 AND t.typelem = 0
        ORDER BY 1
    """,
    "sequences": """
        SELECT sequencename, data_type::text, start_value, increment_by, cycle
        FROM pg_sequences WHERE schemaname = 'pub' ORDER BY 1
    """,
}


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Everything pubctl owns, as sorted lists of rows per catalog."""
    return {name: conn.execute(sql).fetchall() for name, sql in CATALOG_QUERIES.items()}
