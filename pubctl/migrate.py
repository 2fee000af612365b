"""Alembic, wired for pubctl: its scripts are ``alembic/`` in a checkout and
``pubctl/migrations`` in an installed wheel (found by :mod:`pubctl.shipped`), its version
table lives in schema ``pub``, and every run is one transaction holding a lock on that
table (one that only a role with a privilege on it can take: see ``migrate_lock``).

The whole run (every step up or down) is a single transaction: a failure anywhere
leaves the database exactly as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy
from alembic import command, op
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from psycopg import conninfo
from psycopg.rows import dict_row
from sqlalchemy.pool import NullPool

from pubctl import db, rename, sources
from pubctl.errors import MissingSourceError, PubctlError, SchemaNewerError
from pubctl.holders import LockHolder
from pubctl.queries import query
from pubctl.revision import (
    CONTENT_REVISION,
    PRE_RELEASE,
    PRE_RELEASE_HINT,
    current_revision,
)
from pubctl.shipped import migrations_folder

PUB_SCHEMA = "pub"
DEFAULT_LOCK_TIMEOUT_S = 2.0
DEFAULT_LOCK_ATTEMPTS = 5
LOCK_NOT_AVAILABLE = "55P03"
INSUFFICIENT_PRIVILEGE = "42501"
# Two first installs at once: the second one's CREATE ... IF NOT EXISTS of schema pub
# or its version table can still collide with the first's; it tries again and finds
# the work done.
RETRIED_SQLSTATES = {LOCK_NOT_AVAILABLE, "23505", "42P06", "42P07"}
DEFAULT_APP_SCHEMA = "public"


def script_directory() -> ScriptDirectory:
    """Alembic's view of the migration scripts (:func:`pubctl.shipped.migrations_folder`)."""
    return ScriptDirectory(str(migrations_folder()))


def revisions() -> list[str]:
    """All revision ids, oldest first (the history is linear)."""
    return [rev.revision for rev in reversed(list(script_directory().walk_revisions()))]


def head_revision() -> str:
    """The newest revision this pubctl knows."""
    head = script_directory().get_current_head()
    assert head is not None
    return head


@dataclass
class MigrationRun:
    """What one ``pubctl migrate`` did."""

    before: str | None
    after: str | None
    steps: list[str] = field(default_factory=list)
    # The run created pub.content (a first install, or up again after a downgrade below
    # it): its feed identity is new, and only a backfill publishes the existing rows.
    created_published_state: bool = False
    feed_id: str | None = None
    # Whether the NOLOGIN role pubctl_feed_reader holds the feed reader's rights after
    # the run (False: grant them to the viewers' roles by hand: READER_GRANTS).
    feed_reader_role: bool = False


def _engine(url: str) -> sqlalchemy.Engine:
    # The creator keeps libpq's own URL and PG* environment handling exactly as the
    # rest of pubctl sees it; SQLAlchemy only wraps the connection.
    def creator() -> Any:
        return db.connect(url)

    return sqlalchemy.create_engine("postgresql+psycopg://", creator=creator, poolclass=NullPool)


def _direction(before: str | None, target: str) -> str:
    known = revisions()
    if target == "head":
        target = known[-1]
    if target == "base":
        return "downgrade"
    if target not in known:
        raise PubctlError(f"unknown revision {target!r}")  # checked earlier by the CLI
    if before is None:
        return "upgrade"
    if before not in known:
        return "upgrade"  # env.py refuses with SchemaNewerError
    return "downgrade" if known.index(target) < known.index(before) else "upgrade"


def _index(revision: str | None) -> int:
    """Position in the history: -1 for base (nothing installed)."""
    known = revisions()
    return known.index(revision) if revision in known else -1


def _target(revision: str) -> str | None:
    if revision == "head":
        return revisions()[-1]
    return None if revision == "base" else revision


