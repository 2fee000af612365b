"""The command shell: what every ``pubctl`` command shares.

* the global options (``--database-url``, ``--app-schema``, ``--debug``), accepted before
  or after the command name;
* :func:`connection`: one checked connection, opened and described the same way by
  every command;
* :class:`Group`: turns every error into one line on stderr and its exit code, in one
  place (tracebacks only with ``--debug``), naming the missing grant for a privilege
  error.

Exit codes: 0 success, 1 ``verify`` found drift or ``status`` found capture not OK, 2
bad usage or bad input, 3 an operation failed, 4 the database was migrated by a newer
pubctl, 130 interrupted (Ctrl-C).

Nothing here imports psycopg at module level beyond what every command needs anyway,
and nothing imports Alembic: ``pubctl --help`` stays quick.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pubctl.errors import EXIT_FAILURE, EXIT_USAGE, PubctlError
from pubctl.sources import BY_TABLE

if TYPE_CHECKING:
    import psycopg

EXIT_INTERRUPTED = 130
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Settings:
    """Options shared by every command."""

    url: str = ""
    debug: bool = False
    app_schema: str | None = None
    # Where the URL came from ("option", "PUBCTL_DATABASE_URL", "DATABASE_URL", "libpq").
    url_source: str = "libpq"
    app_schema_given: bool = False

    def describe(self) -> str:
        """The database as ``user@host:port/db`` (never a password)."""
        from pubctl import db

        return db.describe(self.url)


def settings(ctx: click.Context) -> Settings:
    """The shared settings of this invocation."""
    found = ctx.find_object(Settings)
    if found is None:  # a command invoked without the group (tests)
        found = ctx.ensure_object(Settings)
    return found


def _check_url(value: str) -> str:
    from pubctl import db

    return db.validate_url(value)


def _set_url(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    try:
        url = _check_url(value)
    except PubctlError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    current = settings(ctx)
    current.url = url
    source = ctx.get_parameter_source(param.name or "")
    if source == click.core.ParameterSource.ENVIRONMENT:
        current.url_source = (
            "PUBCTL_DATABASE_URL" if os.environ.get("PUBCTL_DATABASE_URL") else "DATABASE_URL"
        )
    else:
        current.url_source = "option"


def _set_app_schema(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    current = settings(ctx)
    current.app_schema = value
    source = ctx.get_parameter_source(param.name or "")
    current.app_schema_given = current.app_schema_given or (
        source == click.core.ParameterSource.COMMANDLINE
    )


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        settings(ctx).debug = True


def _global_options(with_env: bool, app_schema: bool = True) -> list[Callable[[F], F]]:
    """The global options; after a command name (``with_env`` False) ``--app-schema`` is
    shown only for the commands that take it (``app_schema``): the others keep it
    hidden, and refuse it with a usage error that says why."""
    env = with_env
    return [
        click.option(
            "--database-url",
            envvar=["PUBCTL_DATABASE_URL", "DATABASE_URL"] if env else None,
            show_envvar=env,
            callback=_set_url,
            expose_value=False,
            is_eager=True,
            metavar="URL",
            help="libpq URL or conninfo of the database; without it, the PG* environment."
            if env
            else "As before the command name.",
        ),
        click.option(
            "--app-schema",
            envvar="PUBCTL_APP_SCHEMA" if env else None,
            show_envvar=env,
            callback=_set_app_schema,
            expose_value=False,
            metavar="SCHEMA",
            hidden=not app_schema,
            help="Schema of study_topic and study_question, chosen at the first migrate "
            "[default: public]"
            + (
                "; other commands use the one recorded then." if env else " (or PUBCTL_APP_SCHEMA)."
            ),
        ),
        click.option(
            "--debug",
            is_flag=True,
            envvar="PUBCTL_DEBUG" if env else None,
            show_envvar=env,
            callback=_set_debug,
            expose_value=False,
            help="Show tracebacks on errors." if env else "As before the command name.",
        ),
    ]


def group_options(fn: F) -> F:
    """The global options of the group itself (read from the environment too)."""
    for option in reversed(_global_options(with_env=True)):
        fn = option(fn)
    return fn


def command_options(fn: F, *, app_schema: bool = False) -> F:
    """The same options after a command name (the group already read the environment);
    ``--app-schema`` in the help only of the commands that take it (``app_schema``)."""
    for option in reversed(_global_options(with_env=False, app_schema=app_schema)):
        fn = option(fn)
    return fn


def refuse_app_schema(ctx: click.Context, recorded: str | None = None) -> None:
    """For commands that use the schema recorded at install: ``--app-schema`` given on
    the command line is refused, and one from the environment must match the record."""
    current = settings(ctx)
    if current.app_schema is None:
        return
    if current.app_schema_given:
        raise click.UsageError(
            f"--app-schema does not apply to `pubctl {ctx.info_name}`: the application's "
            "schema is the one recorded at the first migrate (pub.settings)",
            ctx=ctx,
        )
    if recorded is not None and current.app_schema != recorded:
        raise PubctlError(
            f"PUBCTL_APP_SCHEMA is {current.app_schema!r}, but pubctl is installed for "
            f"{recorded!r} in {current.describe()}",
            hint="unset PUBCTL_APP_SCHEMA, or point it at the schema pubctl was installed for",
        )


@contextmanager
def connection(
    ctx: click.Context, *, autocommit: bool = True, check_revision: bool = True
) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the database of this invocation, its revision checked."""
    from pubctl import db, revision

    current = settings(ctx)
    with db.connect(current.url, autocommit=autocommit) as conn:
        if check_revision:
            revision.require_current(conn, current.describe())
            if current.app_schema is not None and not current.app_schema_given:
                from pubctl.capture import switch

                refuse_app_schema(ctx, switch(conn).app_schema)
        yield conn


