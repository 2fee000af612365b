"""The state a transaction ends with is the state published, whatever order its
captures fire in.

An adversarial ordering campaign: random transactions of INSERT ... SELECT, UPDATEs
with key changes, soft and hard DELETEs, writable CTEs combining them, MERGE and
upserts, run through application triggers of every level and timing (BEFORE and AFTER,
ROW and STATEMENT, named to fire before and after pubctl's) that themselves update,
delete or re-insert the same rows and their neighbours. After every transaction the
outbox is applied and the published state must equal the Python reference projection of
the source. The two reproductions it was built around run first, scripted; the
campaign also runs them against revision 0101 (capture before this rule) and must find
the wrong state there.

``PUBCTL_ORDERING_TRANSACTIONS`` sets the number of random transactions per run
(``make soak`` runs many).
"""

from __future__ import annotations

import os
import random
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from pubctl import migrate

from support.db import Database
from support.workload import reference_state

TRANSACTIONS = int(os.environ.get("PUBCTL_ORDERING_TRANSACTIONS", "120"))
BEFORE_THE_RULE = "0101"

# Application triggers. Each acts only when its action is named in the transaction's
# app.chaos setting, and never below trigger depth 3 (no endless recursion).
APP_TRIGGERS = """
CREATE FUNCTION public.chaos(action text) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT pg_trigger_depth() < 3
       AND action = ANY (string_to_array(current_setting('app.chaos', true), ','))
$$;

CREATE FUNCTION public.topic_before_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' AND public.chaos('bi_upper') THEN
        NEW.name := upper(NEW.name);
    END IF;
    IF TG_OP = 'UPDATE' AND public.chaos('bu_neighbour') THEN
        UPDATE study_topic SET name = name || 'b' WHERE id = NEW.id - 1;
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION public.topic_after_row_first() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF public.chaos('ai_initcap') THEN
            UPDATE study_topic SET name = initcap(name) || '!' WHERE id = NEW.id;
        ELSIF public.chaos('ai_softdelete') THEN
            UPDATE study_topic SET deleted_at = now() WHERE id = NEW.id;
        ELSIF public.chaos('ai_delete') THEN
            DELETE FROM study_topic WHERE id = NEW.id;
        END IF;
    ELSIF TG_OP = 'UPDATE' THEN
        IF public.chaos('au_again') THEN
            UPDATE study_topic SET exam_round_size = COALESCE(exam_round_size, 0) + 1
            WHERE id = NEW.id;
        ELSIF public.chaos('au_neighbour') THEN
            UPDATE study_topic SET name = name || '+' WHERE id = NEW.id + 1;
        ELSIF public.chaos('au_move') AND NEW.id < 500 THEN
            UPDATE study_topic SET id = id + 500 WHERE id = NEW.id;
        ELSIF public.chaos('au_delete') THEN
            DELETE FROM study_topic WHERE id = NEW.id + 2;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        IF public.chaos('ad_reinsert') THEN
            INSERT INTO study_topic (id, name) VALUES (OLD.id, 'reborn ' || OLD.id)
            ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, deleted_at = NULL;
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION public.topic_after_row_last() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF public.chaos('zu_again') THEN
        UPDATE study_topic SET name = name || 'z' WHERE id = NEW.id;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION public.topic_after_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF public.chaos('as_touch') THEN
        UPDATE study_topic SET name = name || 's'
        WHERE id IN (SELECT id FROM study_topic WHERE id > 1 ORDER BY id LIMIT 3);
    END IF;
    IF public.chaos('as_restore') THEN
        UPDATE study_topic SET deleted_at = NULL WHERE deleted_at IS NOT NULL AND id % 2 = 0;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER a_app_before BEFORE INSERT OR UPDATE ON study_topic
    FOR EACH ROW EXECUTE FUNCTION public.topic_before_row();
CREATE TRIGGER a_app_after AFTER INSERT OR UPDATE OR DELETE ON study_topic
    FOR EACH ROW EXECUTE FUNCTION public.topic_after_row_first();
CREATE TRIGGER z_app_after AFTER UPDATE ON study_topic
    FOR EACH ROW EXECUTE FUNCTION public.topic_after_row_last();
CREATE TRIGGER a_app_statement AFTER INSERT OR UPDATE OR DELETE ON study_topic
    FOR EACH STATEMENT EXECUTE FUNCTION public.topic_after_statement();

CREATE FUNCTION public.question_after_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' AND public.chaos('qi_ready') THEN
        UPDATE study_question SET explanation_status = 'ready', explanation = 'why ' || NEW.id
        WHERE id = NEW.id;
    ELSIF TG_OP = 'UPDATE' AND public.chaos('qu_flip') THEN
        UPDATE study_question
        SET explanation_status = CASE explanation_status WHEN 'ready' THEN 'draft'
                                                         ELSE 'ready' END
        WHERE id = NEW.id;
    ELSIF TG_OP = 'DELETE' AND public.chaos('qd_reinsert') THEN
        INSERT INTO study_question (id, topic_id, body, choices, explanation_status)
        VALUES (OLD.id, 1, 'again ' || OLD.id, '["x"]', 'draft') ON CONFLICT (id) DO NOTHING;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER a_app_after AFTER INSERT OR UPDATE OR DELETE ON study_question
    FOR EACH ROW EXECUTE FUNCTION public.question_after_row();
"""