def _refuse_dropping_published_state(url: str, before: str | None, revision: str) -> None:
    """A downgrade below the revision that created pub.content drops what viewers read:
    refused unless nothing was ever published."""
    content = _index(CONTENT_REVISION)
    if _index(before) < content or _index(_target(revision)) >= content:
        return
    with db.connect(url) as conn:
        row = conn.execute(query("published_state_summary")).fetchone()
    items, last_rev = (int(str(row[0])), int(str(row[1]))) if row else (0, 0)
    if items == 0 and last_rev == 0:
        return  # nothing was ever published: no viewer can hold a cursor into it
    raise PubctlError(
        f"going down to {revision} drops the published state of {db.describe(url)} "
        f"({items} items, last rev {last_rev}): viewers' cursors and pub_ids would refer to "
        "a state that no longer exists; after the next migrate they find another feed id "
        "and must start again from rev 0",
        hint="pass --drop-published-state to go ahead; nothing was changed",
    )


def migrate(
    url: str,
    revision: str = "head",
    *,
    app_schema: str | None = None,
    on_step: Callable[[str], None] | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    attempts: int = DEFAULT_LOCK_ATTEMPTS,
    drop_published_state: bool = False,
) -> MigrationRun:
    """Upgrade or downgrade pubctl's schema to ``revision`` ("head", "base" or an id).

    Attaching triggers locks the application's tables. Rather than queue behind a long
    transaction (and make every writer queue behind the migration), each attempt waits
    at most ``lock_timeout_s`` for a lock, rolls back, and tries again, ``attempts``
    times in all, with a growing pause in between.
    """
    with db.connect(url) as conn:
        before = current_revision(conn)
    direction = _direction(before, revision)
    if direction == "downgrade":
        _refuse_renamed_columns(url)
    if direction == "downgrade" and not drop_published_state:
        _refuse_dropping_published_state(url, before, revision)
    run = MigrationRun(before=before, after=None)

    def step(message: str) -> None:
        run.steps.append(message)
        if on_step is not None:
            on_step(message)

    for attempt in range(1, attempts + 1):
        try:
            _run_alembic(url, revision, direction, app_schema, lock_timeout_s, step)
            break
        except (sqlalchemy.exc.DBAPIError, psycopg.Error) as exc:
            orig = getattr(exc, "orig", None) or exc
            if getattr(orig, "sqlstate", None) == INSUFFICIENT_PRIVILEGE:
                raise _privilege_error(orig, url, app_schema) from None
            if getattr(orig, "sqlstate", None) not in RETRIED_SQLSTATES:
                raise PubctlError(
                    f"migration failed, nothing was changed: {_one_line(orig)}"
                ) from None
            run.steps.clear()
            if attempt == attempts:
                raise PubctlError(
                    f"could not lock pubctl's version table and the application's tables "
                    f"within {lock_timeout_s:g}s, {attempts} times; nothing was changed; "
                    f"held by: {_lock_blockers(url, app_schema)}",
                    hint="end those transactions (or COMMIT/ROLLBACK PREPARED the prepared "
                    "ones), or retry with a larger --lock-timeout when writes can wait that long",
                ) from None
            pause = min(0.5 * 2 ** (attempt - 1), 10.0)
            if on_step is not None:
                on_step(f"waiting for a lock on the application's tables; retrying in {pause:g}s")
            time.sleep(pause)
    with db.connect(url) as conn:
        run.after = current_revision(conn)
        if not run.steps:
            # Another run may have done the work while this one waited for the lock.
            run.before = run.after
        content = _index(CONTENT_REVISION)
        run.created_published_state = _index(run.before) < content <= _index(run.after)
        if run.created_published_state:
            row = conn.execute(query("feed_identity")).fetchone()
            run.feed_id = str(row[0]) if row and row[0] is not None else None
        if run.after is not None:
            row = conn.execute(query("feed_reader_granted")).fetchone()
            run.feed_reader_role = bool(row and row[0])
    return run


# What a viewer's role needs to read the feed (contract, section 5), for installs where
# migrate may not create pubctl_feed_reader.
READER_GRANTS = (
    "GRANT USAGE ON SCHEMA pub TO viewer;\n"
    "GRANT EXECUTE ON FUNCTION pub.feed(bigint, integer, text[]), pub.feed_id(), pub.health()"
    " TO viewer;"
)


