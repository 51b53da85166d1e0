"""Streaming a run to its client (SSE and WebSocket), and killing the run when the client goes away.

The run is killed as soon as its client leaves, not at the next failed write: a program that prints
nothing for a minute would otherwise keep running for a client long gone. `unless_disconnected` is
that race, written once, for a whole request, an SSE stream and a WebSocket run.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

from fastapi import WebSocket
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from engine import StreamEvent
from engine.errors import InputTooLarge
from engine.server.errors import failure_reply
from engine.server.wire import WsInput, WsResize, WsSignal, WsStdin
from engine.terminal import Terminal

T = TypeVar("T")

DISCONNECTS = frozenset({"http.disconnect", "websocket.disconnect"})


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] not in DISCONNECTS:
        pass


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> tuple[bool, T | None]:
    """Run `work`, cancelling it if the client goes away first: (finished, result).

    `receive` is the connection's: messages other than the disconnect are read and dropped (on a
    WebSocket during a run, the reserved `stdin` and `signal`).
    """
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()  # the engine kills the run
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return False, None
    return True, task.result()


def error_event(message: str) -> str:
    """An in-band `error` event: how a failure travels once the reply or the socket has started."""
    return json.dumps({"type": "error", "data": message})


async def _forward(events: AsyncGenerator[StreamEvent, None], send_text: Callable[[str], Awaitable[None]]) -> None:
    """Each event's JSON to `send_text`; the stream is closed however this ends (a cancel kills the run)."""
    async with contextlib.aclosing(events) as stream:
        async for event in stream:
            await send_text(event.to_json())


def sse_frame(payload: str) -> bytes:
    return f"data: {payload}\n\n".encode()


class EventStream(Response):
    """`text/event-stream` of StreamEvents, one `data: <json>\\n\\n` frame each.

    It listens for the client's disconnect itself instead of relying on a failed write.
    """

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[StreamEvent, None], resources: contextlib.AsyncExitStack) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"})
        self._events = events
        self._resources = resources

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self._resources:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            with contextlib.suppress(OSError):
                await unless_disconnected(receive, self._pump(send))

    async def _pump(self, send: Send) -> None:
        async def frame(payload: str) -> None:
            await send({"type": "http.response.body", "body": sse_frame(payload), "more_body": True})

        try:
            await _forward(self._events, frame)
        except OSError:  # the client went away (servers on ASGI 2.4 say so by failing the write)
            return
        except Exception as exc:  # after the 200 went out, an error can only travel in-band
            _, message = failure_reply(exc, "stream failed")
            await frame(error_event(message))
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def ws_pump(
    websocket: WebSocket, events: AsyncGenerator[StreamEvent, None], terminal: Terminal | None = None
) -> bool:
    """The events as text frames until the run ends; False if the client left first (the run was
    killed). With a `terminal`, the client's input messages feed it meanwhile."""
    receive = websocket.receive if terminal is None else _typing(websocket.receive, terminal)
    finished, _ = await unless_disconnected(receive, _forward(events, websocket.send_text))
    return finished


def _typing(receive: Receive, terminal: Terminal) -> Receive:
    """`receive`, handing each WsInput message to `terminal` on the way; anything else is dropped
    (a malformed message must not end a run). Input past the stdin bound ends the program's input."""

    async def typed() -> Message:
        message = await receive()
        try:
            item = WsInput.validate_json(message.get("text") or message.get("bytes") or b"")
            if isinstance(item, WsStdin):
                terminal.write(item.raw())
            elif isinstance(item, WsResize):
                terminal.resize(item.rows, item.cols)
            elif isinstance(item, WsSignal):
                terminal.signal(item.signal)
            else:
                terminal.close()
        except (ValidationError, binascii.Error):
            pass
        except InputTooLarge:
            terminal.close()
        return message

    return typed
