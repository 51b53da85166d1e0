"""The MCP server over a server's state: `isol8 mcp` (stdio) and `/mcp` in `isol8 serve` (streamable HTTP).

Both run the tools of engine/mcp/tools.py over a ServerState, so both apply the same operator policy
(the config's `server` section), engines and session registry as the REST API. Over HTTP the endpoint
sits behind the app's Authenticate layer like every route: the caller is the principal it left in the
request's scope (no second way in), every POST is authenticated on its own, and the transport is
stateless (isol8 sessions are explicit tool arguments, owned by the caller's tenant). A client that
goes away mid-call has its run killed: the endpoint sets the call's `gone` event when the request
ends, whether the reply was sent or the connection dropped. Over stdio the caller is the local user
(the `default` tenant); when the client closes stdin, every run and container goes with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, InputRequiredResult, TextContent, ToolAnnotations
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from engine import __version__
from engine.config import McpTool
from engine.errors import AuthError, one_line
from engine.mcp.tools import Call, Toolbox
from engine.server.auth import Principal
from engine.server.middleware import PRINCIPAL
from engine.server.state import ServerState

log = logging.getLogger("isol8.mcp")

GONE = "isol8.mcp.gone"
"""The scope key of the asyncio.Event set once an HTTP request to `/mcp` has ended."""
LOCAL = Principal("master")
"""The caller over stdio: the user who started `isol8 mcp`, in the `default` tenant."""

INSTRUCTIONS = (
    "isol8 runs untrusted code in hardened, disposable Docker containers (no network unless the "
    "operator allows it). run_code and run_command use a fresh sandbox per call; for state that "
    "carries over (files, installed packages) create_session, pass its session_id, and close_session "
    "when done. Files live under /sandbox."
)


def _annotations(open_world: bool) -> dict[McpTool, ToolAnnotations]:
    """Honest hints: runs may change a session's files and, where the policy allows a network, reach
    the outside world; the file and session reads change nothing."""

    def hints(read_only: bool, destructive: bool = False, idempotent: bool = False, world: bool = False) -> Any:
        return ToolAnnotations(
            read_only_hint=read_only,
            destructive_hint=None if read_only else destructive,
            idempotent_hint=None if read_only else idempotent,
            open_world_hint=world,
        )

    return {
        "run_code": hints(False, destructive=True, world=open_world),
        "run_command": hints(False, destructive=True, world=open_world),
        "create_session": hints(False),
        "close_session": hints(False, destructive=True, idempotent=True),
        "list_sessions": hints(True),
        "write_file": hints(False, destructive=True, idempotent=True),
        "read_file": hints(True),
        "list_files": hints(True),
        "network_log": hints(True),
    }


class Isol8Server(MCPServer[Any]):
    """MCPServer whose tool errors are the bare one line: the SDK would prefix "Error executing tool
    <name>: " and spell a bad argument as pydantic's multi-line report."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError:
            raise  # a bug: the SDK logs it and answers without its details
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, ValidationError):  # the arguments do not match the tool's schema
                message = one_line(cause)
            elif isinstance(cause, ToolError):  # a tool's own failure (engine/mcp/tools.py)
                message = str(cause)
            else:
                message = str(exc)  # e.g. "Unknown tool: ..."
            return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def build_server(state: ServerState, transport: Literal["stdio", "http"]) -> MCPServer[Any]:
    """The MCP server with the tools the config's `mcp.tools` exposes."""
    config = state.config
    toolbox = Toolbox(state, config.mcp, _stdio_caller if transport == "stdio" else _http_caller)
    server = Isol8Server("isol8", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")
    networks = {config.defaults.network, config.mcp.network, *config.server.allowed_networks}
    annotations = _annotations(open_world=networks != {"none"})
    for name in config.mcp.tools:
        server.add_tool(getattr(toolbox, name), name=name, annotations=annotations[name], structured_output=True)
    return server


def _stdio_caller(_: Context) -> Call:
    return Call(LOCAL)


def _http_caller(ctx: Context) -> Call:
    """The principal Authenticate found for this POST, and the event its end sets."""
    request = ctx.request_context.request
    scope = getattr(request, "scope", None)
    principal = scope.get(PRINCIPAL) if scope is not None else None
    if not isinstance(principal, Principal):  # never served without a key: refuse, as a route would
        raise AuthError("Missing Authorization header")
    gone = scope.get(GONE) if scope is not None else None
    return Call(principal, gone if isinstance(gone, asyncio.Event) else None)


class McpEndpoint:
    """The ASGI app mounted at `/mcp`, and its session manager (run it for the app's life)."""

    def __init__(self, state: ServerState) -> None:
        server = build_server(state, "http")
        # Bearer keys (Authenticate) already stop a rebinding page, and a Host allow list would refuse
        # every name an operator serves under.
        server.streamable_http_app(
            stateless_http=True,
            max_request_body_size=state.config.server.max_body_bytes,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self.manager: StreamableHTTPSessionManager = server.session_manager

    def run(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self.manager.run()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()
        scope[GONE] = gone
        try:
            await self.manager.handle_request(scope, receive, send)
        finally:
            gone.set()  # a call still running has nobody left to answer: its run is killed


async def serve_stdio(state: ServerState, on_ready: Callable[[], None] | None = None) -> None:
    """Serve over this process's stdin and stdout until the client closes stdin (or we are cancelled);
    every run and container this server started is gone when this returns."""
    server = build_server(state, "stdio")
    await state.start()
    try:
        if on_ready is not None:
            on_ready()
        await server.run_stdio_async()
    finally:
        await asyncio.shield(_stop(state))


async def _stop(state: ServerState) -> None:
    log.info("Stopping the isol8 MCP server...")
    await state.stop()