def _privilege_error(exc: BaseException, url: str, app_schema: str | None) -> PubctlError:
    """One line naming what `migrate` needs (docs/operations.md, "Privileges"), not the
    statement that failed: CREATE on the database, USAGE on the application's schema,
    TRIGGER on both tables; going down, the owner of schema pub."""
    from pubctl.shell import privilege_hint

    diag = getattr(exc, "diag", None)
    primary = (getattr(diag, "message_primary", None) or _one_line(exc)).strip()
    role = str(conninfo.conninfo_to_dict(url).get("user") or "") or "CURRENT_USER"
    schema = app_schema or DEFAULT_APP_SCHEMA
    return PubctlError(
        f"migration failed, nothing was changed: {primary}",
        hint=privilege_hint(primary, "migrate", role, schema)
        + "; migrate needs CREATE on the database, USAGE on the application's schema and "
        "TRIGGER on both tables (downgrades: the owner of schema pub)",
    )


def _refuse_renamed_columns(url: str) -> None:
    """A downgrade installs the capture of older revisions, which reads the columns by
    the names of this pubctl's definition: after `pubctl rename-column` it would read
    columns that are not there, and every write would fail."""
    with db.connect(url) as conn:
        current = rename.installed(conn)
    renamed = [
        f"{s.table}.{c.column_name}"
        for s in current.sources
        for c in s.columns
        if c != sources.DEFINITION.by_table()[s.table].column(c.name)
    ]
    if renamed:
        raise PubctlError(
            "capture reads renamed columns (" + ", ".join(renamed) + "), which the older "
            "revisions do not know: a downgrade would make every write of the table fail; "
            "nothing was changed",
            hint="rename them back with `pubctl rename-column` first, or downgrade with the "
            "pubctl whose definition names them",
        )


def _lock_blockers(url: str, app_schema: str | None) -> str:
    """The sessions holding locks a migration waits for, one phrase each."""
    try:
        with db.connect(url) as conn, conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(
                query("lock_blockers"),
                {
                    "schema": app_schema or DEFAULT_APP_SCHEMA,
                    "tables": [s.table for s in sources.SOURCES],
                },
            ).fetchall()
    except (PubctlError, psycopg.Error):
        return "(could not be read)"
    if not rows:
        return "(nobody any more)"
    return "; ".join(
        f"{LockHolder.from_row(r).describe()} ({r['mode']} on {r['relation']})" for r in rows
    )


def _run_alembic(
    url: str,
    revision: str,
    direction: str,
    app_schema: str | None,
    lock_timeout_s: float,
    step: Callable[[str], None],
) -> None:
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            cfg = Config()
            cfg.set_main_option("script_location", str(migrations_folder()))
            cfg.attributes.update(
                connection=connection,
                url=url,
                app_schema=app_schema,
                direction=direction,
                on_step=step,
                lock_timeout_ms=max(1, int(lock_timeout_s * 1000)),
            )
            try:
                if direction == "upgrade":
                    command.upgrade(cfg, revision)
                else:
                    command.downgrade(cfg, revision)
            except CommandError as exc:
                raise PubctlError(str(exc)) from None
            connection.commit()
    finally:
        engine.dispose()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# --- called from alembic/env.py, inside the migration transaction -------------------


