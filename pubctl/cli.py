"""The ``pubctl`` command line: a thin layer over the modules that do the work.

Exit codes: 0 success, 1 ``verify`` found drift, 2 bad usage or bad input,
3 an operation failed, 4 the database was migrated by a newer pubctl.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import traceback
from dataclasses import dataclass
from typing import Any, NoReturn

import click
import psycopg

from pubctl import __version__, capture, db, migrate, progress, status
from pubctl import apply as applier
from pubctl import backfill as backfiller
from pubctl import feed as feed_reader
from pubctl import verify as verifier
from pubctl import worker as worker_loop
from pubctl.errors import EXIT_DRIFT, EXIT_FAILURE, EXIT_USAGE, PubctlError
from pubctl.queries import read_sql_file

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class SecondsRange(click.FloatRange):
    """A number of seconds within bounds; NaN, which compares false to any bound, is
    refused too."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


# Numeric options are bounded so that every accepted value fits the SQL parameter it
# becomes (integer, bigint) and no typo turns into a day-long transaction or wait.
PAGE_SIZE = click.IntRange(min=1, max=1_000_000)
ROW_COUNT = click.IntRange(min=1, max=2**63 - 1)
BIGINT_FROM_0 = click.IntRange(min=0, max=2**63 - 1)
REPORT_SIZE = click.IntRange(min=0, max=1_000_000)
LOCK_ATTEMPTS = click.IntRange(min=1, max=1000)


@dataclass
class Settings:
    """Options shared by every command."""

    url: str
    debug: bool
    app_schema: str | None


_debug = False