ACTIONS = [
    "bi_upper", "bu_neighbour", "ai_initcap", "ai_softdelete", "ai_delete", "au_again",
    "au_neighbour", "au_move", "au_delete", "ad_reinsert", "zu_again", "as_touch",
    "as_restore", "qi_ready", "qu_flip", "qd_reinsert",
]  # fmt: skip


def _statement(rng: random.Random) -> str:
    a = rng.randint(2, 40)
    b = a + rng.randint(0, 4)
    c = rng.randint(2, 40)
    q = rng.randint(1, 30)
    return rng.choice(
        [
            f"INSERT INTO study_topic (id, name, exam_round_size) SELECT g, 'new ' || g, g % 3"
            f" FROM generate_series({a}, {b}) g ON CONFLICT (id) DO NOTHING",
            f"INSERT INTO study_topic (id, name) SELECT g, 'up ' || g FROM generate_series({a},"
            f" {b}) g ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name || ' again'",
            f"UPDATE study_topic SET name = name || '.' WHERE id BETWEEN {a} AND {b}",
            f"UPDATE study_topic SET id = id + 100 WHERE id BETWEEN {a} AND {b}",
            f"UPDATE study_topic SET id = id - 100 WHERE id BETWEEN {a + 100} AND {b + 100}",
            f"UPDATE study_topic SET deleted_at = now() WHERE id BETWEEN {a} AND {b}",
            f"UPDATE study_topic SET deleted_at = NULL WHERE id BETWEEN {a} AND {b}",
            f"DELETE FROM study_topic WHERE id BETWEEN {a} AND {b}",
            f"WITH d AS (DELETE FROM study_topic WHERE id = {a} RETURNING id)"
            f" UPDATE study_topic SET id = {a}, name = 'moved' WHERE id = {c}"
            f" AND EXISTS (SELECT FROM d)",
            f"WITH u AS (UPDATE study_topic SET name = 'cte' WHERE id = {a} RETURNING id)"
            f" DELETE FROM study_topic WHERE id = {c}",
            f"WITH d AS (DELETE FROM study_topic WHERE id = {a} RETURNING id, name)"
            f" INSERT INTO study_topic (id, name) SELECT {c} + 200, name FROM d",
            f"MERGE INTO study_topic t USING (SELECT g AS id FROM generate_series({a}, {b}) g) s"
            f" ON t.id = s.id WHEN MATCHED AND t.id % 3 = 0 THEN DELETE"
            f" WHEN MATCHED THEN UPDATE SET name = t.name || 'm'"
            f" WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id, 'merged ' || s.id)",
            f"INSERT INTO study_question (id, topic_id, body, choices, explanation,"
            f" explanation_status) VALUES ({q}, 1, 'q {q}', '[\"a\"]', 'e', 'draft')"
            f" ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body || '!'",
            f"UPDATE study_question SET explanation_status = 'ready' WHERE id = {q}",
            f"UPDATE study_question SET id = id + 50 WHERE id = {q}",
            f"DELETE FROM study_question WHERE id BETWEEN {q} AND {q + 2}",
        ]
    )


def _published(conn: psycopg.Connection[Any]) -> dict[tuple[str, int], Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT kind, source_id, payload FROM pub.content WHERE NOT deleted"
        ).fetchall()
    return {(r["kind"], r["source_id"]): r["payload"] for r in rows}