def prepare(connection: sqlalchemy.Connection, attributes: dict[str, Any]) -> None:
    """Lock, bootstrap schema ``pub`` and check the application's tables.

    Runs first thing in the migration transaction, so a second concurrent
    ``pubctl migrate`` waits here and then finds the work already done.
    """
    raw = _driver_connection(connection)
    # Every lock this run waits for is bounded: a concurrent `pubctl migrate` or a long
    # transaction makes the attempt fail with 55P03, and migrate() retries, then names
    # the sessions in the way.
    raw.execute(query("set_lock_timeout"), {"ms": f"{attributes['lock_timeout_ms']}ms"})
    raw.execute(query("create_pub_schema"))
    raw.execute(query("migrate_lock"))
    before = current_revision(raw)
    if before in PRE_RELEASE:
        raise PubctlError(
            f"the database is at pubctl revision {before}, from the unreleased history "
            "before 0.1.0, which has no upgrade path; nothing was changed",
            hint=PRE_RELEASE_HINT,
        )
    if before is not None and before not in revisions():
        raise SchemaNewerError(
            f"the database was migrated by a newer pubctl (revision {before}); "
            f"this pubctl only knows revisions up to {head_revision()}",
            hint="upgrade pubctl before migrating",
        )
    recorded = _recorded_app_schema(raw)
    wanted = attributes.get("app_schema")
    if recorded is not None and wanted is not None and wanted != recorded:
        raise PubctlError(
            f"pubctl is installed for application schema {recorded!r}, not {wanted!r}",
            hint="migrate to base first to move pubctl to another schema",
        )
    app_schema = recorded or wanted or DEFAULT_APP_SCHEMA
    attributes["app_schema"] = app_schema
    # Revisions read the application's schema from this setting (local to the run).
    raw.execute(query("set_migration_app_schema"), {"app_schema": app_schema})
    if attributes["direction"] == "upgrade":
        with raw.cursor(row_factory=dict_row) as cur:
            columns = cur.execute(
                query("source_columns"),
                {"schema": app_schema, "tables": [s.table for s in sources.SOURCES]},
            ).fetchall()
        # Columns renamed in one step (`pubctl rename-column`) are checked under the
        # names capture reads now.
        definition = rename.installed(raw) if before is not None else sources.DEFINITION
        problems = sources.problems(columns, app_schema, definition)
        if problems:
            raise MissingSourceError(
                "the application's tables are not ready for pubctl, nothing was changed: "
                + "; ".join(problems),
                hint="create them with the application's own migrations "
                "(or `pubctl init-sample-schema` for a demo), then migrate again",
            )
        if before is None:
            raw.execute(query("prepare_capture_role"))


def run_frozen(migration_file: str, direction: str) -> None:
    """Run a revision's frozen SQL (``direction`` "up" or "down") on the migration
    connection.

    Each revision ``NNNN_name.py`` has ``NNNN_name.up.sql`` and ``NNNN_name.down.sql``
    beside it: a copy of the SQL as it was when the revision was released, so later
    edits of ``sql/`` never change what an old revision does.
    """
    path = Path(migration_file)
    sql = path.with_name(f"{path.stem}.{direction}.sql").read_text(encoding="utf-8")
    _driver_connection(op.get_bind()).execute(sql)


def _recorded_app_schema(conn: psycopg.Connection[tuple[object, ...]]) -> str | None:
    row = conn.execute(query("has_settings_table")).fetchone()
    if not row or not row[0]:
        return None
    from pubctl.capture import switch

    return switch(conn).app_schema


def _driver_connection(connection: sqlalchemy.Connection) -> psycopg.Connection[tuple[object, ...]]:
    raw = connection.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    return raw


def finish(connection: sqlalchemy.Connection) -> None:
    """At base, remove the version table and schema ``pub`` too: nothing of ours stays.
    Otherwise set pub's privileges to the documented ones
    (``pub.revoke_undocumented_grants``).

    The schema is dropped without CASCADE: if something pubctl did not create lives in
    it, the whole downgrade fails and rolls back instead of destroying it.
    """
    raw = _driver_connection(connection)
    if current_revision(raw) is None:
        raw.execute(query("drop_pub_schema"))
        return
    raw.execute(query("revoke_capture_create"))
    # Every run, even one with nothing to upgrade, leaves pub's privileges as documented,
    # whatever default privileges or a grant by hand added.
    row = raw.execute(query("has_privilege_reset")).fetchone()
    if row and row[0]:
        raw.execute(query("revoke_undocumented_grants"))
    if _index(current_revision(raw)) >= _index(CONTENT_REVISION):
        raw.execute(query("grant_feed_reader"))
