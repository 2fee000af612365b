"""Bulk edits: one statement over every row, with pubctl's triggers against the floor
(the same statement on a copy of the table without triggers, plus inserting the outbox
rows it produces, precomputed). Every variant runs in one database, interleaved, each
round rolled back so that every round edits the same rows.

Paths measured: an UPDATE of projected columns (with the outbox as the applier leaves
it, freshly truncated, and holding ten times the table's rows unapplied; and per row at
a tenth of the rows against all of them), an upsert (INSERT ... ON CONFLICT DO UPDATE),
a MERGE, a COPY of new rows, a soft delete and a hard DELETE of every row."""

from __future__ import annotations

import statistics
import time

import psycopg

from pubctl.migrate import migrate
from pubctl.queries import read_sql_file

REPEATS = 3

COLUMNS = (
    "id, topic_id, exam_name, exam_round, number, body, choices, answer, explanation, "
    "explanation_status"
)
STAGE = """
CREATE TABLE bench_bare (LIKE study_question INCLUDING ALL);
ALTER TABLE bench_bare ADD FOREIGN KEY (topic_id) REFERENCES study_topic (id);
INSERT INTO bench_bare ({cols})
SELECT g, 1, 'Exam ' || (g % 10), g % 5, g % 40, rpad('Question body ' || g || ' ', 300, 'xyz '),
       '["alpha","beta","gamma","delta"]'::jsonb, g % 4, rpad('Because ' || g || ' ', 500, 'abc '),
       CASE WHEN g % 2 = 0 THEN 'ready' ELSE 'draft' END
FROM generate_series(1, {rows}) g;
UPDATE pub.settings SET publishing_enabled = false;
INSERT INTO study_question ({cols}) SELECT {cols} FROM bench_bare;
UPDATE pub.settings SET publishing_enabled = true;
CREATE TABLE bench_outbox_floor (LIKE pub.outbox INCLUDING ALL);
"""

EDIT = "body = body || ' (edited)', explanation = explanation || '!'"

# The outbox rows each edit produces, computed once with pubctl's own projection.
PRECOMPUTE = """
CREATE TABLE bench_pre_{name} AS
SELECT kind, source_id, pub.outbox_payload(c) AS payload,
       pub.outbox_payload_hash(c) AS payload_hash, 1 AS schema_version, c IS NULL AS deleted
FROM (
    SELECT 'question' AS kind, id::bigint AS source_id,
           pub.question_canonical(id, topic_id, exam_name, exam_round, number, {body}, choices,
                                  answer, {deleted_at}) AS c,
           true AS wanted
    FROM bench_bare
    UNION ALL
    SELECT 'explanation', id, pub.explanation_canonical(id, {explanation}, explanation_status,
                                                       {deleted_at}),
           explanation_status = 'ready'
    FROM bench_bare
) s
WHERE wanted AND ({keep});
"""

OUTBOX_COLUMNS = "kind, source_id, payload, payload_hash, schema_version, deleted"

MERGE = (
    "MERGE INTO study_question AS q USING bench_keys AS k ON q.id = k.id"
    " WHEN MATCHED THEN UPDATE SET body = q.body || ' (edited)', explanation = q.explanation || '!'"
)


def _timed(conn: psycopg.Connection[tuple[object, ...]], statements: list[str]) -> float:
    """Run the statements in one transaction, timed, then roll it back."""
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        start = time.perf_counter()
        for sql in statements:
            cur.execute(sql.encode())
        elapsed = time.perf_counter() - start
        cur.execute("ROLLBACK")
    return elapsed


def _ratio(a: list[float], b: list[float]) -> str:
    rs = sorted(x / y for x, y in zip(a, b, strict=True))
    return f"{statistics.median(a) / statistics.median(b):.2f}x (min {rs[0]:.2f}, max {rs[-1]:.2f})"


