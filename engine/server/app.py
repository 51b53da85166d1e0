"""The HTTP API of `isol8 serve`: routes, wire models, error bodies, SSE and WebSocket streaming.

The wire format is the reference server's, so its clients work unchanged: camelCase JSON, errors as
`{"error": "..."}`, SSE frames `data: <json>\\n\\n`, WebSocket text frames and close 1000 "Execution
complete". Where the reference was unsafe this server differs on purpose: `Bearer` tokens only,
checked before anything else (Authenticate), a policy over client options (engine/server/policy.py),
long-lived shared engines instead of one per request, sessions per tenant and capped per tenant, and
a run is killed as soon as its client goes away. Bodies are capped (`server.maxBodyBytes`), and the
OpenAPI document says exactly what is accepted and answered, so a fuzzer
(tests/security/test_server_fuzz.py) can hold the server to it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self, TypeVar

from fastapi import Depends, FastAPI, Query, Request, Security, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import (
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import DockerIsol8, ExecutionRequest, ExecutionResult, Isol8Error, PoolState, StreamEvent, __version__
from engine.config import MAX_KEY_TTL_MS, Isol8Config
from engine.errors import ERROR_CODE_HEADER, AuthError, Forbidden, SandboxError
from engine.models import FileBytes, Model
from engine.runtimes import RUNTIME_NAMES
from engine.server.auth import (
    DEFAULT_TENANT,
    ApiKeyInfo,
    Authenticator,
    CreatedKey,
    KeyStore,
    Principal,
    open_store,
)
from engine.server.engines import SharedEngines
from engine.server.policy import MINIMUMS, ClientOptions, Plan, Policy
from engine.server.sessions import SessionInfo, SessionRegistry

log = logging.getLogger("isol8.server")
T = TypeVar("T")

NAME = r"^[A-Za-z0-9_.:@+=~-]{1,128}$"
"""Session ids and tenant ids: free-form like the reference's, but safe in a URL path and a log line."""
KEY_PURGE_EVERY_S = 3600.0


# --- wire models --------------------------------------------------------------------------------------
SURROGATE = re.compile("[\ud800-\udfff]")


def _not_unicode(value: object, where: str = "") -> str | None:
    """The JSON path of the first string (or key) in `value` that cannot be encoded as UTF-8, if any.

    JSON may spell lone surrogates (`"\\ud800"`); Python decodes them into strings that every later
    step (the agent's framing, files, the reply) fails to encode.
    """
    if isinstance(value, str):
        if SURROGATE.search(value):  # a search, not an encode: no copy of a 64 MiB stdin
            return where or "body"
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            found = _not_unicode(key, path) or _not_unicode(item, path)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _not_unicode(item, f"{where}[{index}]")
            if found:
                return found
    return None


class TextBody(Model):
    """A JSON body read exactly as its schema says.

    Strings must be valid Unicode. Types are strict: pydantic's lax mode would take `true` for 1, `0`
    for false and `"5"` for 5, so the OpenAPI document would promise refusals the server does not
    make; numbers are read as JSON Schema reads them (`437.0` is an integer). The body is validated
    once, strictly (the wrap validator hands it to a strict validation and stands aside there), and
    any error becomes the usual one line.
    """

    @model_validator(mode="wrap")
    @classmethod
    def _strictly(cls, data: Any, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo) -> Self:
        if not isinstance(data, dict) or (info.context or {}).get(STRICT_PASS):
            return handler(data)
        where = _not_unicode(data)
        if where is not None:  # the path may hold the surrogate itself: spelled out, not encoded
            where = where.encode("utf-8", "backslashreplace").decode()
            raise ValueError(f"{where}: not valid Unicode (a lone surrogate); send UTF-8 text, binary data as base64")
        try:
            return cls.model_validate(_whole_numbers(data), strict=True, context={STRICT_PASS: True})
        except ValidationError as exc:
            errors = [{**error, "loc": _in_body(data, error["loc"], error["type"])} for error in exc.errors()]
            raise ValueError(describe_validation(errors)) from None


STRICT_PASS = "isol8.strict"


