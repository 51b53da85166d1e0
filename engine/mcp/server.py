"""The MCP server over a server's state: `isol8 mcp` (stdio) and `/mcp` in `isol8 serve` (streamable HTTP).

Both run the tools of engine/mcp/tools.py over a ServerState, so both apply the same operator policy
(the config's `server` section), engines and session registry as the REST API. Over HTTP the endpoint
sits behind the app's Authenticate layer like every route: the caller is the principal it left in the
request's scope (no second way in), every POST is authenticated on its own, and the transport is
stateless (isol8 sessions are explicit tool arguments, owned by the caller's tenant). A client that
goes away mid-call has its run killed: the call ends with its request. Over stdio the caller is the
local user (the `default` tenant); when the client closes stdin, every run and container goes with
the process.
"""

from __future__ import annotations

import contextlib
import logging
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
from engine.mcp.tools import Toolbox
from engine.server.auth import Principal
from engine.server.middleware import PRINCIPAL
from engine.server.state import ServerState

LOCAL = Principal("master")
"""The caller over stdio: the user who started `isol8 mcp`, in the `default` tenant."""

INSTRUCTIONS = (
    "isol8 runs untrusted code in hardened, disposable Docker containers (no network unless the "
    "operator allows it). run_code and run_command use a fresh sandbox per call; for state that "
    "carries over (files, installed packages) create_session, pass its session_id, and close_session "
    "when done. create_session with stateful keeps variables between run_code calls (a notebook's "
    "kernel; reset_session starts it afresh) and returns images and HTML as results. Files live "
    "under /sandbox."
)


def _annotations(open_world: bool) -> dict[McpTool, ToolAnnotations]:
    """Honest hints: runs may change a session's files and, where the policy allows a network, reach
    the outside world; the file and session reads change nothing."""

    def hints(
        read_only: bool, destructive: bool = False, idempotent: bool = False, world: bool = False
    ) -> ToolAnnotations:
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
        "reset_session": hints(False, destructive=True, idempotent=True),
        "list_sessions": hints(True),
        "write_file": hints(False, destructive=True, idempotent=True),
        "read_file": hints(True),
        "list_files": hints(True),
        "network_log": hints(True),
    }


class Isol8Server(MCPServer[Any]):
    """MCPServer whose tool errors are the bare one line: the SDK would prefix "Error executing tool
    <name>: " and spell a bad argument as pydantic's multi-line report. It leaves the process's
    logging alone: the SDK's constructor would put a rich handler on the root logger (of `isol8
    serve` too), doubling every engine line `--debug` prints."""

    def __init__(self) -> None:
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        super().__init__("isol8", version=__version__, instructions=INSTRUCTIONS)
        root.handlers[:] = handlers
        root.setLevel(level)

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
    server = Isol8Server()
    networks = {config.defaults.network, config.mcp.network, *config.server.allowed_networks}
    annotations = _annotations(open_world=networks != {"none"})
    for name in config.mcp.tools:
        server.add_tool(getattr(toolbox, name), name=name, annotations=annotations[name], structured_output=True)
    return server


def _stdio_caller(_: Context) -> Principal:
    return LOCAL


def _http_caller(ctx: Context) -> Principal:
    """The principal Authenticate found for this call's POST."""
    scope = getattr(ctx.request_context.request, "scope", None)
    principal = scope.get(PRINCIPAL) if scope is not None else None
    if not isinstance(principal, Principal):  # never served without a key: refuse, as a route would
        raise AuthError("Missing Authorization header")
    return principal


class McpEndpoint:
    """The ASGI app mounted at `/mcp`, and its session manager (run it for the app's life).

    Stateless: each POST is one transport, ended when its request ends, so a call whose client has
    gone (the connection dropped mid-run) is cancelled, which kills its run.
    """

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
        await self.manager.handle_request(scope, receive, send)
