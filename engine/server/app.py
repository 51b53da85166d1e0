"""The HTTP API of `isol8 serve`: routes, wire models, error bodies, SSE and WebSocket streaming.

The wire format is the reference server's, so its clients work unchanged: camelCase JSON, errors as
`{"error": "..."}`, SSE frames `data: <json>\\n\\n`, WebSocket text frames and close 1000 "Execution
complete". Where the reference was unsafe this server differs on purpose: `Bearer` tokens only, a
policy over client options (engine/server/policy.py), long-lived shared engines instead of one per
request, sessions per tenant, and a run is killed as soon as its client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, FastAPI, Query, Request, Security, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field, ValidationError, field_validator
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from engine import DockerIsol8, ExecutionRequest, ExecutionResult, Isol8Error, PoolState, StreamEvent, __version__
from engine.config import Isol8Config
from engine.errors import DockerUnavailable, ImageMissing, SandboxError
from engine.models import FileBytes, Model
from engine.server.auth import (
    DEFAULT_TENANT,
    ApiKeyInfo,
    Authenticator,
    AuthError,
    CreatedKey,
    KeyStore,
    Principal,
    open_store,
)
from engine.server.engines import SharedEngines
from engine.server.policy import ClientOptions, Plan, Policy, PolicyError
from engine.server.sessions import SessionInfo, SessionNotFound, SessionRegistry, TooManySessions

log = logging.getLogger("isol8.server")
T = TypeVar("T")

NAME = r"^[A-Za-z0-9_.:@+=~-]{1,128}$"
"""Session ids and tenant ids: free-form like the reference's, but safe in a URL path and a log line."""
KEY_PURGE_EVERY_S = 3600.0


