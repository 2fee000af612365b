"""Tripwires: operators, functions and aggregates that a table owner could plant where a
session's search path looks (``public``, the application's schema, a schema named after
the connecting role), each an exact match for argument types that reach a ``pg_catalog``
built-in only through an implicit cast or a polymorphic / variadic parameter. Such a
plant wins over the built-in for every session that has its schema on the path, and runs
with the caller's rights.

The list is derived, not typed in:

1. :func:`harvest` tokenizes every SQL text pubctl runs (``sql/queries.sql``,
   ``sql/schema/*.sql``, the sample schema, ``alembic/versions/*.sql`` and the SQL
   strings in ``pubctl/**/*.py``; string literals are read as SQL too, for
   ``format``/``EXECUTE``) for operator symbols (and the keywords that stand for
   operators: LIKE, IN, BETWEEN, IS DISTINCT FROM, ...), for names followed by ``(``,
   for ``::type`` casts and for the catalog relations it reads.
2. :func:`derive` takes from the test server's catalog every ``pg_catalog`` operator,
   function and aggregate with one of those names and writes exact signatures for it:
   each concrete parameter either kept or replaced by a type with an implicit cast to it,
   each polymorphic family bound to a concrete type, ``"any"`` parameters filled with
   concrete types, variadic tails expanded to a few arities (``(text, T)`` pairs too).
   The types come from pubctl's world: the columns of pub's relations and of the
   application's tables, of the catalog relations the SQL reads, the result and
   argument types of pub's functions, the ``::casts`` in the SQL and common literal
   types (and their arrays). ``wide=True`` (``PUBCTL_TRIPWIRE_WIDE=1``) takes every
   ordinary built-in type, more arities and more deviations per signature.
3. Each candidate is checked by asking the server to resolve the same call against
   ``pg_catalog`` alone (a prepared statement, described, never executed): candidates
   that do not resolve are dropped, and the result type (columns, for set-returning
   functions) is what the plant returns.

:func:`install_recorder` makes schema ``tripwire`` with the log the plants write to;
:func:`plant` plants a derivation in a few schemas (:func:`plant_sql`: the DDL for one).
Every plant calls ``tripwire.hit(id)`` (a sequence bump and a per-function call count in
``pg_stat_user_functions``, which survive a rollback, and a log row with
``current_user``, the session's application name and the statement), then returns what
the built-in returns for the same arguments, so that it breaks nothing by itself. Plants
have the built-in's volatility and the lowest cost, so that a plant in a WHERE clause is
evaluated first, on every row, rather than after cheaper conditions that may filter
every row out. Aggregates are planted as aggregates (their state collects the rows, the
final function hands them to the built-in). :func:`control` proves the plants live, and
:func:`tally` reads what ran.
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq, sql

import pubctl
from pubctl.shipped import migrations_folder, sql_folder

WIDE = os.environ.get("PUBCTL_TRIPWIRE_WIDE", "") not in ("", "0")

# --- 1. harvesting pubctl's SQL -----------------------------------------------------

_SQL_START = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|LOCK|LISTEN|SET|WITH|DO|GRANT|"
    r"REVOKE|TRUNCATE|COMMENT|VALUES)\b"
)
_PLACEHOLDER = re.compile(r"%(\([A-Za-z_0-9]+\))?[sbt]|%%")
_OPERATOR_RUN = re.compile(r"[+\-*/<>=~!@#%^&|`?]+")
_NAME = r'(?:"[^"]+"|[A-Za-z_][A-Za-z_0-9$]*)'
_CALL = re.compile(rf"({_NAME}\s*\.\s*)?({_NAME})\s*\(")
_CAST = re.compile(
    r"::\s*((?:[A-Za-z_][A-Za-z_0-9]*\s*\.\s*)?(?:\"[^\"]+\"|[A-Za-z_][A-Za-z_0-9]*)"
    r"(?:\s+(?:varying|precision|with(?:out)?\s+time\s+zone))?(?:\s*\[\s*\])*)",
    re.I,
)
_CAST_AS = re.compile(r"\bCAST\s*\([^;]*?\bAS\s+([A-Za-z_][A-Za-z_0-9. ]*?(?:\[\])*)\s*\)", re.I)
_RELATION = re.compile(r"\b(?:pg_catalog\s*\.\s*)?(pg_[a-z_0-9]+)\b(?!\s*\()")
# Syntax that the parser turns into an operator or function looked up by name.
_KEYWORD_OPERATORS = {
    r"\bLIKE\b": ("~~", "!~~"),
    r"\bILIKE\b": ("~~*", "!~~*"),
    r"\bSIMILAR\s+TO\b": ("~", "!~"),
    r"\bIS\s+(NOT\s+)?DISTINCT\s+FROM\b": ("=",),
    r"\bBETWEEN\b": (">=", "<=", "<", ">"),
    r"\bIN\s*\(": ("=", "<>"),
    r"\bNULLIF\s*\(": ("=",),
    r"\bCASE\b": ("=",),
    r"\bUSING\s*\(": ("=",),
}
_KEYWORD_FUNCTIONS = {
    r"\bEXTRACT\s*\(": ("extract", "date_part"),
    r"\bAT\s+TIME\s+ZONE\b": ("timezone",),
    r"\bTRIM\s*\(": ("btrim", "ltrim", "rtrim"),
    r"\bSUBSTRING\s*\(": ("substring",),
    r"\bPOSITION\s*\(": ("position",),
    r"\bOVERLAY\s*\(": ("overlay",),
    r"\bOVERLAPS\b": ("overlaps",),
    r"\bSIMILAR\s+TO\b": ("similar_to_escape",),
    r"\bNORMALIZE\s*\(": ("normalize",),
    r"\bIS\s+(NOT\s+)?NORMALIZED\b": ("is_normalized",),
    r"\bCOLLATION\s+FOR\b": ("pg_collation_for",),
}


@dataclass
class Harvest:
    """What pubctl's SQL names: operators, called names, cast types, catalog relations."""

    sources: list[str] = field(default_factory=list)
    operators: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    casts: set[str] = field(default_factory=set)
    relations: set[str] = field(default_factory=set)


