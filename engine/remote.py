"""RemoteIsol8: the same calls as DockerIsol8, run by an `isol8 serve` server over HTTP.

Streams go over a WebSocket and fall back to SSE only when the socket cannot be opened: once the
execute message is sent the code may be running, so a second transport would run it twice. A stream
that ends without its `exit` event raises instead of ending quietly (the reference client yielded
nothing and carried on). Error messages are the reference client's, word for word.

httpx and websockets are imported when first used: httpx pulls in click and rich, which `import
engine` must not.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, Self

from engine.errors import ERROR_CODE_HEADER, Isol8Error, error_class
from engine.models import (
    ExecutionRequest,
    ExecutionResult,
    Isol8Options,
    Model,
    NetworkFilter,
    PoolState,
    StreamEvent,
)
from engine.terminal import Interrupt, Keys, Resize, Terminal

if TYPE_CHECKING:
    import httpx
    from websockets.asyncio.client import ClientConnection

CONNECT_TIMEOUT_S = 10.0
WS_MAX_BYTES = 64 << 20
WS_INPUT_CHUNK = 3 << 14  # raw bytes per `stdin` message: 64 KiB of base64, the server's bound


class RemoteSession(Model):
    """One entry of `GET /sessions`."""

    id: str
    runtime: str | None = None
    is_active: bool = False
    created_at: str | None = None
    last_accessed_at: str | None = None
    container_id: str | None = None
    stateful: bool = False


def _failed(failure: str, response: httpx.Response) -> Isol8Error:
    """The error a refused request raises: the class the server's `Isol8-Error` header names (the
    server's engine raised it), with the server's `{"error": ...}` text, else the HTTP reason."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        text = body["error"]
    else:
        text = response.reason_phrase or str(response.status_code)
    return error_class(response.headers.get(ERROR_CODE_HEADER))(f"{failure}: {text}")


def _denial_text(body: bytes | bytearray | None) -> str:
    try:
        error = json.loads(body or b"").get("error")
    except (ValueError, AttributeError):
        error = None
    return error if isinstance(error, str) else "WebSocket connection refused"