def _check_url(_ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    url = value or ""
    try:
        return db.validate_url(url)
    except db.BadDatabaseUrl as exc:
        raise click.BadParameter(str(exc), param=param) from None


@click.group(context_settings=CONTEXT_SETTINGS)
@click.option(
    "--database-url",
    envvar=["PUBCTL_DATABASE_URL", "DATABASE_URL"],
    show_envvar=True,
    callback=_check_url,
    metavar="URL",
    help="libpq URL or conninfo of the database; without it, the PG* environment is used.",
)
@click.option(
    "--app-schema",
    envvar="PUBCTL_APP_SCHEMA",
    show_envvar=True,
    metavar="SCHEMA",
    help="Schema of study_topic and study_question, chosen at the first migrate [default: public].",
)
@click.option(
    "--debug",
    is_flag=True,
    envvar="PUBCTL_DEBUG",
    show_envvar=True,
    help="Show tracebacks on errors.",
)
@click.version_option(__version__, "--version", prog_name="pubctl")
@click.pass_context
def cli(ctx: click.Context, database_url: str, app_schema: str | None, debug: bool) -> None:
    """Publish study topics and questions through triggers, an outbox and a feed."""
    global _debug
    _debug = debug
    ctx.obj = Settings(url=database_url, debug=debug, app_schema=app_schema)


def _settings(ctx: click.Context) -> Settings:
    obj = ctx.find_object(Settings)
    assert obj is not None
    return obj


def _revision_choice(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    known = migrate.revisions()
    if value in ("head", "base", *known):
        return value
    raise click.BadParameter(
        f"{value!r} is not a pubctl revision; use head, base or one of: {', '.join(known)}",
        param=param,
    )


@cli.command("migrate")
@click.option(
    "--revision",
    default="head",
    show_default=True,
    callback=_revision_choice,
    help="Target revision: head, base (removes everything of pubctl's) or a revision id.",
)
@click.option(
    "--lock-timeout",
    type=SecondsRange(min=0.01, max=3600),
    default=migrate.DEFAULT_LOCK_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for a lock on the application's tables before retrying.",
)
@click.option(
    "--lock-attempts",
    type=LOCK_ATTEMPTS,
    default=migrate.DEFAULT_LOCK_ATTEMPTS,
    show_default=True,
    help="Attempts before giving up when the tables stay locked.",
)
@click.pass_context
def migrate_cmd(ctx: click.Context, revision: str, lock_timeout: float, lock_attempts: int) -> None:
    """Upgrade (or downgrade) pubctl's schema in the database."""
    settings = _settings(ctx)
    run = migrate.migrate(
        settings.url,
        revision,
        app_schema=settings.app_schema,
        on_step=lambda message: click.echo(f"  {message}"),
        lock_timeout_s=lock_timeout,
        attempts=lock_attempts,
    )
    where = db.describe(settings.url)
    if not run.steps:
        click.echo(f"{where} is already at revision {run.after or 'base'}; nothing to do")
    else:
        click.echo(f"migrated {where} from {run.before or 'base'} to {run.after or 'base'}")


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Show the migration revision, capture and publishing state."""
    settings = _settings(ctx)
    report = status.collect(settings.url)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        click.echo(status.render(report))


WAIT_TIMEOUT = click.option(
    "--wait-timeout",
    type=SecondsRange(min=0, max=86400),
    default=capture.DEFAULT_WAIT_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for transactions that wrote while publishing was off to end.",
)


def _report_unpublished_writers(writers: list[capture.UnpublishedWriter], waited: float) -> None:
    click.echo(
        f"  waiting {waited:.0f}s for {len(writers)} open transaction(s) that wrote while "
        "publishing was off: " + "; ".join(w.describe() for w in writers),
        err=True,
    )


@cli.command("enable")
@WAIT_TIMEOUT
@click.pass_context
def enable_cmd(ctx: click.Context, wait_timeout: float) -> None:
    """Switch publishing on: writes to the application's tables reach the outbox.

    Then waits until every transaction that wrote while publishing was off has ended,
    so that a backfill started afterwards sees their writes."""
    settings = _settings(ctx)
    with db.connect(settings.url, autocommit=True) as conn:
        migrate.require_current(conn, settings.url)
        capture.set_publishing(conn, True)
        click.echo(f"publishing is on for {db.describe(settings.url)}")
        capture.wait_for_unpublished_writers(conn, wait_timeout, _report_unpublished_writers)
    click.echo("run `pubctl backfill all` to publish what changed while it was off")


@cli.command("disable")
@click.pass_context
def disable_cmd(ctx: click.Context) -> None:
    """Switch publishing off: writes add nothing to the outbox until `enable`."""
    settings = _settings(ctx)
    with db.connect(settings.url, autocommit=True) as conn:
        migrate.require_current(conn, settings.url)
        capture.set_publishing(conn, False)
    click.echo(f"publishing is off for {db.describe(settings.url)}")


KINDS = ("topic", "question", "explanation")


@cli.command("apply")
@click.option(
    "--batch-size",
    type=PAGE_SIZE,
    default=applier.DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Outbox rows per batch; each batch is one transaction.",
)
@click.pass_context
def apply_cmd(ctx: click.Context, batch_size: int) -> None:
    """Drain the outbox into the published state until it is empty, then exit."""
    settings = _settings(ctx)
    with db.connect(settings.url, autocommit=True) as conn:
        migrate.require_current(conn, settings.url)
        totals = applier.drain(conn, batch_size)
    click.echo(f"applied {totals.summary()}")


@cli.command("feed")
@click.option(
    "--after",
    "after_rev",
    type=BIGINT_FROM_0,
    default=0,
    show_default=True,
    help="Print changes with a rev greater than this.",
)
@click.option(
    "--limit",
    type=BIGINT_FROM_0,
    default=None,
    help="Print at most this many rows (default: read to the end).",
)
@click.option(
    "--kind",
    "kinds",
    type=click.Choice(KINDS),
    multiple=True,
    help="Only these kinds (repeatable).",
)
@click.option("--follow", is_flag=True, help="Keep tailing the feed after its end.")
@click.pass_context
def feed_cmd(
    ctx: click.Context, after_rev: int, limit: int | None, kinds: tuple[str, ...], follow: bool
) -> None:
    """Print the feed as JSON lines, in rev order."""
    settings = _settings(ctx)
    stop = worker_loop.StopFlag()
    if follow:
        stop.install()
    with db.connect(settings.url, autocommit=True) as conn:
        migrate.require_current(conn, settings.url)
        for line in feed_reader.read(
            conn, after_rev, limit, kinds or None, follow=follow, should_stop=stop
        ):
            click.echo(line)


@cli.command("worker")
@click.option(
    "--batch-size",
    type=PAGE_SIZE,
    default=applier.DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Outbox rows per batch.",
)
@click.option(
    "--poll-interval",
    type=SecondsRange(min=0.05, max=3600),
    default=5.0,
    show_default=True,
    envvar="PUBCTL_POLL_INTERVAL",
    show_envvar=True,
    help="Seconds between polls when no notification arrives.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log one line per batch.")
@click.pass_context
def worker_cmd(ctx: click.Context, batch_size: int, poll_interval: float, verbose: bool) -> None:
    """Keep applying, woken by LISTEN/NOTIFY; stops cleanly on SIGTERM or SIGINT."""
    settings = _settings(ctx)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s pubctl worker: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("psycopg").setLevel(logging.WARNING)
    stop = worker_loop.StopFlag()
    stop.install()
    worker_loop.run(settings.url, batch_size=batch_size, poll_interval=poll_interval, stop=stop)


@cli.command("backfill")
@click.argument("target", type=click.Choice(["topics", "questions", "all"]))
@click.option(
    "--batch-size",
    type=PAGE_SIZE,
    default=backfiller.DEFAULT_PAGE_SIZE,
    show_default=True,
    help="Source rows per page; each page is one transaction.",
)
@click.option(
    "--after-id",
    type=BIGINT_FROM_0,
    default=None,
    help="Start after this source id (default: from the beginning).",
)
@click.option(
    "--max-rows",
    type=ROW_COUNT,
    default=None,
    help="Stop after this many source rows in total (continue with --resume).",
)
@click.option(
    "--max-backlog",
    type=ROW_COUNT,
    default=None,
    help="Pause while the outbox holds more than this many rows.",
)
@click.option("--resume", is_flag=True, help="Continue the last interrupted or stopped run.")
@click.option("--dry-run", is_flag=True, help="Count what would be enqueued; write nothing.")
@click.option(
    "--include-deleted",
    is_flag=True,
    help="Also enqueue tombstones for deleted rows (after losing the published state).",
)
@WAIT_TIMEOUT
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def backfill_cmd(
    ctx: click.Context,
    target: str,
    batch_size: int,
    after_id: int | None,
    max_rows: int | None,
    max_backlog: int | None,
    resume: bool,
    dry_run: bool,
    include_deleted: bool,
    wait_timeout: float,
    as_json: bool,
) -> None:
    """Enqueue every existing row's current payload, in bounded, resumable pages."""
    if resume and after_id is not None:
        raise click.UsageError("--resume continues where the last run stopped; drop --after-id")
    settings = _settings(ctx)
    options = backfiller.Options(
        page_size=batch_size,
        after_id=after_id or 0,
        max_rows=max_rows,
        max_backlog=max_backlog,
        resume=resume,
        dry_run=dry_run,
        include_deleted=include_deleted,
        wait_timeout_s=wait_timeout,
    )
    targets = ["topics", "questions"] if target == "all" else [target]
    reporter = progress.BackfillReporter(live=None if not as_json else False)
    with db.connect(settings.url, autocommit=True) as conn:
        migrate.require_current(conn, settings.url)
        try:
            results = backfiller.Backfill(conn, options, on_progress=reporter).run(targets)
        finally:
            reporter.close()
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))
        return
    for r in results:
        click.echo(_backfill_summary(r, target))