def _floor(statement: str, precomputed: str) -> list[str]:
    return [
        statement.replace("study_question", "bench_bare"),
        f"INSERT INTO bench_outbox_floor ({OUTBOX_COLUMNS})"
        f" SELECT {OUTBOX_COLUMNS} FROM {precomputed}",
    ]


def _outbox_state(conn: psycopg.Connection[tuple[object, ...]], state: str, rows: int) -> None:
    conn.execute("TRUNCATE pub.outbox")
    if state == "drained":
        # As the applier leaves it: rows inserted, consumed, vacuumed and analysed.
        conn.execute(
            f"INSERT INTO pub.outbox ({OUTBOX_COLUMNS}) SELECT {OUTBOX_COLUMNS} FROM bench_pre_edit"
        )
        conn.execute("DELETE FROM pub.outbox")
        conn.execute("VACUUM ANALYZE pub.outbox")
    elif state == "backlog":
        # Ten times the table's rows waiting to be applied.
        conn.execute(
            f"INSERT INTO pub.outbox ({OUTBOX_COLUMNS}) SELECT {OUTBOX_COLUMNS}"
            " FROM bench_pre_edit, generate_series(1, 8) LIMIT %s",
            (10 * rows,),
        )
        conn.execute("VACUUM ANALYZE pub.outbox")