def _apply(conn: psycopg.Connection[Any]) -> None:
    while conn.execute("SELECT consumed FROM pub.apply_batch(1000)").fetchone()[0]:
        pass


def _differences(db: Database, conn: psycopg.Connection[Any]) -> list[str]:
    _apply(conn)
    published = _published(conn)
    expected = reference_state(db)
    return [
        f"{kind} {source_id}: published {published.get((kind, source_id))!r},"
        f" source says {expected.get((kind, source_id))!r}"
        for kind, source_id in sorted(set(published) | set(expected))
        if published.get((kind, source_id)) != expected.get((kind, source_id))
    ]


REPRODUCTIONS = [
    # An application trigger rewrites the row its INSERT just inserted.
    ("ai_initcap", ["INSERT INTO study_topic (id, name) VALUES (70, 'lower case name')"]),
    # One statement deletes id 71 and moves row 72 to id 71.
    (
        "",
        [
            "WITH d AS (DELETE FROM study_topic WHERE id = 71 RETURNING id)"
            " UPDATE study_topic SET id = 71, name = 'moved' WHERE id = 72"
            " AND EXISTS (SELECT FROM d)"
        ],
    ),
]


def _prepare(db: Database) -> psycopg.Connection[Any]:
    conn = db.connect()
    conn.execute(
        "INSERT INTO study_topic (id, name) SELECT g, 'topic ' || g FROM generate_series(1, 30) g;"
        " INSERT INTO study_topic (id, name) VALUES (71, 'seventy-one'), (72, 'seventy-two');"
        " INSERT INTO study_question (id, topic_id, body, choices, explanation,"
        " explanation_status) SELECT g, 1, 'q ' || g, '[\"a\",\"b\"]', 'because', 'ready'"
        " FROM generate_series(1, 20) g"
    )
    conn.execute(APP_TRIGGERS)
    return conn


def _transaction(conn: psycopg.Connection[Any], chaos: str, statements: list[str]) -> bool:
    try:
        with conn.transaction():
            conn.execute("SELECT set_config('app.chaos', %s, true)", (chaos,))
            for statement in statements:
                conn.execute(statement)
    except psycopg.Error:
        return False  # a unique or foreign key violation, say: nothing happened
    return True


def test_reproductions_and_a_random_campaign_publish_the_final_state(pub_db: Database) -> None:
    with _prepare(pub_db) as conn:
        assert _differences(pub_db, conn) == []
        for chaos, statements in REPRODUCTIONS:
            assert _transaction(conn, chaos, statements)
            assert _differences(pub_db, conn) == [], statements
        rng = random.Random(20261203)
        committed = 0
        for n in range(TRANSACTIONS):
            chaos = ",".join(rng.sample(ACTIONS, rng.randint(0, 4)))
            statements = [_statement(rng) for _ in range(rng.randint(1, 3))]
            committed += _transaction(conn, chaos, statements)
            found = _differences(pub_db, conn)
            assert found == [], f"transaction {n} ({chaos}): {statements}: {found[:5]}"
        assert committed > TRANSACTIONS // 3, "too few transactions committed to mean much"


def test_the_campaign_finds_the_wrong_state_before_the_rule(pub_db: Database) -> None:
    """At revision 0101 capture wrote the transition table's or NEW's state whatever
    came after: both reproductions publish an older state there."""
    migrate.migrate(pub_db.url, BEFORE_THE_RULE)
    try:
        with _prepare(pub_db) as conn:
            for chaos, statements in REPRODUCTIONS:
                assert _transaction(conn, chaos, statements)
                assert _differences(pub_db, conn) != [], statements
    finally:
        migrate.migrate(pub_db.url)


@pytest.mark.parametrize("depth", [1, 2])
def test_an_update_capture_reads_the_row_a_nested_statement_changed(
    pub_db: Database, depth: int
) -> None:
    """An AFTER ROW trigger that fires before pubctl's (its name sorts first) updates the
    row again; at depth 2 the outer statement itself ran inside a trigger."""
    with _prepare(pub_db) as conn:
        chaos = "au_again" if depth == 1 else "as_touch,au_again"
        assert _transaction(conn, chaos, ["UPDATE study_topic SET name = 'x' WHERE id = 5"])
        assert _differences(pub_db, conn) == []
