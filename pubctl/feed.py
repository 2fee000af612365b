"""Reading the feed as JSON lines (``pubctl feed``).

A reader needs nothing but USAGE on schema pub and EXECUTE on ``pub.feed`` and
``pub.feed_id``: this module reads the feed through those two functions, and checks the
revision only where the role may read it (an operator's may, a reader's need not: those
functions keep their signatures). ``--follow`` waits for the applier's
``pubctl_published`` notification (or polls), and survives a database restart the way
the worker does: it tries to reconnect about every second and goes on from its cursor,
unless the published state it was reading was removed or replaced meanwhile (another
feed identity): then it says so and exits 3.

A streaming hot standby cannot LISTEN: there ``--follow`` reads the replayed WAL
position (``pg_last_wal_replay_lsn()``, open to every role, no table touched) every
``REPLAY_POLL_S`` and reads the feed again only when it moved, or after
``--poll-interval`` in any case: a change is printed within about half a second of its
replay. When the standby is promoted it starts listening. A query the standby cancels
because replay needed what it was reading (a conflict with recovery) is read again,
like one lost with the connection.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from pubctl import db
from pubctl.errors import NotMigratedError, PubctlError
from pubctl.queries import query

log = logging.getLogger("pubctl.feed")

PAGE_SIZE = 1000
# A page stops before its payloads pass this many bytes (it always holds one item), so
# that no page nears the 1 GB a PostgreSQL text value may hold; the next page goes on.
PAGE_MAX_BYTES = 64 * 2**20
# While the database is away, a reconnection is tried every RETRY_MIN_S..RETRY_MAX_S
# (random, so that many readers do not come back in step): a reader catches up within
# about a second of the database's return.
RETRY_MIN_S = 0.5
RETRY_MAX_S = 1.0
WAIT_SLICE_S = 0.25
# On a standby: how often the replayed WAL position is read.
REPLAY_POLL_S = 0.25
READER_GRANTS = (
    "GRANT USAGE ON SCHEMA pub TO <role>; "
    "GRANT EXECUTE ON FUNCTION pub.feed(bigint, integer, text[]), pub.feed_id() TO <role>"
)

Conn = psycopg.Connection[Any]


class StateLost(PubctlError):
    """The published state was removed (or replaced) under a running worker or reader."""


def retry_delay() -> float:
    """Seconds before the next reconnection attempt while the database is away."""
    return random.uniform(RETRY_MIN_S, RETRY_MAX_S)


def current_identity(conn: Conn) -> str | None:
    """The feed id of the published state, or None when there is none (removed, or
    half-installed by a migration under way)."""
    try:
        row = conn.execute(query("feed_id")).fetchone()
    except (psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedFunction):
        return None
    return str(row[0]) if row else None


def what_became_of(url: str, identity: str) -> tuple[str, str | None] | None:
    """After an unexpected error: "removed" when the published state ``identity`` is
    gone, "replaced" when another one (another feed id) is there, None when it is
    unchanged (or cannot be told: the error was something else)."""
    try:
        with db.connect(url, autocommit=True) as conn:
            current = current_identity(conn)
    except (psycopg.Error, db.ConnectError):
        return None
    if current is None:
        return "removed", None
    return ("replaced", current) if current != identity else None


def state_lost(what: str, where: str, identity: str, current: str | None, who: str) -> StateLost:
    """The error that stops a worker (``who`` = "worker") or a feed reader when the
    published state it was using was removed or replaced (``what``)."""
    change = f" (feed id {identity} is now {current})" if current else f" (feed id {identity})"
    if who == "worker":
        return StateLost(
            f"the published state of {where} was {what} while the worker ran{change}",
            hint="run `pubctl migrate` to install it again if it is not back, "
            "then restart the worker",
        )
    if what == "replaced":
        hint = "start again from rev 0 (`--after 0`)"
    else:
        hint = "once `pubctl migrate` has installed it again, start again from rev 0 (`--after 0`)"
    return StateLost(
        f"the published state of {where} was {what} while following it{change}", hint=hint
    )


@dataclass(frozen=True)
class FeedPage:
    """One page of the feed as ``feed_page_items`` writes it: the feed id, the items as
    JSON lines (the same bytes as the items of ``pubctl serve``'s body), the last
    item's rev, and whether more follows."""

    feed_id: str
    lines: list[str]
    count: int
    last_rev: int | None
    has_more: bool


def read_page(
    conn: Conn,
    after_rev: int,
    limit: int,
    kinds: Sequence[str] | None,
    max_bytes: int | None = None,
) -> FeedPage:
    """Up to ``limit`` items after ``after_rev`` and the feed identity, in one statement
    (one snapshot); fewer when their payloads would pass ``max_bytes`` (default
    ``PAGE_MAX_BYTES``), but at least one. Each line is written by the database
    (``sql/queries.sql``): the fields of ``pub.feed`` in its column order, the payload
    as its stored canonical text."""
    row = conn.execute(
        query("feed_page_items"),
        {
            "after_rev": after_rev,
            "limit": limit,
            "kinds": list(kinds) if kinds else None,
            "separator": "\n",
            "max_bytes": PAGE_MAX_BYTES if max_bytes is None else max_bytes,
        },
    ).fetchone()
    assert row is not None  # the query always returns one row
    feed_id, count, last_rev, has_more, items = row
    # No item holds a newline: JSON escapes it within strings, and canonical text has
    # no whitespace between tokens.
    return FeedPage(
        str(feed_id),
        str(items).split("\n") if items is not None else [],
        int(count),
        None if last_rev is None else int(last_rev),
        bool(has_more),
    )


@contextmanager
def as_feed_reader(where: str, grants: str = READER_GRANTS) -> Iterator[None]:
    """Name what is missing when a reader's query fails: a grant (with the ones a feed
    reader needs) or pubctl's schema."""
    try:
        yield
    except psycopg.errors.InsufficientPrivilege:
        raise PubctlError(
            f"the role of {where} may not read the feed", hint=f"a feed reader needs: {grants}"
        ) from None
    except (psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName):
        raise NotMigratedError(
            f"{where} has no pubctl feed", hint="run `pubctl migrate` first"
        ) from None


def feed_id(conn: Conn, where: str) -> str:
    """The identity of the published state; names what is missing when it cannot."""
    with as_feed_reader(where):
        row = conn.execute(query("feed_id")).fetchone()
    assert row is not None
    return str(row[0])


def check_revision(conn: Conn, where: str) -> None:
    """The revision check every command makes, where the role may read the revision: a
    feed reader may not (and needs not: pub.feed keeps its signature), an operator may."""
    from pubctl import revision

    try:
        current = revision.current_revision(conn)
    except psycopg.errors.InsufficientPrivilege:
        return
    revision.check(current, where)


def pages(
    conn: Conn, after_rev: int, limit: int | None, kinds: Sequence[str] | None
) -> Iterator[FeedPage]:
    """Pages from ``after_rev`` on: up to ``limit`` items in all, or to the current end."""
    cursor = after_rev
    remaining = limit
    while remaining is None or remaining > 0:
        size = PAGE_SIZE if remaining is None else min(PAGE_SIZE, remaining)
        page = read_page(conn, cursor, size, kinds)
        if page.last_rev is not None:
            cursor = page.last_rev
            yield page
        if remaining is not None:
            remaining -= page.count
        if not page.has_more:
            return


def read(
    conn: Conn,
    after_rev: int = 0,
    limit: int | None = None,
    kinds: Sequence[str] | None = None,
) -> Iterator[str]:
    """The feed from ``after_rev`` to its current end (or ``limit`` rows) as JSON lines."""
    for page in pages(conn, after_rev, limit, kinds):
        yield from page.lines


def follow(
    url: str,
    after_rev: int,
    kinds: Sequence[str] | None,
    emit: Callable[[str], None],
    *,
    poll_interval: float = 5.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Emit every change after ``after_rev``, then each new one as the applier publishes
    it, until ``should_stop``. While the database is away, tries to reconnect about
    every second; stops with :class:`StateLost` when the published state it was reading
    is removed or replaced."""
    cursor = after_rev
    identity: str | None = None
    down_since: float | None = None
    where = db.describe(url)
    while not should_stop():
        try:
            with db.connect(url, autocommit=True) as conn:
                try:
                    check_revision(conn, where)
                except NotMigratedError:
                    if identity is None:
                        raise
                    raise state_lost("removed", where, identity, None, "reader") from None
                # On a standby: the replayed position, read before each read of the feed.
                position = replay_position(conn)
                if position is None:
                    conn.execute(query("listen_published"))
                if down_since is not None:
                    log.warning("reconnected after %.1fs", time.monotonic() - down_since)
                    down_since = None
                while not should_stop():
                    while True:
                        page = _page_of_state(conn, where, identity, cursor, kinds)
                        identity = page.feed_id
                        for line in page.lines:
                            emit(line)
                        if page.last_rev is not None:
                            cursor = page.last_rev
                        if not page.has_more:
                            break
                    if position is None:
                        _wait(conn, poll_interval, should_stop)
                        continue
                    position = _wait_replay(conn, position, poll_interval, should_stop)
                    if position is None:
                        log.warning("the standby was promoted: listening for publishes")
                        conn.execute(query("listen_published"))
        except (
            psycopg.OperationalError,
            db.ConnectError,
            # On a standby, "canceling statement due to conflict with recovery".
            psycopg.errors.SerializationFailure,
        ) as exc:
            if down_since is None:
                down_since = time.monotonic()
                first = next(iter(str(exc).splitlines()), type(exc).__name__)
                log.warning("lost the database (%s); retrying", db.mask(first, url))
            deadline = time.monotonic() + retry_delay()
            while time.monotonic() < deadline and not should_stop():
                time.sleep(0.05)
        except (psycopg.Error, NotMigratedError):
            # Dropped under the open connection: "schema pub does not exist", "could not
            # open relation with OID ...": say what happened instead.
            if identity is None:
                raise
            became = what_became_of(url, identity)
            if became is None:
                raise
            raise state_lost(became[0], where, identity, became[1], "reader") from None


def _page_of_state(
    conn: Conn, where: str, identity: str | None, after_rev: int, kinds: Sequence[str] | None
) -> FeedPage:
    """One page after ``after_rev`` with the feed identity, read in one statement; or
    StateLost when the identity is not ``identity`` (None: any). The state can be dropped
    and created again behind a connection that stays open, with revs starting again from
    1: a page read with the old cursor must not be taken for part of the old state."""
    with as_feed_reader(where):
        page = read_page(conn, after_rev, PAGE_SIZE, kinds)
    if identity is not None and page.feed_id != identity:
        raise state_lost("replaced", where, identity, page.feed_id, "reader")
    return page


def replay_position(conn: Conn) -> str | None:
    """The replayed WAL position of a standby in recovery; None when the server is not
    in recovery (a primary, or a standby since promoted)."""
    row = conn.execute(query("replay_position")).fetchone()
    assert row is not None
    return str(row[1]) if row[0] else None


def _wait_replay(
    conn: Conn, position: str, seconds: float, should_stop: Callable[[], bool]
) -> str | None:
    """On a standby: wait until the replayed position moves past ``position`` or
    ``seconds`` pass; the position then (to compare with next time), or None when
    recovery ended (promoted) and the caller should listen instead."""
    deadline = time.monotonic() + seconds
    while not should_stop():
        time.sleep(max(min(REPLAY_POLL_S, deadline - time.monotonic()), 0.0))
        now = replay_position(conn)
        if now is None or now != position or time.monotonic() >= deadline:
            return now
    return position


def _wait(conn: Conn, seconds: float, should_stop: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not should_stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        for _note in conn.notifies(timeout=min(WAIT_SLICE_S, left), stop_after=1):
            return