def sql_texts() -> dict[str, str]:
    """Every SQL text pubctl runs, by where it comes from."""
    sql_dir, migrations = sql_folder(), migrations_folder()
    files = [
        *sorted(sql_dir.glob("*.sql")),
        *sorted((sql_dir / "schema").glob("*.sql")),
        *sorted((migrations / "versions").glob("*.sql")),
    ]
    texts = {str(f): f.read_text(encoding="utf-8") for f in files}
    package = Path(pubctl.__file__).resolve().parent
    for py in sorted(package.rglob("*.py")):
        tree = ast.parse(py.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and _SQL_START.match(node.value)
            ):
                texts[f"{py}:{node.lineno}"] = node.value
    return texts


def _split(text: str) -> tuple[str, list[str]]:
    """The code of ``text`` without comments (literals blanked), and the literals."""
    code: list[str] = []
    literals: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            code.append(" ")
        elif text[i] == "'":
            escapes = i > 0 and text[i - 1] in "eE"
            j, buf = i + 1, []
            while j < n:
                if text.startswith("''", j):
                    buf.append("'")
                    j += 2
                elif escapes and text[j] == "\\":
                    buf.append(text[j : j + 2])
                    j += 2
                elif text[j] == "'":
                    break
                else:
                    buf.append(text[j])
                    j += 1
            literals.append("".join(buf))
            code.append(" '' ")
            i = j + 1
        elif text[i] == '"':
            j = text.find('"', i + 1)
            j = n if j < 0 else j
            code.append(text[i : j + 1])
            i = j + 1
        else:
            code.append(text[i])
            i += 1
    return "".join(code), literals


def _operators(run: str) -> list[str]:
    """The operators PostgreSQL's lexer reads from a run of operator characters."""
    for cut in ("--", "/*"):
        if cut in run:
            run = run[: run.index(cut)]
    found = []
    while run:
        op = run
        # A multi-character operator cannot end in + or - unless it holds one of these.
        if not any(c in "~!@#%^&|`?" for c in op):
            while len(op) > 1 and op[-1] in "+-":
                op = op[:-1]
        found.append("<>" if op == "!=" else op)
        run = run[len(op) :]
    return found


def _unquote(name: str) -> str:
    return name[1:-1] if name.startswith('"') else name.lower()


def harvest(texts: dict[str, str] | None = None) -> Harvest:
    """Tokenize pubctl's SQL (string literals included, read as SQL in turn)."""
    texts = sql_texts() if texts is None else texts
    found = Harvest(sources=sorted(texts))
    todo = list(texts.values())
    while todo:
        code, literals = _split(todo.pop())
        todo += [lit for lit in literals if re.search(r"[(=<>]", lit)]
        code = _PLACEHOLDER.sub(" ", code)
        for run in _OPERATOR_RUN.findall(code):
            found.operators.update(_operators(run))
        for pattern, ops in _KEYWORD_OPERATORS.items():
            if re.search(pattern, code, re.I):
                found.operators.update(ops)
        for pattern, names in _KEYWORD_FUNCTIONS.items():
            if re.search(pattern, code, re.I):
                found.functions.update(names)
        for m in _CALL.finditer(code):
            found.functions.add(_unquote(m.group(2)))
        for m in [*_CAST.finditer(code), *_CAST_AS.finditer(code)]:
            found.casts.add(" ".join(m.group(1).split()).lower())
        found.relations.update(m.group(1) for m in _RELATION.finditer(code))
    return found


# --- 2. deriving the plants from the catalog ----------------------------------------

# Common literal types (and what psycopg sends Python values as).
LITERAL_TYPES = (
    "text", "integer", "bigint", "smallint", "numeric", "double precision", "boolean",
    "jsonb", "json", "timestamp with time zone", "interval", "name", "character varying",
    "bytea", "oid", "regclass",
)  # fmt: skip
LITERAL_ARRAYS = ("text[]", "integer[]", "bigint[]", "smallint[]")