def _backfill_summary(r: backfiller.SourceResult, target: str) -> str:
    if r.state == "nothing to resume":
        return f"{r.source}: nothing to resume (the last run finished, or none was started)"
    done = f"{r.rows} rows read, {r.enqueued} outbox rows"
    if r.state == "dry run":
        return f"{r.source}: dry run, {done} would be enqueued; nothing was written"
    pages = f"{r.pages} page" + ("" if r.pages == 1 else "s")
    line = f"{r.source}: {r.state}, {done} enqueued in {pages} ({r.seconds:.1f}s)"
    if r.state == "stopped":
        line += (
            f"; stopped at id {r.last_id} (--max-rows); continue with "
            f"`pubctl backfill {target} --resume`"
        )
    return line


@cli.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--kind",
    "kinds",
    type=click.Choice(KINDS),
    multiple=True,
    help="Only these kinds (repeatable; default all).",
)
@click.option(
    "--limit-report",
    type=REPORT_SIZE,
    default=20,
    show_default=True,
    help="Examples shown per category.",
)
@click.option(
    "--fail-on",
    "fail_on",
    type=click.Choice(["pending"]),
    multiple=True,
    help="Also fail (exit 1) on this category, which is not drift by default.",
)
@click.option("--wait", is_flag=True, help="Drain the outbox first, so nothing is pending.")
@click.pass_context
def verify_cmd(
    ctx: click.Context,
    as_json: bool,
    kinds: tuple[str, ...],
    limit_report: int,
    fail_on: tuple[str, ...],
    wait: bool,
) -> None:
    """Compare the source, the published state and the Python reference; exit 1 on drift."""
    settings = _settings(ctx)
    with db.connect(settings.url, autocommit=True) as conn:
        migrate.require_current(conn, settings.url)
        if wait:
            applier.drain(conn)
        report = verifier.verify(
            conn, kinds or None, limit_report=limit_report, fail_on_pending="pending" in fail_on
        )
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(verifier.render(report))
    if not report.clean:
        sys.exit(EXIT_DRIFT)


