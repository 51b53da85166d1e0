"""`isol8 mcp`: the MCP server (engine/mcp/) over stdio, for desktop clients and editors.

One engine state for the process's life (its warm pool, its sessions), the config's `server` policy
over every tool argument, as `isol8 serve` applies it to REST clients. stdout carries the protocol
and nothing else; messages go to stderr. When the client closes stdin (or sends SIGTERM), every run
is killed and every container this process started is removed before it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal

import click

from engine import readiness
from engine.config import Isol8Config, load_config
from engine.errors import Isol8Error
from engine.runtimes import RUNTIMES
from isol8_tui.commands.setup import build_progress
from isol8_tui.output import info, setup_logging, user_errors


async def _serve(config: Isol8Config) -> None:
    """Serve until the client closes stdin or SIGTERM comes, then stop every container. A signal
    during the cleanup cannot cut it short: it only cancels the serving task, which is done by then."""
    from engine.mcp.server import build_server
    from engine.server.state import ServerSettings, ServerState

    # The stdio server has no listener and so no keys: its one caller is the local user. The master key
    # is a random value nobody holds, and no key store is opened.
    local = config.model_copy(update={"server": config.server.model_copy(update={"auth_db": None})})
    state = ServerState(ServerSettings(local, master_key=secrets.token_urlsafe(32)))
    server = build_server(state, "stdio")
    await state.start()
    loop = asyncio.get_running_loop()
    serving = asyncio.ensure_future(server.run_stdio_async())
    loop.add_signal_handler(signal.SIGTERM, serving.cancel)
    info("isol8 MCP server ready on stdio")
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    finally:
        await state.stop()
        loop.remove_signal_handler(signal.SIGTERM)
    info("isol8 MCP server stopped; its containers are removed")


@click.command("mcp")
@click.option("--debug", is_flag=True, help="Log what the engine does to stderr.")
def command(debug: bool) -> None:
    """Serve isol8's MCP tools over stdio (add this command to an MCP client's configuration)."""
    with user_errors():
        try:
            import engine.mcp.server  # noqa: F401 (the optional extra, checked before any work)
        except ImportError:
            raise Isol8Error("`isol8 mcp` needs the MCP SDK: install it with `pip install 'isol8[mcp]'`.") from None
        loaded = load_config()
        setup_logging(debug or loaded.config.debug)
        with build_progress() as progress:
            readiness.prepare(list(RUNTIMES), progress)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(loaded.config))