ANY = '"any"'
_UNUSABLE = {"internal", "cstring", "record", "unknown", "trigger", "event_trigger", "void"}
# At most this many signatures per built-in and shape (the first ones: those with the
# fewest parameters of another type).
PER_BUILTIN = 400
PER_BUILTIN_WIDE = 600
_ELEMENT_FAMILY = {"anyelement", "anynonarray", "anyarray", "anyenum", "anyrange", "anymultirange"}
_COMPAT_FAMILY = {
    "anycompatible", "anycompatiblenonarray", "anycompatiblearray", "anycompatiblerange",
    "anycompatiblemultirange",
}  # fmt: skip


@dataclass(frozen=True)
class Plant:
    """One object to plant: ``kind`` operator, function or aggregate, in any schema."""

    kind: str
    name: str
    args: tuple[str, ...]  # argument types (format_type); an operator's left is "" if prefix
    result: str = ""
    columns: tuple[tuple[str, str], ...] = ()  # set-returning with several columns
    retset: bool = False
    volatility: str = "v"
    imitates: tuple[str, ...] = ()  # the pg_catalog objects it was derived from
    shadowed: bool = False  # pg_catalog itself has this exact signature

    def signature(self, schema: str = "") -> str:
        prefix = f"{schema}." if schema else ""
        if self.kind == "operator":
            return f"{prefix}{self.name}({', '.join(a or 'NONE' for a in self.args)})"
        return f"{prefix}{self.name}({', '.join(self.args)})"

    @property
    def key(self) -> tuple[str, str, tuple[str, ...]]:
        return (self.kind, self.name, self.args)


@dataclass
class World:
    """The concrete types a signature may use (by format_type name)."""

    elements: list[str]
    arrays: list[str]
    array_of: dict[str, str]  # element -> its array type
    implicit: dict[str, set[str]]  # target -> sources with an implicit cast
    kinds: dict[str, str]  # type -> typtype ('e' enum, 'r' range, 'm' multirange, ...)

    @property
    def all(self) -> list[str]:
        return self.elements + self.arrays


@dataclass
class Derivation:
    harvest: Harvest
    world: World
    plants: list[Plant]
    considered: int  # candidate signatures before the server checked them
    operators: list[str]  # harvested operator names that pg_catalog has
    functions: list[str]  # harvested names that pg_catalog has as functions/aggregates

    def find(self, kind: str, name: str, args: Sequence[str]) -> Plant | None:
        for plant in self.plants:
            if plant.key == (kind, name, tuple(args)):
                return plant
        return None


@dataclass
class _Slot:
    """One parameter: a concrete type, a polymorphic one, or "any"."""

    declared: str

    @property
    def family(self) -> str:
        if self.declared in _ELEMENT_FAMILY:
            return "element"
        if self.declared in _COMPAT_FAMILY:
            return "compat"
        if self.declared == ANY:
            return "any"
        return "concrete"