@cli.command("demo")
@click.option("--keep", is_flag=True, help="Leave the demo server running and print its URL.")
@click.pass_context
def demo_cmd(ctx: click.Context, keep: bool) -> None:
    """The whole flow on a throwaway database, narrated, with real output.

    With PUBCTL_DATABASE_URL (or --database-url) it uses that server instead, in a new
    database of its own."""
    from pubctl import demo

    settings = _settings(ctx)
    # SIGTERM unwinds like Ctrl-C, so the throwaway server is always removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    if not demo.main(settings.url or None, keep):
        raise PubctlError("the demo did not behave as narrated (see above)")


@cli.command("init-sample-schema")
@click.pass_context
def init_sample_schema_cmd(ctx: click.Context) -> None:
    """Create the sample study_topic / study_question tables (demos and tests only)."""
    settings = _settings(ctx)
    schema = settings.app_schema or migrate.DEFAULT_APP_SCHEMA
    with db.connect(settings.url) as conn:
        ident = psycopg.sql.Identifier(schema)
        conn.execute(psycopg.sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        conn.execute(psycopg.sql.SQL("SET LOCAL search_path TO {}").format(ident))
        conn.execute(read_sql_file("sample_app_schema.sql").encode())
    click.echo(f"sample tables study_topic, study_question are in schema {schema}")


from pubctl.serve.command import serve_cmd  # noqa: E402

cli.add_command(serve_cmd)


def _fail(message: str, code: int, url: str = "") -> NoReturn:
    click.echo(f"pubctl: {db.mask(message, url)}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``pubctl`` console script."""
    args = sys.argv[1:] if argv is None else argv
    url_hint = _url_from_args(args)
    try:
        return cli.main(args=args, prog_name="pubctl", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("pubctl: interrupted", err=True)
        sys.exit(130)
    except PubctlError as exc:
        if _debug:
            traceback.print_exc()
        message = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
        _fail(message, exc.exit_code, url_hint)
    except psycopg.Error as exc:
        if _debug:
            traceback.print_exc()
        sqlstate = getattr(exc, "sqlstate", None)
        text = " ".join(str(exc).split())
        _fail(
            f"database error{f' [{sqlstate}]' if sqlstate else ''}: {text}", EXIT_FAILURE, url_hint
        )
    except Exception as exc:
        if _debug:
            traceback.print_exc()
        text = " ".join(str(exc).split())
        _fail(
            f"unexpected error: {type(exc).__name__}: {text} (run with --debug for details)",
            EXIT_FAILURE,
            url_hint,
        )


def _url_from_args(args: list[str]) -> str:
    # Only used to mask a password that appears in an error message.
    import os

    for i, arg in enumerate(args):
        if arg == "--database-url" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--database-url="):
            return arg.split("=", 1)[1]
    return os.environ.get("PUBCTL_DATABASE_URL") or os.environ.get("DATABASE_URL") or ""