def _whole_numbers(value: Any) -> Any:
    """`value` with integral floats as ints: a float field takes an int, and an int field an integral
    float, as JSON Schema's `integer` does."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


def _in_body(data: Any, loc: tuple[int | str, ...], kind: str) -> tuple[int | str, ...]:
    """`loc` up to what the client sent: pydantic appends the union member it tried (`stdin.str`)."""
    kept: list[int | str] = []
    node = data
    for index, part in enumerate(loc):
        if isinstance(node, dict) and (part in node or (kind == "missing" and index == len(loc) - 1)):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            break
        kept.append(part)
    return tuple(kept)


class ExecuteBody(TextBody):
    """`POST /execute` and `/execute/stream`: run `request`, in session `sessionId` if given."""

    request: ExecutionRequest
    options: ClientOptions | None = None
    session_id: str | None = Field(default=None, pattern=NAME)

    @field_validator("session_id", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value  # reference clients send "" for "no session"; `false` is wrong


class WsExecute(ExecuteBody):
    """The WebSocket's first message; unlike the reference's client, ours sends `sessionId` too."""

    type: Literal["execute"]


BASE64 = WithJsonSchema({"type": "string", "format": "byte", "contentEncoding": "base64"})
"""How FileBytes travel, for the OpenAPI document (pydantic would say raw octets)."""


class FileUpload(TextBody):
    session_id: str = Field(pattern=NAME)
    path: str
    content: Annotated[FileBytes, BASE64]

    @field_validator("content", mode="before")
    @classmethod
    def _base64(cls, value: object) -> object:
        """Decoded here, so any base64 error (bad padding, stray or non-ASCII characters) is one line."""
        if not isinstance(value, str):
            return value
        try:
            return base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise ValueError(f"content: not valid base64 ({exc}); send the bytes base64-encoded") from None


class FileContent(Model):
    content: Annotated[FileBytes, BASE64]


class ErrorBody(Model):
    error: str


class OkBody(Model):
    ok: bool = True


class Health(Model):
    """`GET /health`. Without a valid key only `status` and `version`; with one, also the pool and the
    number of sessions (how busy the server is is not for anyone who can reach the port)."""

    status: Literal["ok"] = "ok"
    version: str
    pool: list[PoolState] | None = Field(default=None, description="Warm containers per image (needs a key)")
    sessions: int | None = Field(default=None, description="Sessions on this server, all tenants (needs a key)")


class SessionList(Model):
    sessions: list[SessionInfo]


class KeyRequest(TextBody):
    """`POST /auth/login` (and the base of `/auth/keys`); `ttlMs` defaults to `server.keyTtlMs` and is
    capped at ten years, past which the store's integers and dates overflow."""

    name: str | None = Field(default=None, max_length=200)
    tenant_id: str = Field(default=DEFAULT_TENANT, pattern=NAME)
    ttl_ms: int | None = Field(default=None, gt=0, le=MAX_KEY_TTL_MS)


class NewKey(KeyRequest):
    """`POST /auth/keys`: `name` is required. The route checks it (the reference's exact "name is
    required" for a missing, empty or blank name); the schema says so for clients and fuzzers."""

    model_config = ConfigDict(json_schema_extra={"required": ["name"]})

    name: Annotated[
        str | None, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"\S"})
    ] = Field(default=None, max_length=200)


class KeyList(Model):
    keys: list[ApiKeyInfo]


class Revoked(Model):
    ok: bool = True
    id: str


class LoginReply(Model):
    token: str
    expires_at: str | None = None
    key_id: str


class CleanupCount(Model):
    removed: int = 0
    failed: int = 0
    errors: list[str] = Field(default_factory=list)


class CleanupReply(Model):
    ok: bool = True
    sessions: CleanupCount
    containers: CleanupCount


# --- server state ---------------------------------------------------------------------------------------
@dataclass
class ServerSettings:
    config: Isol8Config
    master_key: str
    auth_db: str | None = None  # overrides the config's `server.authDb`


