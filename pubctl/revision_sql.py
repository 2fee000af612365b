"""Freeze a change of the definition into a migration (what ``make revision`` runs).

The rendered schema files (``sql/schema/25_kinds.sql``, ``75_kinds_attach.sql``) hold
the objects of the definition as last frozen. :func:`delta` compares them with a new
rendering and writes the SQL that takes a database from one to the other, object by
object, and back:

* a function or trigger that changed is replaced in place (CREATE OR REPLACE); one
  whose parameters changed, and a type or an index that changed, is dropped and
  created again, with the SQL functions that name it (without CASCADE: an object of
  someone else's that depends on one makes the migration fail, naming it);
* an object no longer defined is dropped first (a kind's items go with it:
  ``pub.forget_kind``);
* ownership is settled at the end (``pub.settle_ownership``).

Only what changed appears, so a migration reads as the change it makes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pubctl import rendering, sources
from pubctl.rendering import ATTACHMENTS, DEFINITIONS, Rendered

SCHEMA = Path(__file__).resolve().parent.parent / "sql" / "schema"
FILES = {DEFINITIONS: "25_kinds.sql", ATTACHMENTS: "75_kinds_attach.sql"}


def frozen_objects(schema: Path = SCHEMA) -> list[Rendered]:
    """The objects as the schema files hold them."""
    objects: list[Rendered] = []
    for part, name in FILES.items():
        objects += rendering.parse_file((schema / name).read_text(), part)
    return objects


def write_schema_files(objects: list[Rendered], schema: Path = SCHEMA) -> None:
    for part, name in FILES.items():
        (schema / name).write_text(rendering.file_text(objects, part))


def _head(sql: str) -> str:
    """What CREATE OR REPLACE cannot change: a function's parameters and result."""
    return sql[: sql.index(" LANGUAGE ")] if " LANGUAGE " in sql else sql


def _name(identity: str) -> str:
    """pub.topic_canonical of "function pub.topic_canonical(bigint, ...)"."""
    return identity.split(" ", 1)[1].split("(")[0]


# Objects that are statements to run after every change, not objects to compare.
CLOSING = ("ownership", "shape check")


def delta(old: list[Rendered], new: list[Rendered]) -> str:
    """SQL that takes a database from the ``old`` objects to the ``new`` ones."""
    closing = [o for o in new if o.identity in CLOSING]
    old = [o for o in old if o.identity not in CLOSING]
    new = [o for o in new if o.identity not in CLOSING]
    before = {o.identity: o for o in old}
    after = {o.identity: o for o in new}
    # Dropped first: what is no longer defined, and what cannot be replaced in place (a
    # type or an index that changed; a function whose parameters or result changed).
    dropped = {o.identity for o in old if o.identity not in after}
    dropped |= {
        o.identity
        for o in new
        if o.identity in before
        and before[o.identity].sql != o.sql
        and (
            not o.replaceable
            or (
                o.identity.startswith("function ") and _head(before[o.identity].sql) != _head(o.sql)
            )
        )
    }
    # ... and the SQL functions whose bodies name one of those (Postgres records that
    # dependency and refuses the drop otherwise): dropped before, created again after.
    while True:
        names = [_name(i) for i in dropped if i.startswith(("function ", "type "))]
        pattern = re.compile("|".join(re.escape(n) + r"\b" for n in names)) if names else None
        more = {
            o.identity
            for o in old
            if pattern is not None
            and o.identity not in dropped
            and o.identity.startswith("function ")
            and "BEGIN ATOMIC" in o.sql
            and pattern.search(o.sql.split("\n", 1)[1])
        }
        if not more:
            break
        dropped |= more
    statements = [o.drop for o in reversed(old) if o.identity in dropped]
    statements += [
        o.sql
        for o in new
        if o.identity not in before or o.identity in dropped or before[o.identity].sql != o.sql
    ]
    if not statements:
        return ""
    return "\n\n".join(
        ["SET LOCAL search_path = pg_catalog, pg_temp;", *statements, *(o.sql for o in closing)]
    )


def main(argv: list[str], schema: Path = SCHEMA) -> int:
    """Render the definition; write the migration's frozen SQL (``argv``: the
    migration's path without .py) and the schema files."""
    base = Path(argv[0])
    old = frozen_objects(schema)
    new = rendering.render(sources.DEFINITION)
    up, down = delta(old, new), delta(new, old)
    note = "-- Rendered from pubctl/sources.py by `make revision`: what the definition changed.\n"
    empty = "-- The definition did not change: write what this revision changes.\n"
    base.with_suffix(".up.sql").write_text(note + up + "\n" if up else empty)
    base.with_suffix(".down.sql").write_text(note + down + "\n" if down else empty)
    write_schema_files(new, schema)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