class RemoteIsol8:
    """`async with RemoteIsol8("http://host:3000", key) as isol8: await isol8.execute(...)`.

    With `session_id` every call runs in that server-side session (state and files persist); `stop()`
    then deletes it unless `keep_session` is set. `options` are sent with each execution; only the
    fields set on it are sent, so the server's config decides the rest. `Isol8Options(mode=
    "persistent", stateful=True)` with a `session_id` makes (or uses) a stateful session: its code
    runs on one interpreter that keeps variables, results carry `results` and `state`, and `reset()`
    starts a fresh interpreter.
    """

    def __init__(
        self,
        host: str,
        api_key: str,
        session_id: str | None = None,
        options: Isol8Options | None = None,
        *,
        keep_session: bool = False,
    ) -> None:
        self.host = host.rstrip("/")
        self.api_key = api_key
        self.session_id = session_id
        self.options = options
        self.keep_session = keep_session
        self._ws_available: bool | None = None  # unknown until the first stream
        self._http: httpx.AsyncClient | None = None

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Check the server answers (`GET /health`)."""
        import httpx

        try:
            response = await self._client().get("/health")
        except httpx.HTTPError as exc:
            raise Isol8Error(f"Remote server health check failed: {str(exc) or type(exc).__name__}") from None
        if response.status_code != 200:
            raise Isol8Error(f"Remote server health check failed: {response.status_code}")

    async def stop(self) -> None:
        """Delete the session (unless `keep_session`) and close the connections."""
        try:
            if self.session_id and not self.keep_session:
                await self.delete_session(self.session_id)
        finally:
            if self._http is not None:
                await self._http.aclose()
                self._http = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # --- execution --------------------------------------------------------------------------------
    async def execute(self, request: ExecutionRequest) -> ExecutionResult:
        response = await self._send("POST", "/execute", "Execution failed", json=self._body(request))
        if response.status_code != 200:
            raise _failed("Execution failed", response)
        return ExecutionResult.model_validate_json(response.content)

    async def execute_stream(
        self, request: ExecutionRequest, terminal: Terminal | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """Events as they happen, ending with `exit`. Leaving the loop early closes the connection,
        which makes the server kill the run. An interactive run (`terminal`) needs the WebSocket."""
        body = self._body(request)
        if terminal is not None:
            body["tty"] = terminal.size.model_dump()
        if self._ws_available is not False or terminal is not None:
            opened = False
            async with contextlib.aclosing(self._ws_stream(body, terminal)) as ws_events:
                async for event in ws_events:
                    if event is None:  # the socket is open: from here on, no fallback
                        opened = self._ws_available = True
                        continue
                    yield event
            if opened:
                return
            if terminal is not None:
                raise Isol8Error(
                    f"Interactive runs need the server's WebSocket, and {self.host}/execute/ws could not be "
                    "opened; check that no proxy between here and the server refuses WebSocket upgrades."
                )
            self._ws_available = False
        async with contextlib.aclosing(self._sse_stream(body)) as sse_events:
            async for event in sse_events:
                yield event

    def pool_state(self) -> list[PoolState]:
        """Nothing: the server keeps the warm containers, not this client."""
        return []

    # --- files and sessions -----------------------------------------------------------------------
    async def put_file(self, path: str, content: str | bytes) -> None:
        session_id = self._require_session()
        data = content.encode() if isinstance(content, str) else content
        body = {"sessionId": session_id, "path": path, "content": base64.b64encode(data).decode()}
        response = await self._send("POST", "/file", "File upload failed", json=body)
        if response.status_code != 200:
            raise _failed("File upload failed", response)

    async def get_file(self, path: str) -> bytes:
        session_id = self._require_session()
        response = await self._send(
            "GET", "/file", "File download failed", params={"sessionId": session_id, "path": path}
        )
        if response.status_code != 200:
            raise _failed("File download failed", response)
        return base64.b64decode(response.json()["content"])

    async def set_network_filter(self, network_filter: NetworkFilter) -> None:
        """The session's new allow and deny lists (the server narrows them to its policy)."""
        session_id = self._require_session("Changing the network lists requires a sessionId (persistent mode)")
        body = network_filter.model_dump(mode="json", by_alias=True, exclude_unset=True)
        response = await self._send("PUT", f"/session/{session_id}/network", "Network update failed", json=body)
        if response.status_code != 200:
            raise _failed("Network update failed", response)

    async def reset(self) -> None:
        """End the stateful session's interpreter (its variables go, its files stay); the next run
        starts a fresh one. NotStateful for a session created without `stateful`."""
        session_id = self._require_session("Resetting the interpreter requires a sessionId (a stateful session)")
        response = await self._send("POST", f"/session/{session_id}/reset", "Reset failed")
        if response.status_code != 200:
            raise _failed("Reset failed", response)

    async def list_sessions(self) -> list[RemoteSession]:
        response = await self._send("GET", "/sessions", "Failed to list sessions")
        if response.status_code != 200:
            raise _failed("Failed to list sessions", response)
        return [RemoteSession.model_validate(item) for item in response.json()["sessions"]]

    async def delete_session(self, session_id: str) -> None:
        response = await self._send("DELETE", f"/session/{session_id}", "Failed to delete session")
        if response.status_code != 200:
            raise _failed("Failed to delete session", response)

    # --- plumbing ---------------------------------------------------------------------------------
    def _client(self) -> httpx.AsyncClient:
        import httpx

        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.host,
                headers={"Authorization": f"Bearer {self.api_key}"},
                # Runs are bounded by the server's timeouts; a read timeout here would cut long ones.
                timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            )
        return self._http

    async def _send(self, method: str, path: str, failure: str, **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            return await self._client().request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Isol8Error(f"{failure}: {str(exc) or type(exc).__name__}") from None

    def _require_session(self, refusal: str = "File operations require a sessionId (persistent mode)") -> str:
        if not self.session_id:
            raise Isol8Error(refusal)
        return self.session_id

    def _body(self, request: ExecutionRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"request": request.model_dump(mode="json", by_alias=True, exclude_none=True)}
        if self.options is not None:
            options = self.options.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)
            options.pop("mode", None)  # the server decides: a sessionId means persistent
            if options:
                body["options"] = options
        if self.session_id:
            body["sessionId"] = self.session_id
        return body

    async def _ws_stream(
        self, body: dict[str, Any], terminal: Terminal | None = None
    ) -> AsyncGenerator[StreamEvent | None, None]:
        """Yields None once the socket is open, then the events. Ends without yielding if the socket
        cannot be opened (the caller falls back to SSE). A `terminal`'s input goes out meanwhile."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

        url = "ws" + self.host.removeprefix("http") + "/execute/ws"
        try:
            socket = await connect(
                url,
                additional_headers={"Authorization": f"Bearer {self.api_key}"},
                open_timeout=CONNECT_TIMEOUT_S,
                max_size=WS_MAX_BYTES,
                compression=None,
            )
        except InvalidStatus as exc:
            if exc.response.status_code in (401, 403):  # the socket works; the key does not
                refused = error_class(exc.response.headers.get(ERROR_CODE_HEADER))
                raise refused(f"Stream failed: {_denial_text(exc.response.body)}") from None
            return
        except (OSError, InvalidHandshake, TimeoutError):
            return
        async with socket:
            yield None
            await socket.send(json.dumps({"type": "execute", **body}))
            events = _Ending()
            typing = asyncio.ensure_future(_type_into(socket, terminal)) if terminal is not None else None
            try:
                async for message in socket:
                    for event in events.feed(StreamEvent.model_validate_json(message)):
                        yield event
            except ConnectionClosed as exc:
                if events.held is not None:  # the server said why before it closed
                    raise Isol8Error(f"Stream failed: {events.held.data}") from None
                raise Isol8Error(f"Stream failed: WebSocket connection closed ({exc})") from None
            finally:
                if typing is not None:
                    typing.cancel()
            for event in events.finish():
                yield event

    async def _sse_stream(self, body: dict[str, Any]) -> AsyncGenerator[StreamEvent, None]:
        import httpx

        try:
            async with self._client().stream("POST", "/execute/stream", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _failed("Stream failed", response)
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    raise Isol8Error("No response body for streaming")
                events = _Ending()
                data: list[str] = []
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                    elif not line and data:
                        for event in events.feed(StreamEvent.model_validate_json("\n".join(data))):
                            yield event
                        data = []
                for event in events.finish():
                    yield event
        except httpx.HTTPError as exc:
            raise Isol8Error(f"Stream failed: {str(exc) or type(exc).__name__}") from None


async def _type_into(socket: ClientConnection, terminal: Terminal) -> None:
    """A terminal's input as the server's WsInput messages, until the run ends."""
    from websockets.exceptions import ConnectionClosed

    with contextlib.suppress(ConnectionClosed):
        while True:
            item = await terminal.next_input()
            if isinstance(item, Keys):
                for start in range(0, len(item.data), WS_INPUT_CHUNK):
                    chunk = item.data[start : start + WS_INPUT_CHUNK]
                    data = base64.b64encode(chunk).decode()
                    await socket.send(json.dumps({"type": "stdin", "data": data, "encoding": "base64"}))
            elif isinstance(item, Resize):
                await socket.send(json.dumps({"type": "resize", **item.size.model_dump()}))
            elif isinstance(item, Interrupt):
                await socket.send(json.dumps({"type": "signal", "signal": item.signal}))
            else:
                await socket.send(json.dumps({"type": "eof"}))


class _Ending:
    """Holds back an `error` event until it is known whether an `exit` follows it.

    The engine's own errors (a timeout, a failed setup) come just before `exit` and are passed on;
    an error the server sends instead of running (a refused option, a bad request) ends the stream
    without `exit` and becomes `Stream failed: <error>`.
    """

    def __init__(self) -> None:
        self.held: StreamEvent | None = None
        self.ended = False

    def feed(self, event: StreamEvent) -> list[StreamEvent]:
        out = [self.held] if self.held is not None else []
        self.held = None
        if event.type == "error":
            self.held = event
        else:
            out.append(event)
            self.ended = self.ended or event.type == "exit"
        return out

    def finish(self) -> list[StreamEvent]:
        if self.ended:
            return [self.held] if self.held is not None else []
        if self.held is not None:
            raise Isol8Error(f"Stream failed: {self.held.data}")
        raise Isol8Error("Stream failed: the connection closed before the run ended")