class ServerState:
    """Everything one server process owns: its engines, sessions, key store and background tasks."""

    def __init__(self, settings: ServerSettings) -> None:
        config = settings.config
        self.config = config
        self.policy = Policy(config)
        self.engines = SharedEngines(config.max_concurrent)
        server = config.server
        self.sessions = SessionRegistry(
            server.max_sessions, server.max_sessions_per_tenant, config.cleanup.max_container_age_ms
        )
        connection = settings.auth_db or config.server.auth_db
        self.store: KeyStore | None = open_store(connection) if connection else None
        self.auth = Authenticator(settings.master_key, self.store)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        # The engine for requests that bring no options: built now, so the first request finds it
        # (with the config's `prewarm` runtimes already warm).
        await self.engines.warm(self.config.engine_options())
        if self.config.cleanup.auto_prune:
            self._tasks.append(asyncio.create_task(self.sessions.prune_forever()))
        if self.store is not None:
            self._tasks.append(asyncio.create_task(self._purge_keys_forever()))

    async def stop(self) -> None:
        """Stop every container this server created; the images stay (the next start needs them)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sessions.stop_all()
        await self.engines.stop()
        if self.store is not None:
            self.store.close()

    async def _purge_keys_forever(self) -> None:
        assert self.store is not None
        while True:
            await asyncio.sleep(KEY_PURGE_EVERY_S)
            try:
                await asyncio.to_thread(self.store.purge)
            except Exception:
                log.exception("purging expired API keys failed")

    @contextlib.asynccontextmanager
    async def engine_for(self, principal: Principal, session_id: str | None, plan: Plan) -> AsyncIterator[DockerIsol8]:
        """The session's engine (created on first use) or the shared engine for the plan's options."""
        if session_id is None:
            async with self.engines.use(plan.engine_options) as engine:
                yield engine
        else:
            async with self.sessions.use(principal.tenant_id, session_id, plan.session_options()) as session:
                yield session.engine

    def store_or_refuse(self) -> KeyStore:
        if self.store is None:
            raise HTTPException(400, "DB-backed auth is not enabled")
        return self.store


def _state(connection: Request | WebSocket) -> ServerState:
    state: ServerState = connection.app.state.server
    return state


# --- errors ---------------------------------------------------------------------------------------------
def describe_validation(errors: list[Any]) -> str:
    """One line for the first validation error; the engine's own messages stand alone."""
    first = errors[0]
    if first["type"] == "json_invalid":
        return "Invalid JSON body"
    loc = tuple(first["loc"])
    if loc[:1] == ("query",) and loc[1:] in (("sessionId",), ("path",)):
        return "Missing sessionId or path"  # the reference's words for `GET /file` without them
    message = str(first["msg"])
    where = ".".join(str(part) for part in loc if part != "body")
    if loc == ("body",) and first["type"] in ("model_attributes_type", "model_type", "dict_type"):
        return "The body must be a JSON object (Content-Type: application/json)"
    if message.startswith("Value error, "):
        return message.removeprefix("Value error, ")
    if first["type"] == "missing" and not where:
        return "Missing JSON body"
    return f"{where}: {message}" if where else message


def error_reply(exc: Exception) -> tuple[int, str]:
    """The HTTP status and `error` text for an exception a route let through: each Isol8Error class
    names its own status (engine/errors.py)."""
    if isinstance(exc, RequestValidationError | ValidationError):
        return 400, describe_validation(list(exc.errors()))
    if isinstance(exc, Isol8Error):
        return exc.status, str(exc)
    return 500, "Internal server error"


def error_code(exc: Exception) -> str | None:
    """The `Isol8-Error` header's value: the class's wire code, so a remote client raises it too."""
    return exc.code if isinstance(exc, Isol8Error) else None


def _error(status: int, message: str, headers: dict[str, str] | None = None, code: str | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if code is not None:
        headers[ERROR_CODE_HEADER] = code
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    # Messages may quote client input; a lone surrogate in it must not break the reply.
    text = message.encode("utf-8", "backslashreplace").decode()
    return JSONResponse({"error": text}, status_code=status, headers=headers or None)


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, HTTPException):  # also BodyTooLarge
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed_methods(request)}
        return _error(exc.status_code, str(exc.detail), headers)
    status, message = error_reply(exc)
    if status == 500 and not isinstance(exc, SandboxError):
        log.error("unexpected error", exc_info=exc)
    return _error(status, message, code=error_code(exc))