def _world(conn: psycopg.Connection[Any], found: Harvest, app_schema: str, wide: bool) -> World:
    """pubctl's world of types, all in pg_catalog (a domain counts as its base type)."""
    base = (
        "WITH RECURSIVE t(oid, base) AS ("
        " SELECT oid, oid FROM pg_catalog.pg_type WHERE typtype <> 'd'"
        " UNION ALL SELECT d.oid, d.typbasetype FROM pg_catalog.pg_type d WHERE d.typtype = 'd')"
    )
    wanted: set[int] = set()

    def add(rows: Iterable[Sequence[Any]]) -> None:
        wanted.update(int(r[0]) for r in rows if r[0] is not None)

    # Columns of pub's relations, of the application's tables, of the catalog relations
    # the SQL reads.
    add(
        conn.execute(
            "SELECT a.atttypid FROM pg_catalog.pg_attribute a"
            " JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'v', 'p', 'm')"
            " AND (n.nspname IN ('pub', %s) OR (n.nspname = 'pg_catalog' AND c.relname = ANY (%s)))",
            (app_schema, sorted(found.relations)),
        )
    )
    # Arguments and results of pub's functions.
    add(
        conn.execute(
            "SELECT u.t FROM pg_catalog.pg_proc p"
            " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace,"
            " LATERAL pg_catalog.unnest(COALESCE(p.proallargtypes, p.proargtypes::oid[])"
            "  || p.prorettype) AS u(t)"
            " WHERE n.nspname = 'pub'"
        )
    )
    for name in sorted(found.casts) + list(LITERAL_TYPES) + list(LITERAL_ARRAYS):
        with contextlib.suppress(psycopg.Error):
            add(conn.execute("SELECT pg_catalog.to_regtype(%s)::oid", (name,)))
    if wide:
        add(
            conn.execute(
                "SELECT t.oid FROM pg_catalog.pg_type t"
                " JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace"
                " WHERE n.nspname = 'pg_catalog' AND t.typtype IN ('b', 'r', 'm')"
                " AND t.typcategory IN ('B', 'D', 'I', 'N', 'R', 'S', 'T', 'U', 'V')"
                " AND t.typisdefined AND t.typname !~ '^(pg_|_)'"
            )
        )
    rows = conn.execute(
        base + " SELECT DISTINCT pg_catalog.format_type(b.oid, NULL), b.typcategory,"
        " b.typelem <> 0 AND b.typlen = -1 AS is_array,"
        " pg_catalog.format_type(b.typarray, NULL), b.typtype"
        " FROM t JOIN pg_catalog.pg_type b ON b.oid = t.base"
        " JOIN pg_catalog.pg_namespace n ON n.oid = b.typnamespace"
        " WHERE t.oid = ANY (%s) AND n.nspname = 'pg_catalog' AND b.typtype <> 'p'"
        " AND b.typisdefined",
        (sorted(wanted),),
    ).fetchall()
    elements = sorted({r[0] for r in rows if not r[2]})
    arrays = {r[0] for r in rows if r[2]}
    array_of = {
        r[0]: r[1]
        for r in conn.execute(
            "SELECT pg_catalog.format_type(oid, NULL), pg_catalog.format_type(typarray, NULL)"
            " FROM pg_catalog.pg_type WHERE typarray <> 0"
        )
    }
    if wide:
        arrays |= {array_of[e] for e in elements if e in array_of}
    implicit: dict[str, set[str]] = {}
    for source, target in conn.execute(
        "SELECT pg_catalog.format_type(castsource, NULL), pg_catalog.format_type(casttarget, NULL)"
        " FROM pg_catalog.pg_cast WHERE castcontext = 'i'"
    ):
        implicit.setdefault(target, set()).add(source)
    kinds = {
        r[0]: r[1]
        for r in conn.execute(
            "SELECT pg_catalog.format_type(oid, NULL), typtype::text FROM pg_catalog.pg_type"
        )
    }
    return World(elements, sorted(arrays), array_of, implicit, kinds)


def _alternatives(declared: str, world: World, wide: bool) -> list[str]:
    """Types other than ``declared`` that reach it through an implicit cast (arrays of
    such element types too, in the wide campaign)."""
    found = [t for t in world.all if t != declared and t in world.implicit.get(declared, ())]
    if wide and declared.endswith("[]"):
        element = declared[:-2]
        found += [
            world.array_of[t]
            for t in world.elements
            if t in world.implicit.get(element, ()) and world.array_of.get(t) in world.all
        ]
    return sorted(set(found))


def _bind(slot: str, element: str, world: World) -> str | None:
    """The concrete type a polymorphic parameter takes when its family is bound to
    ``element`` (a non-array type, or any type for the element-only forms)."""
    is_array = element in world.arrays
    if slot in ("anyelement", "anycompatible"):
        return element
    if slot in ("anynonarray", "anycompatiblenonarray"):
        return None if is_array else element
    if slot in ("anyarray", "anycompatiblearray"):
        return None if is_array else world.array_of.get(element)
    if slot == "anyenum":
        return element if world.kinds.get(element) == "e" else None
    if slot in ("anyrange", "anycompatiblerange"):
        return element if world.kinds.get(element) == "r" else None
    if slot in ("anymultirange", "anycompatiblemultirange"):
        return element if world.kinds.get(element) == "m" else None
    return None


