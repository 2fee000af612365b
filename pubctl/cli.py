"""The ``pubctl`` command line: a thin layer over the modules that do the work.

Every command takes the global options before or after its name, opens its database
through :func:`pubctl.shell.connection`, and leaves errors to :class:`pubctl.shell.Group`
(one line, one exit code). Modules that only some commands need are imported inside
those commands, so that ``pubctl --help`` stays quick.

Exit codes: 0 success, 1 ``verify`` found drift or ``status`` found capture not OK,
2 bad usage or bad input, 3 an operation failed, 4 the database was migrated by a newer
pubctl, 130 interrupted.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from pubctl import __version__
from pubctl.errors import EXIT_DRIFT, PubctlError
from pubctl.shell import (
    EXIT_INTERRUPTED,
    Group,
    Settings,
    command_options,
    connection,
    group_options,
    refuse_app_schema,
    settings,
)
from pubctl.sources import BY_TARGET, KINDS

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DEFAULT_APP_SCHEMA = "public"
F = TypeVar("F", bound=Callable[..., Any])


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

# Options several commands share.
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
WAIT_TIMEOUT = click.option(
    "--wait-timeout",
    type=SecondsRange(min=0, max=86400),
    default=300.0,
    show_default=True,
    help="Seconds to wait for transactions that wrote while publishing was off to end.",
)


def kind_option(help_text: str) -> Callable[[F], F]:
    return click.option("--kind", "kinds", type=click.Choice(KINDS), multiple=True, help=help_text)


def batch_size_option(default: int, help_text: str) -> Callable[[F], F]:
    return click.option(
        "--batch-size", type=PAGE_SIZE, default=default, show_default=True, help=help_text
    )


def poll_interval_option(default: float) -> Callable[[F], F]:
    return click.option(
        "--poll-interval",
        type=SecondsRange(min=0.05, max=3600),
        default=default,
        show_default=True,
        envvar="PUBCTL_POLL_INTERVAL",
        show_envvar=True,
        help="Seconds between polls when no notification arrives.",
    )


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS)
@group_options
@click.version_option(__version__, "--version", prog_name="pubctl")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Publish study topics and questions through triggers, an outbox and a feed."""
    ctx.ensure_object(Settings)


def command(name: str, *, app_schema: bool = False) -> Callable[[F], click.Command]:
    """A pubctl command: takes the global options after its name, too (``--app-schema``
    only where ``app_schema``: the other commands use the schema recorded at install)."""

    def decorate(fn: F) -> click.Command:
        return cli.command(name)(command_options(click.pass_context(fn), app_schema=app_schema))

    return decorate


def _stop_on_signals() -> Any:
    from pubctl.worker import StopFlag

    stop = StopFlag()
    stop.install()
    return stop


# --- migrate ------------------------------------------------------------------------


