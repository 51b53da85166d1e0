"""The HTTP API of `isol8 serve`: `create_app` puts the pieces together.

The wire format is the reference server's, so its clients work unchanged: camelCase JSON, errors as
`{"error": "..."}`, SSE frames `data: <json>\\n\\n`, WebSocket text frames and close 1000 "Execution
complete". Where the reference was unsafe this server differs on purpose: `Bearer` tokens only,
checked before anything else (Authenticate), a policy over client options (engine/server/policy.py),
long-lived shared engines instead of one per request, sessions per tenant and capped per tenant, and
a run is killed as soon as its client goes away. Bodies are capped (`server.maxBodyBytes`), and the
OpenAPI document says exactly what is accepted and answered, so a fuzzer
(tests/security/test_server_fuzz.py) can hold the server to it.

Where each concern lives, in engine/server/: wire (request and response models), errors (failures as
replies), metrics (Observe, the outermost layer: request metrics and spans; `/metrics`), middleware
(Authenticate, BodyLimit), deps (the caller, the state), streaming (SSE,
WebSocket, the disconnect race), openapi (the tightened document), state (engines, sessions, keys)
and routes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Route

from engine import Isol8Error, __version__
from engine.server.deps import known_query
from engine.server.errors import on_crash, on_error
from engine.server.metrics import Observe, ServerMetrics, add_metrics_route
from engine.server.middleware import PUBLIC, Authenticate, BodyLimit
from engine.server.openapi import TightApi
from engine.server.routes import add_routes
from engine.server.state import ServerSettings, ServerState

if TYPE_CHECKING:
    from engine.mcp.server import McpEndpoint

__all__ = ["ServerSettings", "create_app"]

log = logging.getLogger("isol8.server")


def create_app(settings: ServerSettings) -> FastAPI:
    """The app for one server process. Opening the key store happens here, so a bad `--auth-db`
    fails before the server listens."""
    state = ServerState(settings)
    mcp = _mcp_endpoint(state)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            async with mcp.run() if mcp is not None else contextlib.nullcontext():
                yield
        finally:
            log.info("Shutting down isol8 server...")
            await state.stop()

    app = TightApi(
        title="isol8",
        version=__version__,
        summary="Run untrusted code in hardened Docker containers.",
        lifespan=lifespan,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        dependencies=[Depends(known_query)],
    )
    app.state.server = state
    for exc_type in (HTTPException, RequestValidationError, Isol8Error, ValidationError):
        app.add_exception_handler(exc_type, on_error)
    app.add_exception_handler(Exception, on_crash)
    app.add_middleware(BodyLimit, max_bytes=settings.config.server.max_body_bytes)
    metrics = ServerMetrics(state)
    public = PUBLIC | {"/metrics"} if settings.config.server.metrics_public else PUBLIC
    app.add_middleware(Authenticate, auth=state.auth, public=public, refused=metrics.auth_failures)
    app.add_middleware(Observe, fastapi=app, metrics=metrics)  # added last: the outermost layer
    add_routes(app)
    add_metrics_route(app, metrics, settings.config.server.metrics_public)
    if mcp is not None:  # behind Authenticate and BodyLimit like every route
        app.router.routes.append(Route("/mcp", mcp))
    return app


def _mcp_endpoint(state: ServerState) -> McpEndpoint | None:
    """The MCP endpoint (engine/mcp/server.py), or None without the `mcp` extra."""
    try:
        from engine.mcp.server import McpEndpoint
    except ImportError:
        log.info("MCP endpoint off: install the `mcp` extra (pip install 'isol8[mcp]') to serve /mcp")
        return None
    return McpEndpoint(state)