# --- wire models --------------------------------------------------------------------------------------
class ExecuteBody(Model):
    """`POST /execute` and `/execute/stream`: run `request`, in session `sessionId` if given."""

    request: ExecutionRequest
    options: ClientOptions | None = None
    session_id: str | None = Field(default=None, pattern=NAME)

    @field_validator("session_id", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return value or None  # reference clients send "" for "no session"


class WsExecute(ExecuteBody):
    """The WebSocket's first message; unlike the reference's client, ours sends `sessionId` too."""

    type: Literal["execute"]


class FileUpload(Model):
    session_id: str = Field(pattern=NAME)
    path: str
    content: FileBytes


class FileContent(Model):
    content: FileBytes


class ErrorBody(Model):
    error: str


class OkBody(Model):
    ok: bool = True


class Health(Model):
    status: Literal["ok"] = "ok"
    version: str
    pool: list[PoolState]
    sessions: int


class SessionList(Model):
    sessions: list[SessionInfo]


class KeyRequest(Model):
    """`POST /auth/keys` and `/auth/login`; `ttlMs` defaults to `server.keyTtlMs`."""

    name: str | None = Field(default=None, max_length=200)
    tenant_id: str = Field(default=DEFAULT_TENANT, pattern=NAME)
    ttl_ms: int | None = Field(default=None, gt=0)


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
        self.sessions = SessionRegistry(config.server.max_sessions, config.cleanup.max_container_age_ms)
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
    message = str(first["msg"])
    if tuple(first["loc"]) == ("body",) and first["type"] in ("model_attributes_type", "model_type", "dict_type"):
        return "The body must be a JSON object (Content-Type: application/json)"
    if message.startswith("Value error, "):
        return message.removeprefix("Value error, ")
    where = ".".join(str(part) for part in first["loc"] if part != "body")
    if first["type"] == "missing" and not where:
        return "Missing JSON body"
    return f"{where}: {message}" if where else message


def error_reply(exc: Exception) -> tuple[int, str]:
    """The HTTP status and `error` text for an exception a route let through."""
    if isinstance(exc, AuthError):
        return exc.status, exc.message
    if isinstance(exc, PolicyError):
        return 403, str(exc)
    if isinstance(exc, SessionNotFound):
        return 404, "Session not found"
    if isinstance(exc, TooManySessions):
        return 429, f"Too many sessions: this server keeps at most {exc.args[0]}; delete one first"
    if isinstance(exc, RequestValidationError | ValidationError):
        return 400, describe_validation(list(exc.errors()))
    if isinstance(exc, DockerUnavailable | ImageMissing):
        return 503, str(exc)
    if isinstance(exc, SandboxError):
        return 500, str(exc)
    if isinstance(exc, Isol8Error):
        return 400, str(exc)
    return 500, "Internal server error"


def _error(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _on_error(_: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, HTTPException):
        return _error(exc.status_code, str(exc.detail))
    status, message = error_reply(exc)
    if status == 500 and not isinstance(exc, SandboxError):
        log.error("unexpected error", exc_info=exc)
    return _error(status, message)


# --- auth dependencies ------------------------------------------------------------------------------------
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`")


async def caller(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None
) -> Principal:
    return await _state(request).auth.authenticate(request.headers.get("authorization"))


Caller = Annotated[Principal, Depends(caller)]


async def master(principal: Caller) -> Principal:
    if not principal.is_master:
        raise AuthError(403, "Master key required for this operation")
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
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "Invalid body or engine error"),
        (401, "Missing or malformed Authorization header"),
        (403, "Invalid API key, or options the server's policy refuses"),
    )
}


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
    )
    app.state.server = state
    for exc_type in (HTTPException, RequestValidationError, AuthError, PolicyError, Isol8Error, ValidationError):
        app.add_exception_handler(exc_type, _on_error)
    app.add_exception_handler(SessionNotFound, _on_error)
    app.add_exception_handler(TooManySessions, _on_error)
    _routes(app)
    return app


def _routes(app: FastAPI) -> None:
    @app.get("/health", tags=["server"])
    async def health(request: Request) -> Health:
        """No auth: for load balancers and `RemoteIsol8.start()`."""
        state = _state(request)
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

    @app.post("/execute", tags=["execute"], response_model=ExecutionResult, responses=ERRORS)
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
        responses={**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "data: <StreamEvent>"}},
    )
    async def execute_stream(body: ExecuteBody, request: Request, principal: Caller) -> Response:
        """Server-sent events, one StreamEvent per frame, ending with `exit`. Refusals come before the
        stream as HTTP errors; errors after it started come in-band as an `error` event."""
        state = _state(request)
        plan = state.policy.plan(body.request, body.options)
        resources = contextlib.AsyncExitStack()
        engine = await resources.enter_async_context(state.engine_for(principal, body.session_id, plan))
        return EventStream(engine.execute_stream(plan.request), resources)

    @app.websocket("/execute/ws")
    async def execute_ws(websocket: WebSocket) -> None:
        """First message `{type: "execute", request, options?, sessionId?}`; StreamEvents back; closed
        with 1000 "Execution complete" after the run (also after an error)."""
        state = _state(websocket)
        try:
            principal = await state.auth.authenticate(websocket.headers.get("authorization"))
        except AuthError as exc:
            await websocket.send_denial_response(_error(exc.status, exc.message))
            return
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

    @app.post("/file", tags=["sessions"], responses={**ERRORS, 404: {"model": ErrorBody}})
    async def put_file(body: FileUpload, request: Request, principal: Caller) -> OkBody:
        """Write a file (base64 `content`) into an existing session."""
        async with _state(request).sessions.use(principal.tenant_id, body.session_id) as session:
            await session.engine.put_file(body.path, body.content)
        return OkBody()

    @app.get("/file", tags=["sessions"], responses={**ERRORS, 404: {"model": ErrorBody}})
    async def get_file(
        request: Request,
        principal: Caller,
        session_id: Annotated[str | None, Query(alias="sessionId")] = None,
        path: str | None = None,
    ) -> FileContent:
        """Read a file of an existing session, as base64 `content`."""
        if not session_id or not path:
            raise HTTPException(400, "Missing sessionId or path")
        async with _state(request).sessions.use(principal.tenant_id, session_id) as session:
            try:
                data = await session.engine.get_file(path)
            except Isol8Error as exc:
                if "No such file" in str(exc) or "not found" in str(exc).lower():
                    raise HTTPException(404, str(exc)) from None
                raise
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

    @app.post("/cleanup", tags=["server"], responses=ERRORS)
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

    @app.post("/auth/keys", tags=["auth"], status_code=201, responses=ERRORS)
    async def create_key(body: KeyRequest, request: Request, _: Master) -> CreatedKey:
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

    @app.delete("/auth/keys/{key_id}", tags=["auth"], responses={**ERRORS, 404: {"model": ErrorBody}})
    async def revoke_key(key_id: str, request: Request, _: Master) -> Revoked:
        """Master key only; the key stops working at once."""
        store = _state(request).store_or_refuse()
        if not await asyncio.to_thread(store.revoke_key, key_id):
            raise HTTPException(404, "Key not found")
        return Revoked(id=key_id)

    @app.post("/auth/login", tags=["auth"], responses=ERRORS)
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