def _revision_choice(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    from pubctl import revision

    if value in ("head", "base", *revision.REVISIONS):
        return value
    raise click.BadParameter(
        f"{value!r} is not a pubctl revision; use head, base or one of: "
        + ", ".join(revision.REVISIONS),
        param=param,
    )


@command("migrate", app_schema=True)
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
    default=2.0,
    show_default=True,
    help="Seconds to wait for a lock on the application's tables before retrying.",
)
@click.option(
    "--lock-attempts",
    type=LOCK_ATTEMPTS,
    default=5,
    show_default=True,
    help="Attempts before giving up when the tables stay locked.",
)
@click.option(
    "--drop-published-state",
    is_flag=True,
    help="Allow a downgrade that drops the published state (viewers must start over).",
)
def migrate_cmd(
    ctx: click.Context,
    revision: str,
    lock_timeout: float,
    lock_attempts: int,
    drop_published_state: bool,
) -> None:
    """Upgrade (or downgrade) pubctl's schema in the database."""
    from pubctl import migrate

    current = settings(ctx)
    run = migrate.migrate(
        current.url,
        revision,
        app_schema=current.app_schema,
        on_step=lambda message: click.echo(f"  {message}"),
        lock_timeout_s=lock_timeout,
        attempts=lock_attempts,
        drop_published_state=drop_published_state,
    )
    where = current.describe()
    if not run.steps:
        click.echo(f"{where} is already at revision {run.after or 'base'}; nothing to do")
        return
    click.echo(f"migrated {where} from {run.before or 'base'} to {run.after or 'base'}")
    if run.created_published_state:
        click.echo(
            f"the published state is new (feed id {run.feed_id}): viewers holding a cursor "
            "see another feed id and start again from rev 0. Publish what the tables hold "
            "now:\n"
            "  pubctl backfill all\n"
            "  pubctl apply        (or keep `pubctl worker` running)\n"
            "  pubctl verify"
        )
    if run.after is not None and run.feed_reader_role:
        click.echo(
            "feed readers: the role pubctl_feed_reader holds their rights, granted again by "
            "every migrate; give it to a viewer's role with GRANT pubctl_feed_reader TO viewer"
        )
    elif run.after is not None:
        click.echo(
            "feed readers: this role may not create pubctl_feed_reader; grant a viewer's role "
            "the reader's rights (again after a reinstall):\n  "
            + migrate.READER_GRANTS.replace("\n", "\n  ")
        )


@command("rename-column")
@click.argument("table")
@click.argument("old")
@click.argument("new")
@click.option(
    "--lock-timeout",
    type=SecondsRange(min=0.01, max=3600),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the table's lock; writes wait while it is held.",
)
def rename_column_cmd(
    ctx: click.Context, table: str, old: str, new: str, lock_timeout: float
) -> None:
    """Rename a projected column of TABLE and the capture that reads it, in one transaction.

    Run it as the role that ran `pubctl migrate`, owning TABLE too (or a superuser).
    Then name the new column in the definition (docs/operations.md, "Renaming a
    projected column")."""
    from pubctl import rename

    refuse_app_schema(ctx)
    with connection(ctx) as conn:
        rename.rename_column(conn, table, old, new, lock_timeout)
    click.echo(
        f"renamed {table}.{old} to {new}; capture reads {new} (payloads unchanged). Name it "
        f'in pubctl/sources.py: Column("...", ..., column="{new}")'
    )


# --- status, enable, disable ----------------------------------------------------------