def _signatures(
    slots: list[str], world: World, wide: bool, *, uniform: bool = True, pairs: bool = True
) -> Iterator[tuple[str, ...]]:
    """Exact argument lists for a built-in with parameter types ``slots``, those with
    fewer parameters of another type first."""
    families = {_Slot(s).family for s in slots}
    concrete = [i for i, s in enumerate(slots) if _Slot(s).family == "concrete"]
    polymorphic = families & {"element", "compat"}
    any_positions = [i for i, s in enumerate(slots) if s == ANY]
    # Deviations: how many concrete parameters take another (implicitly cast) type.
    most = (2 if wide else 1) if not (polymorphic or any_positions) else (1 if wide else 0)
    concrete_choices: list[dict[int, str]] = [{}]
    for count in range(1, most + 1):
        for positions in itertools.combinations(concrete, count):
            options = [_alternatives(slots[i], world, wide) for i in positions]
            for types in itertools.product(*options):
                concrete_choices.append(dict(zip(positions, types, strict=True)))
    # Polymorphic parameters: each family bound to one concrete type.
    bindings: list[dict[int, str]] = [{}]
    if polymorphic:
        bindings = []
        array_only = all(
            s in ("anyarray", "anycompatiblearray")
            for s in slots
            if _Slot(s).family in ("element", "compat")
        )
        for element in world.all:
            if array_only and world.array_of.get(element) not in world.arrays:
                continue
            bound = {}
            for i, s in enumerate(slots):
                if _Slot(s).family in ("element", "compat"):
                    t = _bind(s, element, world)
                    if t is None:
                        break
                    bound[i] = t
            else:
                bindings.append(bound)
    # "any" parameters: all of one type, or (text, T) pairs (keys and values).
    fillings: list[dict[int, str]] = [{}]
    if any_positions:
        fillings = []
        even = len(any_positions) % 2 == 0
        for t in world.all:
            if uniform:
                fillings.append({i: t for i in any_positions})
            if pairs and even:
                fillings.append({i: (t if k % 2 else "text") for k, i in enumerate(any_positions)})
            if wide and pairs and even:
                fillings.append({i: ("text" if k % 2 else t) for k, i in enumerate(any_positions)})
            if wide and uniform and len(any_positions) > 2:
                fillings.append({i: (t if k else "text") for k, i in enumerate(any_positions)})
    seen = set()
    for chosen in concrete_choices:
        for bound in bindings:
            for filled in fillings:
                args = tuple(
                    chosen.get(i) or bound.get(i) or filled.get(i) or s for i, s in enumerate(slots)
                )
                if args not in seen:
                    seen.add(args)
                    yield args


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _describe(conn: psycopg.Connection[Any], query: str) -> list[tuple[str, int]] | None:
    """The result columns of ``query``, parsed and planned but not run; None if the
    server refuses it (no such built-in, or not a unique one)."""
    pgconn = conn.pgconn
    result = pgconn.prepare(b"", query.encode())
    if result.status != pq.ExecStatus.COMMAND_OK:
        return None
    described = pgconn.describe_prepared(b"")
    if described.status != pq.ExecStatus.COMMAND_OK:
        return None
    return [
        ((described.fname(i) or b"").decode(), described.ftype(i)) for i in range(described.nfields)
    ]


def derive(
    conn: psycopg.Connection[Any],
    *,
    app_schema: str = "public",
    wide: bool = WIDE,
    found: Harvest | None = None,
) -> Derivation:
    """Every plant for pubctl's SQL, checked against the server ``conn`` is on (a
    database where pubctl is installed, for the types of pub's relations)."""
    found = harvest() if found is None else found
    conn.autocommit = True
    conn.execute("SET search_path = pg_catalog, pg_temp")
    world = _world(conn, found, app_schema, wide)
    type_names = {
        int(r[0]): str(r[1])
        for r in conn.execute(
            "SELECT oid, pg_catalog.format_type(oid, NULL) FROM pg_catalog.pg_type"
        )
    }
    candidates: dict[tuple[str, str, tuple[str, ...]], dict[str, Any]] = {}

    def propose(kind: str, name: str, args: tuple[str, ...], info: dict[str, Any]) -> None:
        entry = candidates.setdefault((kind, name, args), {**info, "imitates": []})
        entry["imitates"].append(info["builtin"])

    cap = PER_BUILTIN_WIDE if wide else PER_BUILTIN
    # Operators.
    operators = conn.execute(
        "SELECT o.oprname, pg_catalog.format_type(o.oprleft, NULL), o.oprleft = 0,"
        " pg_catalog.format_type(o.oprright, NULL), p.provolatile::text,"
        " o.oid::pg_catalog.regoperator::text"
        " FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode"
        " WHERE o.oprnamespace = 'pg_catalog'::pg_catalog.regnamespace AND o.oprname = ANY (%s)"
        " ORDER BY o.oid",
        (sorted(found.operators),),
    ).fetchall()
    builtin_ops = {(r[0], "" if r[2] else r[1], r[3]) for r in operators}
    for name, left, prefix, right, volatility, builtin in operators:
        slots = [right] if prefix else [left, right]
        if any(s in _UNUSABLE for s in slots):
            continue
        info = {"volatility": volatility, "builtin": builtin}
        for args in itertools.islice(_signatures(slots, world, wide), cap):
            propose("operator", name, ("", args[0]) if prefix else args, info)
    # Functions and aggregates.
    procs = conn.execute(
        "SELECT p.proname, p.prokind::text, p.proargtypes::oid[], p.provariadic,"
        " p.proretset, p.provolatile::text, p.oid::pg_catalog.regprocedure::text,"
        " COALESCE(a.aggkind::text, '')"
        " FROM pg_catalog.pg_proc p LEFT JOIN pg_catalog.pg_aggregate a ON a.aggfnoid = p.oid"
        " WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace AND p.proname = ANY (%s)"
        " AND p.prokind IN ('f', 'a') ORDER BY p.oid",
        (sorted(found.functions),),
    ).fetchall()
    builtin_procs = {(r[0], tuple(type_names[t] for t in r[2])) for r in procs}
    function_names = sorted({r[0] for r in procs})
    # Variadic "any": a few arities, of one type (uniform) or of (text, T) pairs.
    uniform_arities = (1, 2, 3, 4) if wide else (1, 2)
    pair_arities = (2, 4, 6, 8) if wide else (2, 4, 6)
    element_arities = (1, 2, 3) if wide else (1, 2)
    cap = PER_BUILTIN_WIDE if wide else PER_BUILTIN
    for name, prokind, argtypes, variadic, retset, volatility, builtin, aggkind in procs:
        if prokind == "a" and aggkind != "n":
            continue  # ordered-set and hypothetical-set aggregates: WITHIN GROUP syntax
        declared = [type_names[t] for t in argtypes]
        if not declared or any(s in _UNUSABLE or s.startswith("pg_") for s in declared):
            continue
        shapes: list[tuple[list[str], bool, bool]] = []
        if not variadic:
            shapes.append((declared, True, True))
        elif type_names[variadic] == ANY:
            for k in sorted(set(uniform_arities) | set(pair_arities)):
                shapes.append((declared[:-1] + [ANY] * k, k in uniform_arities, k in pair_arities))
        else:
            for k in element_arities:
                shapes.append((declared[:-1] + [type_names[variadic]] * k, True, True))
        kind = "aggregate" if prokind == "a" else "function"
        info = {"volatility": volatility, "retset": retset, "builtin": builtin}
        for slots, uniform, pairs in shapes:
            signatures = _signatures(slots, world, wide, uniform=uniform, pairs=pairs)
            for args in itertools.islice(signatures, cap):
                propose(kind, name, args, info)
    # Ask the server to resolve each candidate against pg_catalog alone.
    plants: list[Plant] = []
    for (kind, name, args), info in candidates.items():
        nulls = [f"NULL::{a}" for a in args]
        if kind == "operator":
            left, right = args
            op = f"OPERATOR(pg_catalog.{name})"
            query = f"SELECT {nulls[0] + ' ' if left else ''}{op} NULL::{right}"
            columns = _describe(conn, query)
            shadowed = args in {(b[1], b[2]) for b in builtin_ops if b[0] == name}
        elif kind == "aggregate":
            names = ", ".join(f"a{i}" for i in range(len(args)))
            query = (
                f"SELECT pg_catalog.{_quote(name)}({names})"
                f" FROM (SELECT {', '.join(nulls)}) AS s({names})"
            )
            columns = _describe(conn, query)
            shadowed = (name, args) in builtin_procs
        else:
            call = f"pg_catalog.{_quote(name)}({', '.join(nulls)})"
            query = f"SELECT * FROM {call}" if info["retset"] else f"SELECT {call}"
            columns = _describe(conn, query)
            shadowed = (name, args) in builtin_procs
        if not columns:
            continue
        result_types = [(col, type_names.get(oid, "")) for col, oid in columns]
        if any(t in ("", "record", "unknown") for _c, t in result_types):
            continue
        multi = info.get("retset") and len(result_types) > 1
        plants.append(
            Plant(
                kind=kind,
                name=name,
                args=args,
                result=result_types[0][1],
                columns=tuple(result_types) if multi else (),
                retset=bool(info.get("retset")),
                volatility=info["volatility"],
                imitates=tuple(dict.fromkeys(info["imitates"])),
                shadowed=shadowed,
            )
        )
    return Derivation(
        harvest=found,
        world=world,
        plants=plants,
        considered=len(candidates),
        operators=sorted({r[0] for r in operators}),
        functions=function_names,
    )


