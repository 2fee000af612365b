"""``pubctl backfill``: page through the source tables and enqueue every item.

Each page is one call of ``pub.backfill_page`` (``sql/schema/60_backfill.sql``), one
short transaction that also commits the progress; this module only drives the pages,
enforces the guards (``--max-rows``, ``--max-backlog``) and reports progress.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg.rows import class_row

from pubctl import capture, sources
from pubctl.errors import PubctlError
from pubctl.queries import query

# Pages of 5,000 rows measured within a few percent of one INSERT ... SELECT while
# keeping each page's row locks to a fraction of a second (see BENCHMARKS.md).
DEFAULT_PAGE_SIZE = 5000
BACKLOG_POLL_S = 1.0
# A page gives way instead of waiting long: when a long transaction keeps it from the
# SHARE lock it takes to tombstone items whose rows are gone (see pub.backfill_page; it
# waits at most 2 s), or a writer holding rows in another order makes it a deadlock
# victim, the page is rolled back and tried again, this many times in all.
PAGE_ATTEMPTS = 5

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass
class Options:
    """What the user asked for."""

    page_size: int = DEFAULT_PAGE_SIZE
    # False: --batch-size was not given, so --resume goes on with the page size of the
    # run it resumes.
    page_size_given: bool = True
    # Start after this id; None (or 0, the command line's default: --after-id takes no
    # negative value) starts before the first row, so that every id is read.
    after_id: int | None = None
    max_rows: int | None = None
    max_backlog: int | None = None
    resume: bool = False
    dry_run: bool = False
    include_deleted: bool = False
    wait_timeout_s: float = capture.DEFAULT_WAIT_TIMEOUT_S


@dataclass
class SourceResult:
    """What the backfill of one source table did."""

    source: str
    state: str  # finished | stopped | interrupted | nothing to resume | dry run
    rows: int = 0
    enqueued: int = 0
    pages: int = 0
    last_id: int | None = None  # None: before the first row
    started_after_id: int | None = None
    seconds: float = 0.0
    waited_for_backlog_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self, target: str) -> str:
        """One line for humans; ``target`` is what was asked (topics, questions, all)."""
        if self.state == "nothing to resume":
            return f"{self.source}: nothing to resume (the last run finished, or none was started)"
        done = f"{self.rows} rows read, {self.enqueued} outbox rows"
        if self.state == "dry run":
            return f"{self.source}: dry run, {done} would be enqueued; nothing was written"
        pages = f"{self.pages} page" + ("" if self.pages == 1 else "s")
        line = f"{self.source}: {self.state}, {done} enqueued in {pages} ({self.seconds:.1f}s)"
        if self.state in ("stopped", "interrupted"):
            why = "--max-rows" if self.state == "stopped" else "interrupted"
            where = "before the first row" if self.last_id is None else f"at id {self.last_id}"
            line += f"; stopped {where} ({why}); continue with `pubctl backfill {target} --resume`"
        return line


@dataclass(frozen=True)
class Checkpoint:
    """A row of ``pub.backfill_runs``: the latest run of one source."""

    after_id: int | None
    last_id: int | None
    rows_done: int
    enqueued: int
    state: str
    page_size: int | None


@dataclass(frozen=True)
class Page:
    """What one ``pub.backfill_page`` did."""

    rows_read: int
    last_id: int | None
    enqueued: int
    finished: bool


@dataclass
class Progress:
    """Reported after each page."""

    source: str
    rows: int
    enqueued: int
    pages: int
    estimate: int
    elapsed: float
    waiting: bool = False
    waiting_for: str = ""


@dataclass
class _Budget:
    """--max-rows, shared by all sources of one run."""

    left: int | None

    def page(self, page_size: int) -> int:
        return page_size if self.left is None else min(page_size, self.left)

    def spend(self, rows: int) -> None:
        if self.left is not None:
            self.left -= rows


@dataclass
class Backfill:
    """One ``pubctl backfill`` invocation over one or more sources."""

    conn: Conn
    options: Options
    on_progress: Callable[[Progress], None] = lambda _p: None
    # Checked before every page: a stop request (SIGTERM, SIGINT) ends the run at a page
    # boundary, its checkpoint committed, state "interrupted" (`--resume` continues).
    should_stop: Callable[[], bool] = lambda: False
    budget: _Budget = field(init=False)

    def __post_init__(self) -> None:
        self.budget = _Budget(self.options.max_rows)

    def run(self, targets: list[str]) -> list[SourceResult]:
        """Backfill each target in turn ("topics", "questions")."""
        recorded = capture.switch(self.conn)
        if not recorded.publishing_enabled and not self.options.dry_run:
            raise PubctlError(
                "publishing is off: a backfill now would be stale as soon as the next write",
                hint="run `pubctl enable` first, then backfill",
            )
        self._app_schema = recorded.app_schema
        # Pages read their rows at READ COMMITTED (pub.backfill_page refuses anything
        # else), whatever the role's or database's default isolation is.
        self.conn.execute(query("read_committed"))
        if not self.options.dry_run:
            # Writes made while publishing was off by transactions still open would be
            # committed after the pages read past them: wait until they end.
            capture.wait_for_unpublished_writers(
                self.conn,
                self.options.wait_timeout_s,
                self._report_unpublished_writers,
                self.should_stop,
            )
        results: list[SourceResult] = []
        for target in targets:
            results.append(self._one(sources.BY_TARGET[target].table))
            if results[-1].state == "interrupted":
                break
        return results

    def _report_unpublished_writers(
        self, writers: list[capture.UnpublishedWriter], waited: float
    ) -> None:
        names = "; ".join(w.describe() for w in writers)
        self.on_progress(
            Progress("", 0, 0, 0, 0, waited, waiting=True,
                     waiting_for=f"transactions that wrote while publishing was off: {names}")
        )  # fmt: skip

    def _one(self, source: str) -> SourceResult:
        with self.conn.transaction():
            row = self.conn.execute(query("backfill_lock"), {"source": source}).fetchone()
        if not row or not row[0]:
            holder = f" (pid {row[1]})" if row and row[1] is not None else ""
            raise PubctlError(
                f"another backfill of {source} is running on this database{holder}",
                hint="wait for it to finish, or stop it and use --resume",
            )
        try:
            return self._leased(source)
        finally:
            # A lost connection dropped the lease with its session already.
            with contextlib.suppress(psycopg.Error), self.conn.transaction():
                self.conn.execute(query("backfill_unlock"), {"source": source})

    def _leased(self, source: str) -> SourceResult:
        opts = self.options
        self._page_size: int | None = None
        after_id = opts.after_id or None
        result = SourceResult(source=source, state="running", started_after_id=after_id)
        if opts.resume:
            with self.conn.cursor(row_factory=class_row(Checkpoint)) as cur:
                run = cur.execute(query("backfill_run"), {"source": source}).fetchone()
            if run is None or run.state == "finished":
                result.state = "nothing to resume"
                return result
            after_id = run.last_id
            result.started_after_id = after_id
            if not opts.page_size_given and run.page_size:
                self._page_size = run.page_size
            self.conn.execute(query("backfill_resume"), {"source": source})
        elif not opts.dry_run:
            self.conn.execute(
                query("backfill_start"),
                {"source": source, "after_id": after_id, "page_size": opts.page_size},
            )
        estimate_row = self.conn.execute(
            query("backfill_estimate"), {"schema": self._app_schema, "source": source}
        ).fetchone()
        estimate = int(estimate_row[0]) if estimate_row else 0
        started = time.monotonic()
        result.last_id = after_id
        try:
            result.state = self._pages(source, result, estimate, started)
        except BaseException:
            if not opts.dry_run:
                self._set_state(source, "stopped")
            raise
        result.seconds = round(time.monotonic() - started, 3)
        if not opts.dry_run:
            self._set_state(source, "stopped" if result.state == "interrupted" else result.state)
        else:
            result.state = "dry run"
        return result

    def _pages(self, source: str, result: SourceResult, estimate: int, started: float) -> str:
        opts = self.options
        while True:
            page_size = self.budget.page(self._page_size or opts.page_size)
            if page_size <= 0:
                return "stopped"
            if self.should_stop():
                return "interrupted"
            result.waited_for_backlog_s += self._wait_for_backlog(source, result, estimate, started)
            page = self._page(source, result.last_id, page_size)
            self.budget.spend(page.rows_read)
            result.rows += page.rows_read
            result.enqueued += page.enqueued
            result.pages += 1
            if page.last_id is not None:
                result.last_id = page.last_id
            self.on_progress(
                Progress(source, result.rows, result.enqueued, result.pages, estimate,
                         time.monotonic() - started)
            )  # fmt: skip
            if page.finished:
                return "finished"

    def _page(self, source: str, after_id: int | None, page_size: int) -> Page:
        """One page; tried again when it had to give way to a writer."""
        opts = self.options
        for attempt in range(1, PAGE_ATTEMPTS + 1):
            try:
                with self.conn.cursor(row_factory=class_row(Page)) as cur:
                    page = cur.execute(
                        query("backfill_page"),
                        {
                            "source": source,
                            "after_id": after_id,
                            "page_size": page_size,
                            "include_deleted": opts.include_deleted,
                            "dry_run": opts.dry_run,
                        },
                    ).fetchone()
                assert page is not None
                return page
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
                if attempt == PAGE_ATTEMPTS:
                    where = "from the first row" if after_id is None else f"after id {after_id}"
                    raise PubctlError(
                        f"the page of {source} {where} gave way to writers "
                        f"{attempt} times ({type(exc).__name__}): a long transaction is "
                        "writing to the table",
                        hint="find it in pg_stat_activity, then `pubctl backfill --resume`",
                    ) from None
                time.sleep(min(0.5 * 2 ** (attempt - 1), 5.0))
        raise AssertionError("unreachable")

    def _wait_for_backlog(
        self, source: str, result: SourceResult, estimate: int, started: float
    ) -> float:
        limit = self.options.max_backlog
        if limit is None:
            return 0.0
        waited = 0.0
        while True:
            row = self.conn.execute(query("outbox_backlog_at_least"), {"limit": limit}).fetchone()
            if not row or not row[0] or self.should_stop():
                return waited
            self.on_progress(
                Progress(source, result.rows, result.enqueued, result.pages, estimate,
                         time.monotonic() - started, waiting=True)
            )  # fmt: skip
            time.sleep(BACKLOG_POLL_S)
            waited += BACKLOG_POLL_S

    def _set_state(self, source: str, state: str) -> None:
        if self.conn.closed:
            return
        self.conn.execute(query("backfill_set_state"), {"source": source, "state": state})