def _allowed_methods(request: Request) -> str:
    """Every method of every route at this path: Starlette's 405 names only the first route's."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "type": "http"})
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


async def _on_crash(_: Request, exc: Exception) -> JSONResponse:
    """Anything no handler knows: still a JSON body (uvicorn logs the traceback once this is sent)."""
    return _error(500, "Internal server error")


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
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


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
            await _error(413, self.message, {"Connection": "close"})(scope, receive, send)
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
            await _error(413, self.message, {"Connection": "close"})(scope, receive, send)


# --- authentication ---------------------------------------------------------------------------------------
PRINCIPAL = "isol8.principal"
"""The scope key where Authenticate leaves the caller (a Principal, or None on a public path)."""
PUBLIC = frozenset({"/health", "/openapi.json", "/docs"})
"""Paths a GET may reach without a key: the liveness check, and the description of the API, which is
the same for everyone and holds no data (clients and fuzzers read the contract there)."""


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class Authenticate:
    """Authenticates every HTTP and WebSocket request from its headers, before anything else sees it.

    The outermost layer, so a caller without a valid key gets 401 or 403 whatever it sends: never an
    answer about its body, query, size, path or method that would show how the server parses and
    routes. Only the GETs of PUBLIC pass without a key (one with a valid key is still its caller's:
    `/health` tells it more). A WebSocket is refused with the same JSON body before the upgrade. The
    caller is left in the scope for the `caller` dependency: one check per request.
    """

    def __init__(self, app: ASGIApp, auth: Authenticator) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        public = scope["type"] == "http" and scope["method"] == "GET" and scope["path"] in PUBLIC
        try:
            scope[PRINCIPAL] = await self.auth.authenticate(_header(scope, b"authorization"))
        except Exception as exc:
            if public:  # the key only adds detail here; a bad one, or a failing key store, costs it
                scope[PRINCIPAL] = None
            else:
                await self._refuse(scope, receive, send, exc)
                return
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
        await _error(status, message, code=error_code(exc))(scope, receive, send)


# --- dependencies -----------------------------------------------------------------------------------------
async def known_query(connection: HTTPConnection) -> None:
    """Refuse a query parameter the route does not take, as unknown body keys are refused: a typo such as
    `GET /auth/keys?tenant=x` would otherwise list every tenant's keys instead of one tenant's."""
    if connection.scope["type"] != "http" or not connection.query_params:
        return
    path = getattr(connection.scope.get("route"), "path_format", "")
    operation = connection.app.openapi()["paths"].get(path, {}).get(connection.scope["method"].lower(), {})
    names = [param["name"] for param in operation.get("parameters", []) if param["in"] == "query"]
    unknown = next((name for name in connection.query_params if name not in names), None)
    if unknown is not None:
        taken = ", ".join(names) or "none"
        raise HTTPException(400, f'Unknown query parameter "{unknown}" (this route takes: {taken})')


_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`")


def principal_of(connection: HTTPConnection) -> Principal | None:
    """The caller Authenticate found; None on a public path reached without a valid key."""
    principal: Principal | None = connection.scope.get(PRINCIPAL)
    return principal


async def caller(
    connection: HTTPConnection, _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None
) -> Principal:
    """The authenticated caller (`Security` documents the scheme in the OpenAPI document)."""
    principal = principal_of(connection)
    if principal is None:  # a route that needs a key on a public path: refuse, never serve
        raise AuthError("Missing Authorization header")
    return principal


Caller = Annotated[Principal, Depends(caller)]


async def master(principal: Caller) -> Principal:
    if not principal.is_master:
        raise Forbidden("Master key required for this operation")
    return principal


Master = Annotated[Principal, Depends(master)]


# --- streaming --------------------------------------------------------------------------------------------
async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> tuple[bool, T | None]:
    """Run `work`, cancelling it if the client goes away first: (finished, result)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_until_disconnect(request.receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return False, None
    return True, task.result()


def sse_frame(payload: str) -> bytes:
    return f"data: {payload}\n\n".encode()


class EventStream(Response):
    """`text/event-stream` of StreamEvents, one `data: <json>\\n\\n` frame each.

    It listens for the client's disconnect itself instead of relying on a failed write: a program
    that prints nothing for a minute would otherwise keep running for a client long gone.
    """

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[StreamEvent], resources: contextlib.AsyncExitStack) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"})
        self._events = events
        self._resources = resources

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self._resources:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            pump = asyncio.ensure_future(self._pump(send))
            gone = asyncio.ensure_future(_until_disconnect(receive))
            try:
                await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                pump.cancel()  # no-op when it finished; else the engine kills the run
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await pump

    async def _pump(self, send: Send) -> None:
        try:
            async with contextlib.aclosing(self._events) as events:
                async for event in events:
                    await send({"type": "http.response.body", "body": sse_frame(event.to_json()), "more_body": True})
        except OSError:  # the client went away (servers on ASGI 2.4 say so by failing the write)
            return
        except Exception as exc:  # after the 200 went out, an error can only travel in-band
            status, message = error_reply(exc)
            if status == 500 and not isinstance(exc, SandboxError):
                log.error("stream failed", exc_info=exc)
            error = json.dumps({"type": "error", "data": message})
            await send({"type": "http.response.body", "body": sse_frame(error), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _ws_execute(websocket: WebSocket, state: ServerState, principal: Principal, message: Any) -> bool:
    """Run one execution over the socket; False if the client left (the run was killed)."""
    try:
        body = WsExecute.model_validate(message)
        plan = state.policy.plan(body.request, body.options)
        async with state.engine_for(principal, body.session_id, plan) as engine:
            return await _ws_pump(websocket, engine.execute_stream(plan.request))
    except Exception as exc:
        status, text = error_reply(exc)
        if status == 500 and not isinstance(exc, SandboxError):
            log.error("websocket execution failed", exc_info=exc)
        try:
            await websocket.send_text(json.dumps({"type": "error", "data": text}))
        except (OSError, RuntimeError, WebSocketDisconnect):
            return False  # the client is gone; nothing to close
        return True


async def _ws_pump(websocket: WebSocket, events: AsyncIterator[StreamEvent]) -> bool:
    async def pump() -> None:
        async with contextlib.aclosing(events) as stream:
            async for event in stream:
                await websocket.send_text(event.to_json())

    async def watch() -> None:
        # Other client messages during a run (`stdin`, `signal`) are reserved and ignored.
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    sender, watcher = asyncio.ensure_future(pump()), asyncio.ensure_future(watch())
    try:
        await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not sender.done():
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
    if sender.cancelled():
        return False
    sender.result()
    return True


# --- the app ----------------------------------------------------------------------------------------------
ERROR_TEXTS: dict[int, str] = {
    400: "Invalid body or engine error",
    401: "Missing or malformed Authorization header",
    403: "Invalid API key, or options the server's policy refuses",
    404: "Session, file or key not found",
    413: "Request body larger than server.maxBodyBytes, or files read back over defaults.maxFileSize",
    429: "Too many sessions (server.maxSessions or server.maxSessionsPerTenant)",
    500: "The sandbox failed (a real internal failure, reported as JSON)",
    503: "Docker is unavailable or the images are missing",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error replies a route can give, each `{"error": "..."}`; 400, 401 and 403 always."""
    return {code: {"model": ErrorBody, "description": ERROR_TEXTS[code]} for code in sorted({400, 401, 403, *codes})}


ERRORS = _errors()
RUNS = _errors(413, 429, 500, 503)
"""An execution: a new session may be one too many; the sandbox or Docker may fail."""


def _tighten(document: dict[str, Any]) -> dict[str, Any]:
    """What the models' own schemas cannot say, added to the OpenAPI document.

    FastAPI documents a 422 reply this server never gives (validation errors are 400 `{"error"}`), and
    ExecutionRequest's validators (exactly one of code and cmd, a known runtime, a size format) are
    invisible in its schema. A client or fuzzer reading the document should see the real contract.
    """
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    body = schemas.get("ExecuteBody")
    if body is not None:  # reference clients send "" for "no session"
        _set(body["properties"]["sessionId"], "string", pattern=NAME.replace("{1,128}", "{0,128}"))
    request = schemas.get("ExecutionRequest")
    if request is not None:
        properties = request["properties"]
        properties["runtime"]["enum"] = list(RUNTIME_NAMES)
        request["oneOf"] = [{"required": [name], "properties": {name: {"type": "string"}}} for name in ("code", "cmd")]
        properties["files"]["propertyNames"] = {"pattern": FILE_PATH_PATTERN}
        properties["outputPaths"]["items"]["pattern"] = FILE_PATH_PATTERN
        _set(properties["fileExtension"], "string", pattern=r"^\.?[A-Za-z0-9]+$")
    upload = schemas.get("FileUpload")
    if upload is not None:
        upload["properties"]["path"]["pattern"] = FILE_PATH_PATTERN
    for param in document.get("paths", {}).get("/file", {}).get("get", {}).get("parameters", []):
        if param["name"] == "path":
            param["schema"]["pattern"] = FILE_PATH_PATTERN
    for name in ("ExecutionRequest", "ClientOptions"):
        properties = schemas.get(name, {}).get("properties", {})
        _set(properties.get("memoryLimit"), "string", pattern=MEMORY_PATTERN)
        for size in ("sandboxSize", "tmpSize"):
            _set(properties.get(size), "string", pattern=SIZE_PATTERN)
        for variables in ("env", "secrets"):  # names: not empty, no `=`; no NUL anywhere
            _set(properties.get(variables), "object", propertyNames={"pattern": "^[^=\u0000]+$"})
            _set((properties.get(variables) or {}).get("additionalProperties"), "string", pattern="^[^\u0000]*$")
        for json_name, _, minimum in MINIMUMS:
            if not isinstance(minimum, str):
                _set(properties.get(json_name), "number" if json_name == "cpuLimit" else "integer", minimum=minimum)
    return document


FILE_PATH_PATTERN = r"^/(sandbox|tmp)(/([^/\u0000.][^/\u0000]*|\.[^/\u0000.][^/\u0000]*|\.\.[^/\u0000]+))+$"
"""Paths engine.models.sandbox_path accepts (a subset: no `.` segments), as a JSON-schema pattern."""
SIZE_PATTERN = r"^\s*0*[1-9]\d*(\.\d+)?\s*[kmgtKMGT]?[bB]?\s*$"
"""Sizes parse_size accepts (a subset: no `0.5k`), as a JSON-schema pattern."""
MEMORY_PATTERN = r"^\s*0*([1-9]\d{2,}|[2-9]\d|1[6-9])(\.\d+)?\s*[mM][bB]?\s*$|^\s*0*[1-9]\d*(\.\d+)?\s*[gG][bB]?\s*$"
"""Memory limits of at least policy.MINIMUMS' 16m, spelled in m or g (a subset of what is accepted)."""


def _set(prop: dict[str, Any] | None, kind: str, **keywords: Any) -> None:
    """Add `keywords` to the `kind` variant of an optional property (`anyOf: [{type: kind}, null]`)."""
    for variant in (prop or {}).get("anyOf", [prop or {}]):
        if variant.get("type") == kind:
            variant.update(keywords)


def create_app(settings: ServerSettings) -> FastAPI:
    """The app for one server process. Opening the key store happens here, so a bad `--auth-db`
    fails before the server listens."""
    state = ServerState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            log.info("Shutting down isol8 server...")
            await state.stop()

    app = FastAPI(
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
        app.add_exception_handler(exc_type, _on_error)
    app.add_exception_handler(Exception, _on_crash)
    app.add_middleware(BodyLimit, max_bytes=settings.config.server.max_body_bytes)
    app.add_middleware(Authenticate, auth=state.auth)  # added last: the outermost layer
    _routes(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
                openapi_version=app.openapi_version,
            )
            app.openapi_schema = _tighten(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _routes(app: FastAPI) -> None:
    @app.get("/health", tags=["server"], response_model_exclude_none=True)
    async def health(request: Request) -> Health:
        """No key needed: for load balancers and `RemoteIsol8.start()`. Without a valid key the reply
        is only `status` and `version`; with one it also has `pool` and `sessions`."""
        state = _state(request)
        if principal_of(request) is None:
            return Health(version=__version__)
        pool: dict[str, PoolState] = {}
        for item in (*state.engines.pool_state(), *state.sessions.pool_state()):
            total = pool.setdefault(item.image, PoolState(image=item.image))
            total.ready, total.busy, total.starting = (
                total.ready + item.ready,
                total.busy + item.busy,
                total.starting + item.starting,
            )
        ordered = sorted(pool.values(), key=lambda s: s.image)
        return Health(version=__version__, pool=ordered, sessions=len(state.sessions))

    @app.post("/execute", tags=["execute"], response_model=ExecutionResult, responses=RUNS)
    async def execute(body: ExecuteBody, request: Request, principal: Caller) -> Response:
        """Run to completion. A client that disconnects first kills the run."""
        state = _state(request)
        plan = state.policy.plan(body.request, body.options)

        async def work() -> ExecutionResult:
            async with state.engine_for(principal, body.session_id, plan) as engine:
                return await engine.execute(plan.request)

        finished, result = await _unless_disconnected(request, work())
        if not finished or result is None:
            return Response(status_code=499)  # nobody is listening
        return Response(result.to_json(), media_type="application/json")

    @app.post(
        "/execute/stream",
        tags=["execute"],
        responses={**RUNS, 200: {"content": {"text/event-stream": {}}, "description": "data: <StreamEvent>"}},
    )
    async def execute_stream(body: ExecuteBody, request: Request, principal: Caller) -> Response:
        """Server-sent events, one StreamEvent per frame, ending with `exit`. Refusals come before the
        stream as HTTP errors; errors after it started come in-band as an `error` event."""
        state = _state(request)
        plan = state.policy.plan(body.request, body.options)
        resources = contextlib.AsyncExitStack()
        # Waiting for a slot watches the client too: one that leaves while queued never starts a run.
        entered, engine = await _unless_disconnected(
            request, resources.enter_async_context(state.engine_for(principal, body.session_id, plan))
        )
        if not entered or engine is None:
            await resources.aclose()
            return Response(status_code=499)
        return EventStream(engine.execute_stream(plan.request), resources)

    @app.websocket("/execute/ws")
    async def execute_ws(websocket: WebSocket) -> None:
        """First message `{type: "execute", request, options?, sessionId?}`; StreamEvents back; closed
        with 1000 "Execution complete" after the run (also after an error)."""
        state = _state(websocket)
        principal = await caller(websocket)  # Authenticate refused a bad key before the upgrade
        await websocket.accept()
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                text = (message.get("bytes") or b"").decode(errors="replace")
            try:
                data = json.loads(text)
            except ValueError:
                await websocket.send_text(json.dumps({"type": "error", "data": "Invalid JSON message"}))
                await websocket.close(1003, "Invalid JSON")
                return
            kind = data.get("type") if isinstance(data, dict) else None
            if kind in ("stdin", "signal"):
                continue
            if kind != "execute":
                await websocket.send_text(json.dumps({"type": "error", "data": f"Unknown message type: {kind}"}))
                continue
            if await _ws_execute(websocket, state, principal, data):
                with contextlib.suppress(OSError, RuntimeError, WebSocketDisconnect):
                    await websocket.close(1000, "Execution complete")
            return

    @app.post("/file", tags=["sessions"], responses=_errors(404, 413, 500, 503))
    async def put_file(body: FileUpload, request: Request, principal: Caller) -> OkBody:
        """Write a file (base64 `content`) into an existing session."""
        async with _state(request).sessions.use(principal.tenant_id, body.session_id) as session:
            await session.engine.put_file(body.path, body.content)
        return OkBody()

    @app.get("/file", tags=["sessions"], responses=_errors(404, 413, 500, 503))
    async def get_file(
        request: Request,
        principal: Caller,
        session_id: Annotated[str, Query(alias="sessionId", min_length=1)],
        path: Annotated[str, Query(min_length=1)],
    ) -> FileContent:
        """Read a file of an existing session, as base64 `content`."""
        async with _state(request).sessions.use(principal.tenant_id, session_id) as session:
            data = await session.engine.get_file(path)
        return FileContent(content=data)

    @app.get("/sessions", tags=["sessions"], responses=ERRORS)
    async def list_sessions(request: Request, principal: Caller) -> SessionList:
        """The caller's tenant's sessions."""
        return SessionList(sessions=_state(request).sessions.list_for(principal.tenant_id))

    @app.delete("/session/{session_id}", tags=["sessions"], responses=ERRORS)
    async def delete_session(session_id: str, request: Request, principal: Caller) -> OkBody:
        """Stop the session and remove its container; idempotent."""
        await _state(request).sessions.delete(principal.tenant_id, session_id)
        return OkBody()

    @app.post("/cleanup", tags=["server"], responses=_errors(413))
    async def cleanup(request: Request, _: Master) -> CleanupReply:
        """Master key only: stop every session and every container this server runs. Images stay:
        body `{"images": true}` is refused (the server needs them; use `isol8 cleanup --images`)."""
        try:
            data = await request.json()
        except ValueError:
            data = {}
        if isinstance(data, dict) and data.get("images") is True:
            raise HTTPException(
                400,
                "Removing images is not available over the API (the server needs them); "
                "run `isol8 cleanup --images` on the host",
            )
        state = _state(request)
        removed, errors = await state.sessions.stop_all()
        containers = await state.engines.remove_containers()
        return CleanupReply(
            sessions=CleanupCount(removed=removed, failed=len(errors), errors=errors),
            containers=CleanupCount(removed=containers),
        )

    @app.post("/auth/keys", tags=["auth"], status_code=201, responses=_errors(413))
    async def create_key(body: NewKey, request: Request, _: Master) -> CreatedKey:
        """Master key only. The plaintext `key` is in this reply and nowhere else, ever."""
        state = _state(request)
        store = state.store_or_refuse()
        if not body.name or not body.name.strip():
            raise HTTPException(400, "name is required")
        ttl = body.ttl_ms or state.config.server.key_ttl_ms
        return await asyncio.to_thread(store.create_key, body.name.strip(), body.tenant_id, ttl)

    @app.get("/auth/keys", tags=["auth"], responses=ERRORS)
    async def list_keys(
        request: Request, _: Master, tenant_id: Annotated[str | None, Query(alias="tenantId")] = None
    ) -> KeyList:
        """Master key only; newest first; never a key or its hash."""
        store = _state(request).store_or_refuse()
        return KeyList(keys=await asyncio.to_thread(store.list_keys, tenant_id))

    @app.delete("/auth/keys/{key_id}", tags=["auth"], responses=_errors(404))
    async def revoke_key(key_id: str, request: Request, _: Master) -> Revoked:
        """Master key only; the key stops working at once."""
        store = _state(request).store_or_refuse()
        if not await asyncio.to_thread(store.revoke_key, key_id):
            raise HTTPException(404, "Key not found")
        return Revoked(id=key_id)

    @app.post("/auth/login", tags=["auth"], responses=_errors(413))
    async def login(request: Request, _: Master) -> LoginReply:
        """Master key only: a new short-lived key for a CLI or a user (body optional)."""
        state = _state(request)
        store = state.store_or_refuse()
        try:
            data = await request.json()
        except ValueError:
            data = {}
        body = KeyRequest.model_validate(data if isinstance(data, dict) else {})
        stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        ttl = body.ttl_ms or state.config.server.key_ttl_ms
        created = await asyncio.to_thread(store.create_key, body.name or f"login-{stamp}", body.tenant_id, ttl)
        return LoginReply(token=created.key, expires_at=created.expires_at, key_id=created.id)
