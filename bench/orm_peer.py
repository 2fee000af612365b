"""The old way: the application-level dual write that came before pubctl, against the same
SQLAlchemy ORM code with pubctl's triggers doing the outbox work.

* old way: the ORM inserts the question into a copy of study_question without
  triggers, flushes to learn its id, computes the projection and hash in Python with
  pubctl's reference projection and adds the outbox rows as ORM objects into a copy of
  pub.outbox, then commits.
* triggers: the same ORM code without the outbox objects and the Python projection,
  into the real study_question with pubctl's triggers on.
* bare: the same ORM code into the copy without triggers and without any outbox.

Each in two modes: a commit per row, and a commit per batch of 200 rows. Every variant
runs in the same database, repeated and interleaved, and is reported as a ratio.
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import BigInteger, DateTime, Identity, Integer, Text, create_engine
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from pubctl.migrate import migrate
from pubctl.projection import SCHEMA_VERSION, items_of
from pubctl.queries import read_sql_file

REPEATS = 3
BATCH = 200
# Caps on the rows per round, so that the scenario stays short at the default scale.
PER_ROW_CAP = 2_000
BATCH_CAP = 20_000

SETUP = """
INSERT INTO study_topic (id, name) VALUES (1, 'bench');
CREATE TABLE bench_orm_bare (LIKE study_question INCLUDING ALL);
ALTER TABLE bench_orm_bare ADD FOREIGN KEY (topic_id) REFERENCES study_topic (id);
CREATE TABLE bench_orm_outbox (LIKE pub.outbox INCLUDING ALL);
"""


class Base(DeclarativeBase):
    pass


class QuestionColumns:
    """The mapped columns of study_question (the timestamps keep their server defaults)."""

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    topic_id: Mapped[int] = mapped_column(BigInteger)
    exam_name: Mapped[str | None] = mapped_column(Text)
    exam_round: Mapped[int | None] = mapped_column(Integer)
    number: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    choices: Mapped[list[str]] = mapped_column(JSONB)
    answer: Mapped[int | None] = mapped_column(Integer)
    explanation: Mapped[str | None] = mapped_column(Text)
    explanation_status: Mapped[str] = mapped_column(Text)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class StudyQuestion(QuestionColumns, Base):
    """The application's table, with pubctl's triggers."""

    __tablename__ = "study_question"


class BareQuestion(QuestionColumns, Base):
    """A copy of study_question without triggers."""

    __tablename__ = "bench_orm_bare"


class Outbox(Base):
    """The application's own outbox: a copy of pub.outbox."""

    __tablename__ = "bench_orm_outbox"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    source_id: Mapped[int] = mapped_column(BigInteger)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    payload_hash: Mapped[str] = mapped_column(Text)
    schema_version: Mapped[int] = mapped_column(Integer)
    deleted: Mapped[bool] = mapped_column()


def _rpad(start: str, length: int, fill: str) -> str:
    """SQL's rpad: the row content of the other scenarios."""
    return (start + fill * length)[:length]


def _content(rows: int) -> list[dict[str, Any]]:
    return [
        {
            "topic_id": 1,
            "exam_name": f"Exam {g % 10}",
            "exam_round": g % 5,
            "number": g % 40,
            "body": _rpad(f"Question body {g} ", 300, "xyz "),
            "choices": ["alpha", "beta", "gamma", "delta"],
            "answer": g % 4,
            "explanation": _rpad(f"Because {g} ", 500, "abc "),
            "explanation_status": "ready" if g % 2 == 0 else "draft",
        }
        for g in range(1, rows + 1)
    ]


def _outbox_rows(question: QuestionColumns) -> list[Outbox]:
    """What the application wrote beside each question before pubctl: the live items of
    the reference projection, each with its canonical-JSON SHA-256."""
    row = {
        "id": question.id,
        "topic_id": question.topic_id,
        "exam_name": question.exam_name,
        "exam_round": question.exam_round,
        "number": question.number,
        "body": question.body,
        "choices": question.choices,
        "answer": question.answer,
        "explanation": question.explanation,
        "explanation_status": question.explanation_status,
        "deleted_at": question.deleted_at,
    }
    return [
        Outbox(
            kind=item.kind,
            source_id=item.source_id,
            payload=item.payload,
            payload_hash=item.payload_hash,
            schema_version=SCHEMA_VERSION,
            deleted=False,
        )
        for item in items_of("study_question", row)
        if item.payload is not None
    ]