# --- 3. planting and reading the log ------------------------------------------------

RECORDER = "tripwire"
_VOLATILITY = {"i": "IMMUTABLE", "s": "STABLE", "v": "VOLATILE"}


def install_recorder(conn: psycopg.Connection[Any], owner: str) -> None:
    """Schema ``tripwire`` (owned by ``owner``): what each plant is, and what ran.

    Run as a superuser: also counts plpgsql calls (pg_stat_user_functions) in this
    database, which survive a rolled-back transaction."""
    dbname = conn.info.dbname
    conn.execute(f"CREATE SCHEMA {RECORDER} AUTHORIZATION {_quote(owner)}")
    conn.execute(f"ALTER DATABASE {_quote(dbname)} SET track_functions = 'pl'")
    conn.execute(f"SET ROLE {_quote(owner)}")
    conn.execute(
        f"""
        SET LOCAL search_path = pg_catalog, pg_temp;
        GRANT USAGE ON SCHEMA {RECORDER} TO PUBLIC;
        CREATE TABLE {RECORDER}.planted (
            id integer PRIMARY KEY, schema name NOT NULL, kind text NOT NULL,
            signature text NOT NULL, imitates text NOT NULL, impl regprocedure NOT NULL);
        CREATE SEQUENCE {RECORDER}.hits;
        GRANT USAGE ON SEQUENCE {RECORDER}.hits TO PUBLIC;
        CREATE TABLE {RECORDER}.log (
            planted integer NOT NULL, who name NOT NULL, session_who name NOT NULL,
            application text, statement text, at timestamptz NOT NULL DEFAULT clock_timestamp());
        GRANT INSERT ON {RECORDER}.log TO PUBLIC;
        CREATE FUNCTION {RECORDER}.hit(id integer) RETURNS void
            LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $hit$
        BEGIN
            PERFORM pg_catalog.nextval('{RECORDER}.hits');
            INSERT INTO {RECORDER}.log (planted, who, session_who, application, statement)
            VALUES (id, current_user, session_user,
                    pg_catalog.current_setting('application_name', true),
                    pg_catalog.left(pg_catalog.current_query(), 4000));
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'TRIPWIRE % ran as % and could not record it: %',
                id, current_user, SQLERRM;
        END
        $hit$;
        """.encode()
    )
    conn.execute("RESET ROLE")