# --- errors: one line each, in one place ----------------------------------------

# What each command needs, named in the one-line error when a privilege is missing,
# as docs/operations.md's table ("Privileges: running without a superuser") has it.
TABLE_GRANTS = {
    "migrate": "TRIGGER",
    "backfill": "SELECT, UPDATE",
    "verify": "SELECT",
    "status": "SELECT",
}
PUB_OWNER = "the owner of schema pub (the role that ran `pubctl migrate`)"
READER = (
    "USAGE on schema pub and EXECUTE on pub.feed and pub.feed_id: "
    "GRANT pubctl_feed_reader TO {role}"
)
PUB_NEEDS = {
    "status": "USAGE on schema pub and SELECT on its tables: run it as " + PUB_OWNER,
    "feed": READER,
    "serve": READER + " (and EXECUTE on pub.health)",
}
SOURCE_TABLES = tuple(BY_TABLE)
_DENIED = re.compile(r"permission denied for (?P<kind>\w+) (?P<name>\S+)")
_OWNER = re.compile(r"must be owner of (?P<kind>\w+) (?P<name>\S+)")


def _pub_needs(command: str, role: str) -> str:
    need = PUB_NEEDS.get(command, "to run as " + PUB_OWNER)
    return f"`pubctl {command}` needs {need.format(role=role)}"


def privilege_hint(message: str, command: str, role: str, app_schema: str | None = None) -> str:
    """What ``command`` needs, named as docs/operations.md's table names it, for what the
    server refused: a grant on one of the application's tables or schema, or the rights on
    schema pub the command needs (never a grant on one of pub's tables by name: pub's
    privileges are pubctl's own, and the application may have tables of the same name)."""
    denied = _DENIED.search(message)
    if denied:
        kind, name = denied.group("kind"), denied.group("name").strip('"')
        if kind == "database":
            return f"GRANT CREATE ON DATABASE {name} TO {role} (migrate creates schema pub)"
        if kind == "schema" and name != "pub":
            return f"GRANT USAGE ON SCHEMA {name} TO {role}"
        if kind == "table" and name in SOURCE_TABLES and command in TABLE_GRANTS:
            qualified = f"{app_schema}.{name}" if app_schema else name
            return f"GRANT {TABLE_GRANTS[command]} ON {qualified} TO {role}"
        return _pub_needs(command, role)
    owner = _OWNER.search(message)
    if owner:
        if (
            owner.group("kind") in ("table", "relation")
            and owner.group("name").strip('"') in SOURCE_TABLES
        ):
            return (
                f"run `pubctl {command}` as the owner of {owner.group('kind')} "
                f"{owner.group('name')} (or a member of that role)"
            )
        return _pub_needs(command, role)
    return 'see docs/operations.md, "Privileges"'


def _role(url: str) -> str:
    from psycopg import conninfo

    try:
        params = conninfo.conninfo_to_dict(url)
    except Exception:
        params = {}
    return str(params.get("user") or os.environ.get("PGUSER") or os.environ.get("USER") or "role")


class Group(click.Group):
    """The ``pubctl`` group: maps every error to one line and an exit code."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        ctx_settings: list[Settings] = []
        try:
            with self.make_context(prog_name or "pubctl", argv) as ctx:
                ctx_settings.append(settings(ctx))
                return self.invoke(ctx)
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
            sys.exit(EXIT_INTERRUPTED)
        except Exception as exc:  # every other failure: one line
            current = ctx_settings[0] if ctx_settings else Settings()
            command = argv_command(argv, self)
            code, line = describe_error(exc, current, command)
            if current.debug:
                traceback.print_exc()
            from pubctl import db

            click.echo(f"pubctl: {db.mask(line, current.url)}", err=True)
            sys.exit(code)


def argv_command(argv: list[str], group: click.Group) -> str:
    """The command name in ``argv`` (for messages), or "pubctl"."""
    return next((a for a in argv if a in group.commands), "pubctl")


def describe_error(exc: BaseException, current: Settings, command: str) -> tuple[int, str]:
    """The exit code and the one line for an error."""
    if isinstance(exc, PubctlError):
        return exc.exit_code, exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    import psycopg

    if isinstance(exc, psycopg.Error):
        diag = exc.diag
        sqlstate = getattr(exc, "sqlstate", None)
        primary = diag.message_primary or " ".join(str(exc).split()) or type(exc).__name__
        line = f"database error{f' [{sqlstate}]' if sqlstate else ''}: {primary}"
        if diag.message_detail:
            line += f" ({' '.join(diag.message_detail.split())})"
        if sqlstate == "42501":
            hint = privilege_hint(primary, command, _role(current.url), current.app_schema)
            line += f" (hint: {hint})"
        elif diag.message_hint:
            line += f" (hint: {' '.join(diag.message_hint.split())})"
        return EXIT_FAILURE, line
    text = " ".join(str(exc).split())
    return (
        EXIT_FAILURE,
        f"unexpected error: {type(exc).__name__}: {text} (run with --debug for details)",
    )
