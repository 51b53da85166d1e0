"""The API's routes, in the order the OpenAPI document lists them.

Each route is thin: the body is already validated (engine/server/wire.py), the caller already known
(engine/server/deps.py); it asks the policy for a plan, runs it on an engine from the server's state,
and answers. Failures are raised and become replies in engine/server/errors.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from engine import ExecutionResult, NetworkFilter, __version__
from engine.audit import acting_for
from engine.server.auth import CreatedKey, Principal
from engine.server.deps import Caller, Master, caller, principal_of, state_of
from engine.server.errors import failure_reply
from engine.server.openapi import ERRORS, RUNS, error_responses
from engine.server.state import ServerState
from engine.server.streaming import EventStream, error_event, unless_disconnected, ws_pump
from engine.server.wire import (
    CleanupCount,
    CleanupReply,
    ExecuteBody,
    FileContent,
    FileUpload,
    Health,
    KeyList,
    KeyRequest,
    LoginReply,
    NewKey,
    OkBody,
    Revoked,
    SessionList,
    WsExecute,
)
from engine.terminal import Terminal


def add_routes(app: FastAPI) -> None:
    """Every route, straight on `app`. Not through an APIRouter: FastAPI keeps an included router as
    one entry of `app.routes`, and the 405 reply's `Allow` (engine/server/errors.py) reads the routes."""

    @app.get("/health", tags=["server"], response_model_exclude_none=True)
    async def health(request: Request) -> Health:
        """No key needed: for load balancers and `RemoteIsol8.start()`. Without a valid key the reply
        is only `status` and `version`; with one it also has `pool` and `sessions`."""
        state = state_of(request)
        if principal_of(request) is None:
            return Health(version=__version__)
        return Health(version=__version__, pool=state.pool_state(), sessions=len(state.sessions))

    @app.post("/execute", tags=["execute"], response_model=ExecutionResult, responses=RUNS)
    async def execute(body: ExecuteBody, request: Request, principal: Caller) -> Response:
        """Run to completion. A client that disconnects first kills the run."""
        state = state_of(request)
        plan = state.policy.plan(body.request, body.options)

        async def work() -> ExecutionResult:
            async with state.engine_for(principal, body.session_id, plan) as engine:
                with _audited_as(principal, body.session_id):
                    return await engine.execute(plan.request)

        finished, result = await unless_disconnected(request.receive, work())
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
        state = state_of(request)
        plan = state.policy.plan(body.request, body.options)
        resources = contextlib.AsyncExitStack()
        # Waiting for a slot watches the client too: one that leaves while queued never starts a run.
        entered, engine = await unless_disconnected(
            request.receive, resources.enter_async_context(state.engine_for(principal, body.session_id, plan))
        )
        if not entered or engine is None:
            await resources.aclose()
            return Response(status_code=499)
        with _audited_as(principal, body.session_id):
            events = engine.execute_stream(plan.request)
        return EventStream(events, resources)

    @app.websocket("/execute/ws")
    async def execute_ws(websocket: WebSocket) -> None:
        """First message `{type: "execute", request, options?, sessionId?, tty?: {rows, cols}}`;
        StreamEvents back; closed with 1000 "Execution complete" after the run (also after an
        error). With `tty`, `stdin`, `resize`, `signal` and `eof` messages are the run's input."""
        state = state_of(websocket)
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
                await websocket.send_text(error_event("Invalid JSON message"))
                await websocket.close(1003, "Invalid JSON")
                return
            kind = data.get("type") if isinstance(data, dict) else None
            if kind in ("stdin", "signal", "resize", "eof"):  # input for a run that has not started
                continue
            if kind != "execute":
                await websocket.send_text(error_event(f"Unknown message type: {kind}"))
                continue
            if await _ws_execute(websocket, state, principal, data):
                with contextlib.suppress(OSError, RuntimeError, WebSocketDisconnect):
                    await websocket.close(1000, "Execution complete")
            return

    @app.post("/file", tags=["sessions"], responses=error_responses(404, 413, 500, 503))
    async def put_file(body: FileUpload, request: Request, principal: Caller) -> OkBody:
        """Write a file (base64 `content`) into an existing session."""
        async with state_of(request).sessions.use(principal.tenant_id, body.session_id) as session:
            await session.engine.put_file(body.path, body.content)
        return OkBody()

    @app.get("/file", tags=["sessions"], responses=error_responses(404, 413, 500, 503))
    async def get_file(
        request: Request,
        principal: Caller,
        session_id: Annotated[str, Query(alias="sessionId", min_length=1)],
        path: Annotated[str, Query(min_length=1)],
    ) -> FileContent:
        """Read a file of an existing session, as base64 `content`."""
        async with state_of(request).sessions.use(principal.tenant_id, session_id) as session:
            data = await session.engine.get_file(path)
        return FileContent(content=data)

    @app.put("/session/{session_id}/network", tags=["sessions"], responses=error_responses(403, 404))
    async def set_network(session_id: str, body: NetworkFilter, request: Request, principal: Caller) -> OkBody:
        """New allow and deny lists for a filtered session, within the operator's policy as for a
        request's `networkFilter`; its proxy applies them at once, also to a run in progress."""
        state = state_of(request)
        narrowed = state.policy.network_filter(body)
        async with state.sessions.use(principal.tenant_id, session_id) as session:
            await session.engine.set_network_filter(narrowed)
        return OkBody()

    @app.post("/session/{session_id}/reset", tags=["sessions"], responses=error_responses(404, 500))
    async def reset_session(session_id: str, request: Request, principal: Caller) -> OkBody:
        """End a stateful session's interpreter: its variables go, its files stay, and the next run
        starts a fresh one (after a run in progress ends). 400 `not_stateful` for a session created
        without `stateful`."""
        async with state_of(request).sessions.use(principal.tenant_id, session_id) as session:
            await session.engine.reset()
        return OkBody()

    @app.get("/sessions", tags=["sessions"], responses=ERRORS)
    async def list_sessions(request: Request, principal: Caller) -> SessionList:
        """The caller's tenant's sessions."""
        return SessionList(sessions=state_of(request).sessions.list_for(principal.tenant_id))

    @app.delete("/session/{session_id}", tags=["sessions"], responses=ERRORS)
    async def delete_session(session_id: str, request: Request, principal: Caller) -> OkBody:
        """Stop the session and remove its container; idempotent."""
        await state_of(request).sessions.delete(principal.tenant_id, session_id)
        return OkBody()

    @app.post("/cleanup", tags=["server"], responses=error_responses(413))
    async def cleanup(request: Request, _: Master) -> CleanupReply:
        """Master key only: stop every session and every container this server runs. Images stay:
        body `{"images": true}` is refused (the server needs them; use `isol8 cleanup --images`)."""
        data = await _optional_json(request)
        if isinstance(data, dict) and data.get("images") is True:
            raise HTTPException(
                400,
                "Removing images is not available over the API (the server needs them); "
                "run `isol8 cleanup --images` on the host",
            )
        state = state_of(request)
        removed, errors = await state.sessions.stop_all()
        containers = await state.engines.remove_containers()
        return CleanupReply(
            sessions=CleanupCount(removed=removed, failed=len(errors), errors=errors),
            containers=CleanupCount(removed=containers),
        )

    @app.post("/auth/keys", tags=["auth"], status_code=201, responses=error_responses(413))
    async def create_key(body: NewKey, request: Request, _: Master) -> CreatedKey:
        """Master key only. The plaintext `key` is in this reply and nowhere else, ever."""
        state = state_of(request)
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
        store = state_of(request).store_or_refuse()
        return KeyList(keys=await asyncio.to_thread(store.list_keys, tenant_id))

    @app.delete("/auth/keys/{key_id}", tags=["auth"], responses=error_responses(404))
    async def revoke_key(key_id: str, request: Request, _: Master) -> Revoked:
        """Master key only; the key stops working at once."""
        store = state_of(request).store_or_refuse()
        if not await asyncio.to_thread(store.revoke_key, key_id):
            raise HTTPException(404, "Key not found")
        return Revoked(id=key_id)

    @app.post("/auth/login", tags=["auth"], responses=error_responses(413))
    async def login(request: Request, _: Master) -> LoginReply:
        """Master key only: a new short-lived key for a CLI or a user (body optional)."""
        state = state_of(request)
        store = state.store_or_refuse()
        data = await _optional_json(request)
        body = KeyRequest.model_validate(data if isinstance(data, dict) else {})
        stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        ttl = body.ttl_ms or state.config.server.key_ttl_ms
        created = await asyncio.to_thread(store.create_key, body.name or f"login-{stamp}", body.tenant_id, ttl)
        return LoginReply(token=created.key, expires_at=created.expires_at, key_id=created.id)