def plant_sql(derivation: Derivation, schema: str, first_id: int) -> str:
    """DDL that plants every object of ``derivation`` in ``schema`` (which must exist),
    numbered from ``first_id``. An operator's function, an aggregate's state type and
    support functions live in schema ``tripwire``, under names nobody calls."""
    out = ["SET LOCAL search_path = pg_catalog, pg_temp;"]
    rows = []
    target = _quote(schema)
    for n, plant in enumerate(derivation.plants, start=first_id):
        name = _quote(plant.name)
        volatility = _VOLATILITY[plant.volatility]
        args = [a for a in plant.args if a]
        params = ", ".join(args)
        refs = ", ".join(f"${i + 1}" for i in range(len(args)))
        # The lowest cost: a plant in a WHERE clause runs first, for every row scanned.
        header = "LANGUAGE plpgsql {} COST 0.0001 SET search_path = pg_catalog, pg_temp AS $tw$ BEGIN PERFORM {}.hit({}); "
        head = header.format(volatility, RECORDER, n)
        if plant.kind == "operator":
            impl = f"{RECORDER}.op_{n}({params})"
            op = f"OPERATOR(pg_catalog.{plant.name})"
            expr = f"$1 {op} $2" if plant.args[0] else f"{op} $1"
            out.append(
                f"CREATE FUNCTION {impl} RETURNS {plant.result} {head}RETURN {expr}; END $tw$;"
            )
            left = f"LEFTARG = {plant.args[0]}, " if plant.args[0] else ""
            out.append(
                f"CREATE OPERATOR {target}.{plant.name} ({left}RIGHTARG = {plant.args[1]},"
                f" FUNCTION = {RECORDER}.op_{n});"
            )
        elif plant.kind == "aggregate":
            # The state collects the rows; the final function hands them to the built-in.
            row = f"{RECORDER}.agg_row_{n}"
            fields = ", ".join(f"a{i} {t}" for i, t in enumerate(args))
            values = ", ".join(f"${i + 2}" for i in range(len(args)))
            columns = ", ".join(f"r.a{i}" for i in range(len(args)))
            impl = f"{RECORDER}.agg_step_{n}({row}[], {params})"
            out.append(f"CREATE TYPE {row} AS ({fields});")
            out.append(
                f"CREATE FUNCTION {impl} RETURNS {row}[] {header.format('VOLATILE', RECORDER, n)}"
                f"RETURN pg_catalog.array_append($1, ROW({values})::{row}); END $tw$;"
            )
            out.append(
                f"CREATE FUNCTION {RECORDER}.agg_final_{n}({row}[]) RETURNS {plant.result}"
                f" LANGUAGE sql SET search_path = pg_catalog, pg_temp"
                f" AS $tw$ SELECT pg_catalog.{name}({columns}) FROM pg_catalog.unnest($1) AS r $tw$;"
            )
            out.append(
                f"CREATE AGGREGATE {target}.{name} ({params}) (SFUNC = {RECORDER}.agg_step_{n},"
                f" STYPE = {row}[], FINALFUNC = {RECORDER}.agg_final_{n}, INITCOND = '{{}}');"
            )
        else:
            impl = f"{target}.{name}({params})"
            call = f"pg_catalog.{name}({refs})"
            if plant.columns:
                table = ", ".join(f"{_quote(c)} {t}" for c, t in plant.columns)
                returns, body = f"TABLE ({table})", f"RETURN QUERY SELECT * FROM {call};"
            elif plant.retset:
                returns, body = f"SETOF {plant.result}", f"RETURN QUERY SELECT * FROM {call};"
            elif plant.result == "void":
                returns, body = "void", f"PERFORM {call};"
            else:
                returns, body = plant.result, f"RETURN {call};"
            out.append(f"CREATE FUNCTION {impl} RETURNS {returns} {head}{body} END $tw$;")
        record = [str(n), _literal(schema), _literal(plant.kind), _literal(plant.signature(schema))]
        record += [_literal(", ".join(plant.imitates)), f"{_literal(impl)}::regprocedure"]
        rows.append(f"({', '.join(record)})")
    out.append(f"INSERT INTO {RECORDER}.planted VALUES {', '.join(rows)};")
    return "\n".join(out)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def plant(url: str, derivation: Derivation, schemas: Sequence[str]) -> int:
    """Plant the derivation in every schema of ``schemas``, each in a transaction of its
    own and all at once, logging in with ``url`` (as the role that owns the schemas and
    schema ``tripwire``). Returns the number of objects planted."""

    def one(index: int) -> None:
        ddl = plant_sql(derivation, schemas[index], 1 + index * len(derivation.plants))
        with psycopg.connect(url) as conn:
            conn.execute(ddl.encode())

    with ThreadPoolExecutor(len(schemas)) as pool:
        list(pool.map(one, range(len(schemas))))
    return len(schemas) * len(derivation.plants)