def run(url: str, rows: int) -> list[tuple[str, str]]:
    """Bulk UPDATE, upsert, soft delete and DELETE against their floors."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(read_sql_file("sample_app_schema.sql").encode())
        migrate(url)
        conn.execute("INSERT INTO study_topic (id, name) VALUES (1, 'bench')")
        conn.execute(STAGE.format(cols=COLUMNS, rows=rows).encode())
        for name, body, explanation, deleted_at, keep in (
            ("edit", "body || ' (edited)'", "explanation || '!'", "NULL", "true"),
            ("upsert", "body || ' (synced)'", "explanation", "NULL", "kind = 'question'"),
            ("soft_delete", "body", "explanation", "now()", "true"),
        ):
            conn.execute(
                PRECOMPUTE.format(
                    name=name, body=body, explanation=explanation, deleted_at=deleted_at, keep=keep
                ).encode()
            )
        conn.execute("CREATE TABLE bench_pre_delete AS SELECT * FROM bench_pre_soft_delete")
        # COPY of as many new rows, from a file the server reads (and pubctl's rows for
        # them, precomputed); MERGE keyed by a list of ids.
        conn.execute(
            f"CREATE TABLE bench_copied AS SELECT id + {rows} AS id, topic_id, exam_name,"
            " exam_round, number, body, choices, answer, explanation, explanation_status,"
            " deleted_at FROM bench_bare"
        )
        # Written and read by the server itself, in its data directory.
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        copy_file = f"{row[0] if row else ''}/bench_bulk_writes.copy"
        conn.execute(f"COPY bench_copied ({COLUMNS}) TO '{copy_file}'".encode())
        copy = f"COPY study_question ({COLUMNS}) FROM '{copy_file}'"
        conn.execute(
            PRECOMPUTE.format(
                name="copy", body="body", explanation="explanation", deleted_at="NULL", keep="true"
            )
            .replace("FROM bench_bare", "FROM bench_copied")
            .encode()
        )
        conn.execute("CREATE TABLE bench_keys AS SELECT id FROM bench_bare")
        conn.execute("VACUUM ANALYZE")
        tenth = max(1, rows // 10)
        upsert = (
            f"INSERT INTO study_question ({COLUMNS}) SELECT {COLUMNS} FROM bench_bare"
            " ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body || ' (synced)'"
        )
        upsert_floor = [
            f"INSERT INTO bench_bare ({COLUMNS}) SELECT {COLUMNS} FROM bench_bare"
            " ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body || ' (synced)'",
            f"INSERT INTO bench_outbox_floor ({OUTBOX_COLUMNS})"
            f" SELECT {OUTBOX_COLUMNS} FROM bench_pre_upsert",
        ]
        variants: dict[str, list[str]] = {
            "edit floor": _floor(f"UPDATE study_question SET {EDIT}", "bench_pre_edit"),
            "edit": [f"UPDATE study_question SET {EDIT}"],
            # No trigger at all: the UPDATE on the copy, then its outbox rows projected in
            # one INSERT ... SELECT. What any capture design pays at least, since it must
            # project what the floor inserts precomputed.
            "edit projected": [
                f"UPDATE bench_bare SET {EDIT}",
                f"INSERT INTO bench_outbox_floor ({OUTBOX_COLUMNS})"
                + PRECOMPUTE.format(
                    name="unused",
                    body="body",
                    explanation="explanation",
                    deleted_at="NULL",
                    keep="true",
                ).replace("CREATE TABLE bench_pre_unused AS", ""),
            ],
            "edit tenth floor": _floor(
                f"UPDATE study_question SET {EDIT} WHERE id <= {tenth}",
                f"bench_pre_edit WHERE source_id <= {tenth}",
            ),
            "edit tenth": [f"UPDATE study_question SET {EDIT} WHERE id <= {tenth}"],
            "upsert floor": upsert_floor,
            "merge floor": _floor(MERGE, "bench_pre_edit"),
            "merge": [MERGE],
            "copy floor": _floor(copy, "bench_pre_copy"),
            "copy": [copy],
            "upsert": [upsert],
            "soft delete floor": _floor(
                "UPDATE study_question SET deleted_at = now()", "bench_pre_soft_delete"
            ),
            "soft delete": ["UPDATE study_question SET deleted_at = now()"],
            "delete floor": _floor("DELETE FROM study_question", "bench_pre_delete"),
            "delete": ["DELETE FROM study_question"],
        }
        times: dict[str, list[float]] = {}
        for state in ("drained", "truncated", "backlog"):
            _outbox_state(conn, state, rows)
            names = list(variants) if state == "drained" else ["edit floor", "edit"]
            for repeat in range(REPEATS + 1):
                for name in names:
                    conn.execute("VACUUM study_question, bench_bare, bench_outbox_floor")
                    elapsed = _timed(conn, variants[name])
                    if repeat:  # the first round warms caches
                        times.setdefault(f"{state}: {name}", []).append(elapsed)

    def r(a: str, b: str) -> str:
        return _ratio(times[a], times[b])

    per_row = [
        (whole / rows) / (part / tenth)
        for whole, part in zip(times["drained: edit"], times["drained: edit tenth"], strict=True)
    ]
    edit = f"UPDATE of {rows} rows (body, explanation) / floor"
    return [
        (f"{edit}, outbox drained", r("drained: edit", "drained: edit floor")),
        (
            f"UPDATE of {rows} rows on the copy + its outbox rows projected set-based, "
            "no trigger / floor",
            r("drained: edit projected", "drained: edit floor"),
        ),
        (f"{edit}, outbox truncated", r("truncated: edit", "truncated: edit floor")),
        (f"{edit}, {10 * rows:,} unapplied", r("backlog: edit", "backlog: edit floor")),
        (
            f"UPDATE per row at {rows} rows / per row at {tenth} rows",
            f"{statistics.median(per_row):.2f}x (min {min(per_row):.2f}, max {max(per_row):.2f})",
        ),
        (f"upsert of {rows} rows / floor", r("drained: upsert", "drained: upsert floor")),
        (f"MERGE updating {rows} rows / floor", r("drained: merge", "drained: merge floor")),
        (f"COPY of {rows} new rows / floor", r("drained: copy", "drained: copy floor")),
        (
            f"soft delete of {rows} rows / floor",
            r("drained: soft delete", "drained: soft delete floor"),
        ),
        (f"DELETE of {rows} rows / floor", r("drained: delete", "drained: delete floor")),
    ]
