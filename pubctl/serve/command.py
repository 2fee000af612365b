"""``pubctl serve``: the click command, the start-up checks and the uvicorn server.

Only click is imported at module level, so that ``pubctl --help`` stays fast; the web
stack is imported when the command runs.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from pubctl.errors import PubctlError

if TYPE_CHECKING:
    from pubctl.serve.app import FeedServer, ServeConfig

log = logging.getLogger("pubctl.serve")

DEFAULT_PORT = 8080
GRACEFUL_SHUTDOWN_S = 5
BACKLOG = 4096
READER_GRANTS = (
    "GRANT USAGE ON SCHEMA pub TO <role>; GRANT EXECUTE ON FUNCTION "
    "pub.feed(bigint, integer, text[]), pub.feed_id(), pub.health() TO <role>"
)


def _seconds(_ctx: click.Context, param: click.Parameter, value: float) -> float:
    if math.isnan(value):
        raise click.BadParameter(f"{value!r} is not a number of seconds", param=param)
    return value


def check_database(url: str) -> str:
    """Fail before listening when the database is unreachable, lacks a grant, or is not
    at this pubctl's revision. Returns the head revision."""
    from pubctl import db, revision
    from pubctl.feed import as_feed_reader, check_revision
    from pubctl.queries import query

    where = db.describe(url)
    with db.connect(url, autocommit=True) as conn:
        # The version table, when the role may read it (an operator's role): it names a
        # database from another pubctl even where pub.health does not exist.
        check_revision(conn, where)
        with as_feed_reader(where, READER_GRANTS):
            # pub.health, which a reader may execute.
            row = conn.execute(query("serve_health")).fetchone()
    return revision.check(str(row[0]) if row and row[0] is not None else None, where)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server starts so that a taken port is
    one clear error (and ``--port 0`` picks a free one)."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        raise PubctlError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(config: Any, feed_server: FeedServer, address: str) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, announcing itself once it accepts connections and
        answering held long-polls as soon as it starts to stop."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                click.echo(f"listening on {address}", err=True)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            feed_server.begin_shutdown()
            await super().shutdown(sockets)

    return Server(config)


def run(config: ServeConfig, sock: socket.socket) -> str:
    """Serve until SIGTERM or SIGINT; returns the name of the signal that stopped it."""
    import uvicorn

    from pubctl.serve.app import create_app
    from pubctl.serve.protocol import BoundedHttpToolsProtocol

    app, feed_server = create_app(config)
    uv_config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=BoundedHttpToolsProtocol,
        loop="auto",
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        backlog=BACKLOG,
    )
    server = _server(uv_config, feed_server, _address(sock))
    stopped_by: list[str] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        # uvicorn handles the signal while it runs and raises it again once it has
        # stopped; this handler receives that, so the process exits 0.
        stopped_by.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise PubctlError("the server did not start (see the log above)")
    return stopped_by[0] if stopped_by else "stopped"


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port to listen on (0: any free port, printed at start).",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="File of bearer tokens, one per line (also PUBCTL_FEED_TOKENS, comma-separated).",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Serve without tokens on a non-loopback address.",
)
@click.option(
    "--pool-size",
    type=click.IntRange(1, 1000),
    default=10,
    show_default=True,
    envvar="PUBCTL_SERVE_POOL_SIZE",
    show_envvar=True,
    help="Database connections for requests (the server holds two more: one listens, one "
    "serves /healthz).",
)
@click.option(
    "--pool-timeout",
    type=click.FloatRange(0.01, 60),
    default=5.0,
    show_default=True,
    callback=_seconds,
    help="Seconds a request waits for a free connection before 503.",
)
@click.option(
    "--cache-max-age",
    type=click.IntRange(0, 31_536_000),
    default=0,
    show_default=True,
    metavar="S",
    help="Seconds a CDN or proxy may serve a page (asked without wait) to any viewer: "
    "Cache-Control: public, max-age=S. A shared cache does not check tokens: use it only "
    "behind one that authenticates viewers itself. 0: no answer is public.",
)
@click.pass_context
def serve_cmd(
    ctx: click.Context,
    host: str,
    port: int,
    token_file: Path | None,
    insecure_no_auth: bool,
    pool_size: int,
    pool_timeout: float,
    cache_max_age: int,
) -> None:
    """Serve the feed to viewers over HTTP (GET /published/feed, /healthz, /metrics)."""
    from pubctl.serve import auth
    from pubctl.serve.app import ServeConfig
    from pubctl.shell import refuse_app_schema
    from pubctl.shell import settings as shared_settings

    refuse_app_schema(ctx)
    settings = shared_settings(ctx)
    url = settings.url
    try:
        tokens = auth.load_tokens(token_file, os.environ.get("PUBCTL_FEED_TOKENS"))
    except auth.TokenError as exc:
        raise click.BadParameter(str(exc), param_hint="--token-file / PUBCTL_FEED_TOKENS") from None
    if not tokens and not insecure_no_auth and not auth.is_loopback(host):
        raise click.BadParameter(
            f"{host} is not a loopback address and no token is configured: give "
            "--token-file or PUBCTL_FEED_TOKENS, or --insecure-no-auth to serve openly",
            param_hint="--host",
        )
    logging.basicConfig(
        level=logging.DEBUG if settings.debug else logging.INFO,
        format="%(asctime)s pubctl serve: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("uvicorn", "psycopg"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    head = check_database(url)
    sock = bind(host, port)
    config = ServeConfig(
        url=url,
        tokens=tokens,
        pool_size=pool_size,
        pool_timeout=pool_timeout,
        head_revision=head,
        cache_max_age=cache_max_age,
    )
    if not tokens:
        log.warning("no token configured: the feed and the metrics are open to every client")
    elif cache_max_age > 0:
        log.warning(
            "--cache-max-age %d: pages say Cache-Control: public, so a shared cache in front "
            "serves them to viewers without their tokens being checked here",
            cache_max_age,
        )
    reason = run(config, sock)
    log.info("stopped (%s)", reason)