@dataclass
class Hit:
    """Calls of one plant, as one role, from one application (committed ones)."""

    schema: str
    signature: str
    imitates: str
    who: str
    application: str
    statement: str  # one of the statements it ran in
    calls: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.signature, self.who, self.application)

    def describe(self, calls: int | None = None) -> str:
        statement = " ".join(self.statement.split())
        return (
            f"{self.signature} (in place of pg_catalog's {self.imitates}) ran"
            f" {self.calls if calls is None else calls}x as {self.who}"
            f" from {self.application!r} in: {statement[:400]}"
        )

    def __str__(self) -> str:
        return self.describe()


@dataclass
class Tally:
    """What the plants recorded so far."""

    bumps: int  # tripwire.hit() calls, rolled back or not
    logged: int  # of them, logged in a committed transaction
    hits: list[Hit]
    uncommitted: list[str]  # plants pg_stat_user_functions counted but the log lacks

    @property
    def clean(self) -> bool:
        return self.bumps == 0 and not self.hits and not self.uncommitted


def tally(conn: psycopg.Connection[Any]) -> Tally:
    """Read the log (as a superuser; on a connection of its own, autocommit)."""
    conn.execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
    row = conn.execute(
        f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {RECORDER}.hits"
    ).fetchone()
    bumps = int(row[0]) if row else 0
    logged_row = conn.execute(f"SELECT count(*) FROM {RECORDER}.log").fetchone()
    logged = int(logged_row[0]) if logged_row else 0
    hits = [
        Hit(*r)
        for r in conn.execute(
            f"SELECT p.schema, p.signature, p.imitates, l.who, COALESCE(l.application, ''),"
            f" pg_catalog.min(l.statement), pg_catalog.count(*)::int"
            f" FROM {RECORDER}.log l JOIN {RECORDER}.planted p ON p.id = l.planted"
            f" GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 4, 5"
        )
    ]
    uncommitted = [
        f"{r[0]} (in place of pg_catalog's {r[1]}) ran {r[2]}x, in transactions that rolled back"
        for r in conn.execute(
            f"SELECT p.signature, p.imitates, s.calls FROM {RECORDER}.planted p"
            f" JOIN pg_catalog.pg_stat_user_functions s ON s.funcid = p.impl"
            f" WHERE s.calls > 0 AND NOT EXISTS"
            f" (SELECT FROM {RECORDER}.log l WHERE l.planted = p.id) ORDER BY 1"
        )
    ]
    return Tally(bumps, logged, hits, uncommitted)


# Client queries of pubctl's (before search paths were pinned) that resolve through a
# plant when one is on the path: an implicit cast (status), a variadic "any" function
# (status), a polymorphic operator (migrate's source_columns).
CONTROL_QUERIES = {
    "=(oid, regclass)": "SELECT count(*) FROM pg_catalog.pg_locks l"
    " WHERE l.relation = 'pg_catalog.pg_class'::pg_catalog.regclass",
    "jsonb_build_object(text, bigint, text, bigint)": "SELECT jsonb_build_object("
    "'live', count(*), 'tombstones', count(*)) FROM pg_catalog.pg_class",
    "=(smallint[], smallint[])": "SELECT count(*) FROM pg_catalog.pg_constraint k"
    " JOIN pg_catalog.pg_attribute a ON k.conrelid = a.attrelid AND k.conkey = ARRAY[a.attnum]",
}


def control(url: str, schemas: Sequence[str], watcher: psycopg.Connection[Any]) -> list[Hit]:
    """Prove the plants live: run :data:`CONTROL_QUERIES` in a session that logs in
    with ``url`` without pinning its search path, once with each schema on the path.
    Returns what was recorded, then clears the record (``watcher``: a superuser's)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
            for query in CONTROL_QUERIES.values():
                conn.execute(query.encode())
        conn.execute("RESET search_path")
        # This session's function call counts reach pg_stat_user_functions now.
        conn.execute("SELECT pg_catalog.pg_stat_force_next_flush()")
        conn.execute("SELECT 1")
    hits = tally(watcher).hits
    watcher.execute(
        f"""
        TRUNCATE {RECORDER}.log;
        ALTER SEQUENCE {RECORDER}.hits RESTART;
        SELECT pg_catalog.pg_stat_reset_single_function_counters(s.funcid)
        FROM pg_catalog.pg_stat_user_functions s WHERE s.schemaname = '{RECORDER}'
           OR s.funcid IN (SELECT p.impl FROM {RECORDER}.planted p);
        """.encode()
    )
    return hits
