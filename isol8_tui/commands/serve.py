"""`isol8 serve`: the HTTP API (engine/server/) on uvicorn, in this process.

The port comes from `--port`, `$ISOL8_PORT`, `$PORT`, then 3000. The socket is bound here and handed
to uvicorn, so "is the port free?" and "listen" cannot race. Shutdown (Ctrl-C, SIGTERM) stops every
container the server created and keeps the images.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import ClassVar

import click

from engine import __version__, readiness, tracing
from engine.config import load_config
from engine.errors import Isol8Error
from engine.logs import JsonFormatter
from engine.runtimes import RUNTIMES
from isol8_tui.commands.cluster import cluster_flag
from isol8_tui.commands.setup import build_progress
from isol8_tui.output import err, info, setup_logging, user_errors, warn

DEFAULT_PORT = 3000
WS_MAX_BYTES = 64 << 20  # a first WebSocket message carries the code, stdin and files


class _Stop(Exception):
    """SIGTERM, re-raised by uvicorn once it has shut down cleanly."""


def resolve_port(flag: str | None) -> int:
    """`--port`, then `$ISOL8_PORT`, then `$PORT` (empty values skipped), then 3000."""
    env = os.environ
    for source, raw in (("--port", flag), ("ISOL8_PORT", env.get("ISOL8_PORT")), ("PORT", env.get("PORT"))):
        if raw:
            port = _parse_port(raw)
            if port is None:
                err(f"Invalid port from {source}: {raw}. Expected 1-65535.")
                raise SystemExit(1)
            return port
    return DEFAULT_PORT


def _parse_port(raw: str) -> int | None:
    text = raw.strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        return None
    return int(text)


def _bind(host: str, port: int) -> socket.socket | None:
    """A socket bound to (host, port), or None if the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            return None
        raise Isol8Error(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.") from None
    return sock


def _free(host: str) -> socket.socket:
    sock = _bind(host, 0)
    assert sock is not None  # port 0 is never "in use"
    return sock


def _ask(host: str, port: int) -> socket.socket:
    """On a terminal: enter another port, take a free one, or give up."""
    warn(f"Port {port} is already in use.")
    while True:
        choice = click.prompt(
            "Choose: [1] Enter another port  [2] Find an available port  [3] Exit (default: 2)",
            default="2",
            show_default=False,
        ).strip()
        if choice == "2":
            sock = _free(host)
            info(f"Using available port {sock.getsockname()[1]}")
            return sock
        if choice == "3":
            err("Server startup cancelled.")
            raise SystemExit(1)
        if choice != "1":
            err("Invalid selection. Enter 1, 2, or 3.")
            continue
        while True:
            raw = click.prompt("Enter port (1-65535)", default="", show_default=False)
            chosen = _parse_port(raw)
            if chosen is None:
                err(f"Invalid port: {raw}. Expected 1-65535.")
                continue
            bound = _bind(host, chosen)
            if bound is not None:
                return bound
            warn(f"Port {chosen} is already in use.")


def listen(host: str, port: int, say: Callable[[str], None] = warn) -> socket.socket:
    """A socket bound to `port`, else (asked on a terminal, else said with `say`) another one."""
    sock = _bind(host, port)
    if sock is not None:
        return sock
    if sys.stdin.isatty() and sys.stdout.isatty():
        try:
            return _ask(host, port)
        except click.Abort:
            err("Server startup cancelled.")
            raise SystemExit(1) from None
    sock = _free(host)
    say(f"Port {port} is in use. Falling back to available port {sock.getsockname()[1]}.")
    return sock


class _Tagged(logging.Formatter):
    """`[INFO] message`, like every other line the CLI prints."""

    TAGS: ClassVar[dict[str, str]] = {"WARNING": "WARN", "ERROR": "ERR", "CRITICAL": "ERR"}

    def format(self, record: logging.LogRecord) -> str:
        record.tag = self.TAGS.get(record.levelname, record.levelname)
        return super().format(record)


def _server_logging(debug: bool, log_format: str) -> None:
    """Text: `[INFO] ...` lines from the server. JSON: one object per line (engine/logs.py) from every
    isol8 logger, the engine's `execution` events included, and from uvicorn."""
    handler = logging.StreamHandler(sys.stderr)
    level = logging.DEBUG if debug else logging.INFO
    names = ["isol8.server"]
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        names = ["isol8", "uvicorn"]
    else:
        handler.setFormatter(_Tagged("[%(tag)s] %(message)s"))
    for name in names:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stop


@click.command("serve")
@click.option("-p", "--port", "port_flag", metavar="PORT", help="Port (default: $ISOL8_PORT, $PORT, 3000).")
@click.option("-k", "--key", metavar="KEY", help="The master API key (default: $ISOL8_API_KEY).")
@click.option("--auth-db", metavar="PATH|URL", help="Database-backed API keys: a SQLite file or a postgresql:// URL.")
@click.option("--bind", metavar="ADDRESS", help="Address to listen on (default: the config's server.bind, 127.0.0.1).")
@click.option("--cluster", metavar="ADDRESS", help="Run on a Ray cluster (ray://HEAD:10001, HEAD:6379 or auto).")
@click.option("--debug", is_flag=True, help="Log requests and what the engine does to stderr.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per line on stderr (time, level, event, execution id, tenant, session, ...).",
)
@click.option("--update", is_flag=True, help="Accepted for the reference's CLI: this server has no binary to update.")
def command(
    port_flag: str | None,
    key: str | None,
    auth_db: str | None,
    bind: str | None,
    cluster: str | None,
    debug: bool,
    log_format: str,
    update: bool,
) -> None:
    """Serve the HTTP API: execute, stream (SSE and WebSocket), sessions, files, API keys."""
    if update:
        info("This server runs in-process (no standalone binary to download): there is nothing to update.")
    key = key or os.environ.get("ISOL8_API_KEY")
    if not key:
        err("API key required. Use --key or set ISOL8_API_KEY.")
        raise SystemExit(1)
    port = resolve_port(port_flag)
    with user_errors():
        loaded = load_config()
        if log_format == "text":
            setup_logging(debug or loaded.config.debug)
        _server_logging(debug, log_format)
        server_log = logging.getLogger("isol8.server")
        as_json = log_format == "json"  # every line on stderr is then one JSON object: no spinner either
        traces = tracing.configure(loaded.config.server.otlp_endpoint)
        cluster = cluster_flag(cluster) if cluster else loaded.config.server.cluster
        if cluster is None:  # on a cluster, each node has its own images (`isol8 setup` there)
            logged = contextlib.nullcontext(lambda line: server_log.info(line, extra={"event": "image_build"}))
            with logged if as_json else build_progress() as progress:
                readiness.prepare(list(RUNTIMES), progress)
        from engine.server.app import ServerSettings, create_app
        from engine.server.auth import redact

        app = create_app(ServerSettings(loaded.config, key, auth_db, cluster))
        host = bind or loaded.config.server.bind
        sock = listen(host, port, (lambda m: server_log.warning(m, extra={"event": "port"})) if as_json else warn)
    import uvicorn  # here, like the app: other commands should not pay for importing the server stack

    shown = f"[{host}]" if ":" in host else host
    banner = [f"isol8 server v{__version__} listening on http://{shown}:{sock.getsockname()[1]}"]
    banner.append("Auth: Bearer token required")
    if any(getattr(route, "path", None) == "/mcp" for route in app.routes):
        banner.append(f"MCP: http://{shown}:{sock.getsockname()[1]}/mcp (streamable HTTP)")
    if cluster:
        banner.append(f"Cluster: {cluster} (Ray)")
    if auth_db or loaded.config.server.auth_db:
        banner.append(f"Auth DB: {redact(auth_db or loaded.config.server.auth_db or '')}")
    if traces:
        banner.append(f"Traces: OTLP to {redact(traces)}")
    if as_json:
        server_log.info("; ".join(banner), extra={"event": "listening"})
    else:
        info(banner[0])
        for line in banner[1:]:
            click.echo(f"       {line}", err=True)
    config = uvicorn.Config(
        app,
        log_level="info" if debug else "warning",
        access_log=debug,
        log_config=None if log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        lifespan="on",
        ws_max_size=WS_MAX_BYTES,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Stop):
        pass  # uvicorn re-raises the signal after its clean shutdown
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    if not server.started:
        err("The server failed to start; see the messages above.")
        raise SystemExit(1)
    if log_format == "json":
        logging.getLogger("isol8.server").info("Server cleanup complete", extra={"event": "stopped"})
    else:
        info("Server cleanup complete")