@command("status")
@JSON_OPTION
def status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Show the migration revision, capture and publishing state; exit 1 when capture is
    not OK. With --json, one JSON object in every case (an "error" field when the state
    could not be read, with that failure's exit status)."""
    from pubctl import shell, status

    current = settings(ctx)
    try:
        refuse_app_schema(ctx)
        with connection(ctx, check_revision=False) as conn:
            report = status.report(conn, current.describe())
    except click.UsageError:
        raise
    except Exception as exc:
        if not as_json:
            raise
        code, line = shell.describe_error(exc, current, "status")
        from pubctl import db

        click.echo(
            json.dumps(
                {"error": db.mask(line, current.url), "exit_code": code,
                 "database": current.describe()},
                indent=2,
            )
        )  # fmt: skip
        sys.exit(code)
    refuse_app_schema(ctx, report["app_schema"])
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        click.echo(status.render(report))
    if not report["capture_ok"]:
        sys.exit(EXIT_DRIFT)


def _report_unpublished_writers(writers: list[Any], waited: float) -> None:
    click.echo(
        f"  waiting {waited:.0f}s for {len(writers)} open transaction(s) that wrote while "
        "publishing was off: " + "; ".join(w.describe() for w in writers),
        err=True,
    )


@command("enable")
@WAIT_TIMEOUT
def enable_cmd(ctx: click.Context, wait_timeout: float) -> None:
    """Switch publishing on: writes to the application's tables reach the outbox.

    Then waits until every transaction that wrote while publishing was off has ended,
    so that a backfill started afterwards sees their writes."""
    from pubctl import capture

    refuse_app_schema(ctx)
    with connection(ctx) as conn:
        capture.set_publishing(conn, True)
        click.echo(f"publishing is on for {settings(ctx).describe()}")
        capture.wait_for_unpublished_writers(conn, wait_timeout, _report_unpublished_writers)
    click.echo("run `pubctl backfill all` to publish what changed while it was off")


@command("disable")
def disable_cmd(ctx: click.Context) -> None:
    """Switch publishing off: writes add nothing to the outbox until `enable`."""
    from pubctl import capture

    refuse_app_schema(ctx)
    with connection(ctx) as conn:
        capture.set_publishing(conn, False)
    click.echo(f"publishing is off for {settings(ctx).describe()}")


# --- apply, worker, feed ------------------------------------------------------------------


@command("apply")
@batch_size_option(1000, "Outbox rows per batch; each batch is one transaction.")
def apply_cmd(ctx: click.Context, batch_size: int) -> None:
    """Drain the outbox into the published state until it is empty, then exit."""
    from pubctl import apply as applier

    refuse_app_schema(ctx)
    with connection(ctx) as conn:
        totals = applier.drain(conn, batch_size)
    click.echo(f"applied {totals.summary()}")


@command("worker")
@batch_size_option(1000, "Outbox rows per batch.")
@poll_interval_option(5.0)
@click.option("-v", "--verbose", is_flag=True, help="Log one line per batch.")
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    help="Serve Prometheus metrics on http://HOST:PORT/metrics (0: any free port, logged "
    "at start). Default: no metrics.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address of the metrics server (with --metrics-port).",
)
def worker_cmd(
    ctx: click.Context,
    batch_size: int,
    poll_interval: float,
    verbose: bool,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Keep applying, woken by LISTEN/NOTIFY; stops cleanly on SIGTERM or SIGINT."""
    import logging

    from pubctl import worker as worker_loop

    refuse_app_schema(ctx)
    _log_to_stderr("worker", verbose)
    stop = _stop_on_signals()
    url = settings(ctx).url
    server = None
    if metrics_port is not None:
        from pubctl import worker_metrics

        server = worker_metrics.MetricsServer(
            worker_metrics.WorkerMetrics(url), metrics_host, metrics_port
        )
        logging.getLogger("pubctl.worker").info("serving metrics on %s", server.url)
    try:
        worker_loop.run(
            url,
            batch_size=batch_size,
            poll_interval=poll_interval,
            stop=stop,
            observer=server.metrics if server else None,
        )
    finally:
        if server is not None:
            server.close()
    logging.shutdown()


def _log_to_stderr(name: str, verbose: bool = False) -> None:
    import logging

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s pubctl {name}: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("psycopg").setLevel(logging.WARNING)


@command("feed")
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
    type=ROW_COUNT,
    default=None,
    help="Print at most this many rows (default: read to the end).",
)
@kind_option("Only these kinds (repeatable).")
@click.option(
    "--follow",
    is_flag=True,
    help="Keep printing changes as the applier publishes them; reconnects after a "
    "database restart.",
)
@poll_interval_option(5.0)
def feed_cmd(
    ctx: click.Context,
    after_rev: int,
    limit: int | None,
    kinds: tuple[str, ...],
    follow: bool,
    poll_interval: float,
) -> None:
    """Print the feed as JSON lines, in rev order.

    Needs nothing but what a feed reader has: USAGE on schema pub and EXECUTE on
    pub.feed and pub.feed_id."""
    from pubctl import feed as feed_reader

    refuse_app_schema(ctx)
    current = settings(ctx)
    if follow:
        if limit is not None:
            raise click.UsageError("--follow reads on without end; drop --limit", ctx=ctx)
        _log_to_stderr("feed")
        stop = _stop_on_signals()
        feed_reader.follow(
            current.url,
            after_rev,
            kinds or None,
            click.echo,
            poll_interval=poll_interval,
            should_stop=stop,
        )
        return
    with connection(ctx, check_revision=False) as conn:
        feed_reader.check_revision(conn, current.describe())
        feed_reader.feed_id(conn, current.describe())
        for line in feed_reader.read(conn, after_rev, limit, kinds or None):
            click.echo(line)


# --- backfill, verify ---------------------------------------------------------------------


@command("backfill")
@click.argument("target", type=click.Choice([*BY_TARGET, "all"]))
@batch_size_option(5000, "Source rows per page; each page is one transaction.")
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
@JSON_OPTION
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
    """Enqueue every existing row's current payload, in bounded, resumable pages.

    SIGTERM or SIGINT stops it at a page boundary (its checkpoint committed) and prints
    the command that resumes it; exit 0 after SIGTERM, 130 after SIGINT."""
    from pubctl import backfill as backfiller
    from pubctl import progress

    if resume and after_id is not None:
        raise click.UsageError("--resume continues where the last run stopped; drop --after-id")
    refuse_app_schema(ctx)
    options = backfiller.Options(
        page_size=batch_size,
        page_size_given=ctx.get_parameter_source("batch_size")
        is not click.core.ParameterSource.DEFAULT,
        after_id=after_id or 0,
        max_rows=max_rows,
        max_backlog=max_backlog,
        resume=resume,
        dry_run=dry_run,
        include_deleted=include_deleted,
        wait_timeout_s=wait_timeout,
    )
    targets = list(BY_TARGET) if target == "all" else [target]
    reporter = progress.BackfillReporter(live=None if not as_json else False)
    stop = _stop_on_signals()
    with connection(ctx) as conn:
        try:
            run = backfiller.Backfill(conn, options, on_progress=reporter, should_stop=stop)
            results = run.run(targets)
        finally:
            reporter.close()
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for r in results:
            click.echo(r.summary(target))
    if any(r.state == "interrupted" for r in results):
        click.echo(
            f"pubctl: backfill stopped by {stop.signal_name}; continue with "
            f"`pubctl backfill {target} --resume`",
            err=True,
        )
        if stop.signal_name == "SIGINT":
            sys.exit(EXIT_INTERRUPTED)


@command("verify")
@JSON_OPTION
@kind_option("Only these kinds (repeatable; default all).")
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
def verify_cmd(
    ctx: click.Context,
    as_json: bool,
    kinds: tuple[str, ...],
    limit_report: int,
    fail_on: tuple[str, ...],
    wait: bool,
) -> None:
    """Compare the source, the published state and the Python reference; exit 1 on drift."""
    from pubctl import apply as applier
    from pubctl import verify as verifier

    refuse_app_schema(ctx)
    with connection(ctx) as conn:
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


# --- demo, init-sample-schema, serve ----------------------------------------------------


@command("demo")
@click.option("--keep", is_flag=True, help="Leave the demo server (or database) for exploring.")
def demo_cmd(ctx: click.Context, keep: bool) -> None:
    """The whole flow on a throwaway database, narrated, with real output.

    With --database-url or PUBCTL_DATABASE_URL (not plain DATABASE_URL) it uses that
    server instead, in a new database of its own, dropped at the end unless --keep."""
    from pubctl import demo

    refuse_app_schema(ctx)
    current = settings(ctx)
    server_url = current.url if current.url_source in ("option", "PUBCTL_DATABASE_URL") else None
    # SIGTERM unwinds like Ctrl-C, so the throwaway server is always removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_INTERRUPTED))
    if not demo.main(server_url, keep):
        raise PubctlError("the demo did not behave as narrated (see above)")


@command("init-sample-schema", app_schema=True)
def init_sample_schema_cmd(ctx: click.Context) -> None:
    """Create the sample study_topic / study_question tables (demos and tests only)."""
    from pubctl import sample

    schema = settings(ctx).app_schema or DEFAULT_APP_SCHEMA
    with connection(ctx, autocommit=False, check_revision=False) as conn:
        sample.create_tables(conn, schema)
    click.echo(f"sample tables study_topic, study_question are in schema {schema}")


def _register_serve() -> None:
    from pubctl.serve.command import serve_cmd

    cli.add_command(command_options(serve_cmd))


_register_serve()


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``pubctl`` console script."""
    return cli.main(args=argv, prog_name="pubctl")