def _write(
    engine: Engine,
    content: list[dict[str, Any]],
    model: type[QuestionColumns],
    dual_write: bool,
    batch: int,
) -> float:
    """Insert every row through the ORM, committing every `batch` rows."""
    start = time.perf_counter()
    with Session(engine) as session:
        for offset in range(0, len(content), batch):
            questions = [model(**values) for values in content[offset : offset + batch]]
            session.add_all(questions)
            if dual_write:
                session.flush()  # the ids the payloads carry
                for question in questions:
                    session.add_all(_outbox_rows(question))
            session.commit()
    return time.perf_counter() - start


def _reset(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute("UPDATE pub.settings SET publishing_enabled = false")
    conn.execute(
        "TRUNCATE study_question, bench_orm_bare, pub.outbox, bench_orm_outbox RESTART IDENTITY"
    )
    conn.execute("UPDATE pub.settings SET publishing_enabled = true")
    conn.execute("CHECKPOINT")


def _same_outbox(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[int, int, int]:
    """Outbox rows of each path, and the rows whose (kind, source_id, payload, hash) the
    other path does not have."""
    row = conn.execute(
        """
        SELECT (SELECT count(*) FROM pub.outbox), (SELECT count(*) FROM bench_orm_outbox),
               (SELECT count(*) FROM (
                   (SELECT kind, source_id, payload, payload_hash FROM pub.outbox
                    EXCEPT ALL
                    SELECT kind, source_id, payload, payload_hash FROM bench_orm_outbox)
                   UNION ALL
                   (SELECT kind, source_id, payload, payload_hash FROM bench_orm_outbox
                    EXCEPT ALL
                    SELECT kind, source_id, payload, payload_hash FROM pub.outbox)) d)
        """
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


# Raw timings of the last run for the chart run.py draws: variant -> (rows, seconds of
# each round, warm-up excluded).
TIMINGS: dict[str, tuple[int, list[float]]] = {}


def run(url: str, rows: int) -> list[tuple[str, str]]:
    """Each mode's old way, triggers and bare ORM insert, REPEATS times interleaved."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(read_sql_file("sample_app_schema.sql").encode())
        migrate(url)
        conn.execute(SETUP.encode())
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    modes = {"per row": (1, min(rows, PER_ROW_CAP)), f"per {BATCH}": (BATCH, min(rows, BATCH_CAP))}
    variants: dict[str, tuple[type[QuestionColumns], bool]] = {
        "bare": (BareQuestion, False),
        "old way": (BareQuestion, True),
        "triggers": (StudyQuestion, False),
    }
    times: dict[tuple[str, str], list[float]] = {
        (mode, variant): [] for mode in modes for variant in variants
    }
    checks: dict[str, tuple[int, int, int]] = {}
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for mode, (batch, count) in modes.items():
                content = _content(count)
                for repeat in range(REPEATS + 1):
                    _reset(conn)
                    for variant, (model, dual_write) in variants.items():
                        # Every path numbers its rows from 1, so that the two outboxes
                        # can be compared row for row after the round.
                        conn.execute("TRUNCATE bench_orm_bare RESTART IDENTITY")
                        conn.execute("CHECKPOINT")
                        elapsed = _write(engine, content, model, dual_write, batch)
                        if repeat:  # the first round only warms caches and the WAL
                            times[mode, variant].append(elapsed)
                    checks[mode] = _same_outbox(conn)
    finally:
        engine.dispose()

    TIMINGS.clear()
    for (mode, variant), values in times.items():
        TIMINGS[f"ORM commit {mode}: {variant}"] = (modes[mode][1], values)

    def ratio(mode: str, a: str, b: str) -> str:
        xs, ys = times[mode, a], times[mode, b]
        rs = sorted(x / y for x, y in zip(xs, ys, strict=True))
        med = statistics.median(xs) / statistics.median(ys)
        return f"{med:.2f}x (min {rs[0]:.2f}, max {rs[-1]:.2f})"

    results: list[tuple[str, str]] = []
    for mode, (_batch, count) in modes.items():
        label = f"ORM commit {mode}"
        bare_rate = count / statistics.median(times[mode, "bare"])
        triggers_rows, old_rows, differing = checks[mode]
        results += [
            (f"{label}, {count} rows: bare rows/s", f"{bare_rate:.0f}"),
            (f"{label}: old way / triggers", ratio(mode, "old way", "triggers")),
            (f"{label}: old way / bare", ratio(mode, "old way", "bare")),
            (f"{label}: triggers / bare", ratio(mode, "triggers", "bare")),
            (
                f"{label}: outbox rows, old way / triggers",
                f"{old_rows} / {triggers_rows}, {differing} differ",
            ),
        ]
    return results