async def _ws_execute(websocket: WebSocket, state: ServerState, principal: Principal, message: Any) -> bool:
    """Run one execution over the socket; False if the client left (the run was killed)."""
    try:
        body = WsExecute.model_validate(message)
        plan = state.policy.plan(body.request, body.options)
        terminal = Terminal(body.tty.rows, body.tty.cols) if body.tty else None
        async with state.engine_for(principal, body.session_id, plan) as engine:
            with _audited_as(principal, body.session_id):
                events = engine.execute_stream(plan.request, terminal)
            return await ws_pump(websocket, events, terminal)
    except Exception as exc:
        _, text = failure_reply(exc, "websocket execution failed")
        try:
            await websocket.send_text(error_event(text))
        except (OSError, RuntimeError, WebSocketDisconnect):
            return False  # the client is gone; nothing to close
        return True


def _audited_as(principal: Principal, session_id: str | None) -> contextlib.AbstractContextManager[None]:
    """Executions started inside are the principal's in the audit log (the master key's id is `master`),
    in `session_id` for the logs and traces."""
    return acting_for(principal.tenant_id, principal.key_id or "master", session_id)


async def _optional_json(request: Request) -> Any:
    """The body of a route whose body is optional: `{}` when it is absent or not JSON."""
    try:
        return await request.json()
    except ValueError:
        return {}
