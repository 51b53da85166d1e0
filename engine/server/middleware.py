"""The ASGI layers in front of every route: Authenticate (outermost but for engine/server/metrics.py's
Observe, which only measures), then BodyLimit.

They work on the raw scope, before FastAPI parses anything, so a caller without a key learns nothing
of how the server parses and routes, and a body over the limit is never held in memory.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.errors import AuthError
from engine.server.auth import Authenticator
from engine.server.errors import error_code, error_response

log = logging.getLogger("isol8.server")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


# --- body size ----------------------------------------------------------------------------------------
class BodyTooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the limit. An HTTPException, so FastAPI's body
    reader lets it through and the usual handler turns it into the JSON 413."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message, headers={"Connection": "close"})


def _size_text(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} bytes"


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


class BodyLimit:
    """413 for HTTP bodies over `max_bytes`, without holding more than the limit in memory.

    A declared Content-Length over it is refused before a byte is read (after Authenticate: a caller
    without a key learns nothing of the limit). A chunked or understated body is counted as it streams
    in and cut off once it passes the limit. WebSocket messages have their own cap (uvicorn's
    `ws_max_size`).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = (
            f"Request body too large: this server accepts at most {_size_text(max_bytes)} per request "
            "(server.maxBodyBytes); split big inputs over several requests, e.g. one POST /file per file"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await error_response(413, self.message, {"Connection": "close"})(scope, receive, send)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.message)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:  # raised where no handler caught it (a route reading the body itself)
            if started:
                raise
            await error_response(413, self.message, {"Connection": "close"})(scope, receive, send)


# --- authentication ---------------------------------------------------------------------------------------
PRINCIPAL = "isol8.principal"
"""The scope key where Authenticate leaves the caller (a Principal, or None on a public path)."""
PUBLIC = frozenset({"/health", "/openapi.json", "/docs"})
"""Paths a GET may reach without a key: the liveness check, and the description of the API, which is
the same for everyone and holds no data (clients and fuzzers read the contract there)."""


class Authenticate:
    """Authenticates every HTTP and WebSocket request from its headers, before anything else sees it.

    The outermost layer, so a caller without a valid key gets 401 or 403 whatever it sends: never an
    answer about its body, query, size, path or method that would show how the server parses and
    routes. Only the GETs of PUBLIC pass without a key (one with a valid key is still its caller's:
    `/health` tells it more). A WebSocket is refused with the same JSON body before the upgrade. The
    caller is left in the scope for the `caller` dependency: one check per request.
    """

    def __init__(
        self, app: ASGIApp, auth: Authenticator, public: frozenset[str] = PUBLIC, refused: Counter | None = None
    ) -> None:
        self.app = app
        self.auth = auth
        self.public = public  # PUBLIC, plus `/metrics` with `server.metricsPublic`
        self.refused = refused  # counts refusals by status (engine/server/metrics.py)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        public = scope["type"] == "http" and scope["method"] == "GET" and scope["path"] in self.public
        try:
            scope[PRINCIPAL] = await self.auth.authenticate(_header(scope, b"authorization"))
        except Exception as exc:
            if public:  # the key only adds detail here; a bad one, or a failing key store, costs it
                scope[PRINCIPAL] = None
            else:
                if self.refused is not None and isinstance(exc, AuthError):
                    self.refused.labels(str(exc.status)).inc()
                await self._refuse(scope, receive, send, exc)
                return
        tenant = scope[PRINCIPAL].tenant_id if scope[PRINCIPAL] else "(none)"
        log.debug("[Server] %s %s tenant=%s", scope.get("method", "WEBSOCKET"), scope["path"], tenant)
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
        if isinstance(exc, AuthError):
            status, message = exc.status, str(exc)
        else:  # the key store failed: still a JSON reply, and never a way in
            log.error("authentication failed", exc_info=exc)
            status, message = 500, "Internal server error"
        if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})  # a server without denial responses
            return
        # No `Connection: close`: the reply would be lost to a reset if the unread body arrived after
        # the close. The HTTP server discards what is left of the body; the app never reads it.
        await error_response(status, message, code=error_code(exc))(scope, receive, send)
