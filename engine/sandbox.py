"""One sandbox: a started container and the engine's end of its agent's stream.

The stream is the container's attached stdin/stdout. Docker multiplexes stdout and stderr with
8-byte headers; inside stdout run the agent's frames (engine/agent/protocol.py); the agent's own
stderr is kept as a short diagnostic tail for when it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from engine import metrics
from engine.agent import protocol as P
from engine.docker import DockerClient
from engine.errors import (
    FileError,
    FileNotFound,
    FileTooLarge,
    ImageMissing,
    NotARegularFile,
    SandboxError,
    SandboxLost,
    Timeout,
)
from engine.models import MAX_FILE_SIZE
from engine.terminal import EndOfInput, Interrupt, Keys, Resize, Terminal

log = logging.getLogger("isol8.sandbox")
_DOCKER_HEADER = struct.Struct(">BxxxL")
HELLO_TIMEOUT_S = 30.0
FILE_DEADLINE_S = 60.0
"""A put_file or get_file the agent has not finished by then is given up (the agent never blocks
on a file, so only a wedged or starved sandbox gets there); the sandbox is then replaced."""
RECOVER_TIMEOUT_S = 5.0
FILE_ERRORS: dict[str, type[FileError]] = {
    "missing": FileNotFound,
    "not_regular": NotARegularFile,
    "too_large": FileTooLarge,
}
"""The agent's `reason` for a failed file item, as the error type the caller sees."""


@dataclass
class Job:
    """What the agent runs: argv, env, cwd, limits, files in, stdin, paths out."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    timeout_ms: int
    max_output: int
    files: dict[str, bytes] = field(default_factory=dict)
    stdin: bytes | None = None
    output_paths: list[str] = field(default_factory=list)
    python_file: str | None = None  # a Python script the agent may run on its forked interpreter
    warm_argv: list[str] | None = None  # what a pre-started interpreter must have been started with
    prestart: bool = False  # start the next interpreter after this job (more jobs follow on this uid)
    max_file_size: int = MAX_FILE_SIZE  # the output paths' bytes together
    terminal: Terminal | None = None  # run on a pseudo-terminal; its input follows `stdin`
    kernel: dict[str, Any] | None = None  # run the code file (argv's last) on the session's interpreter

    def request(self) -> dict[str, Any]:
        return {
            "op": "run",
            "argv": self.argv,
            "env": self.env,
            "cwd": self.cwd,
            "timeout_ms": self.timeout_ms,
            "max_output": self.max_output,
            "files": list(self.files),
            "stdin": self.stdin is not None or self.terminal is not None,
            "output_paths": self.output_paths,
            "python_file": self.python_file,
            "warm_argv": self.warm_argv,
            "prestart": self.prestart,
            "max_file_size": self.max_file_size,
            "tty": self.terminal.size.model_dump() if self.terminal else None,
            "kernel": self.kernel,
        }


@dataclass
class Output:
    """One piece of a job's output: stdout/stderr bytes, or the final exit report with the
    output paths read back (a path that does not exist is left out) and, per output path that
    could not be read, its error."""

    stream: str  # "stdout" | "stderr" | "network" | "result" | "exit"
    data: bytes = b""
    exit: dict[str, Any] | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    file_errors: list[FileError] = field(default_factory=list)
    entry: dict[str, Any] | None = None  # a network log entry
    result: dict[str, Any] | None = None  # a displayed value: {data: MIME bundle, main: bool}


class Sandbox:
    """The engine's end of one agent. Requests are strictly one at a time; each owes a last event
    (`exit`, `done`, the end of a file item, `scrubbed`, `pong`). When a caller leaves a request
    before that event (a cancelled stream, an error, a deadline), the sandbox remembers it, and
    `recover` cancels it in the agent and reads up to that event, so the next request never sees
    the output of an earlier one. Frames are read whole or not at all, so a cancellation at any
    await leaves the stream at a frame boundary."""

    def __init__(
        self,
        docker: DockerClient,
        container_id: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        image: str,
    ) -> None:
        self.docker = docker
        self.container_id = container_id
        self.image = image
        self._reader = reader
        self._writer = writer
        self._decoder = P.FrameDecoder()
        self._pending: deque[tuple[int, bytes]] = deque()
        self._header: tuple[int, int] | None = None  # a Docker header read whose payload is still due
        self._agent_stderr: deque[bytes] = deque(maxlen=20)
        self._open: str | None = None  # the request whose last event has not been read yet
        self.reusable = True  # False once its stream cannot be trusted: it is destroyed
        self.pool_key = ""  # set by the pool for the containers it hands out

    @classmethod
    async def launch(cls, docker: DockerClient, config: dict[str, Any]) -> Sandbox:
        """Create, attach and start a container, then wait for its agent's hello.

        Cancellable at any point without waiting: a container that exists (or will, once Docker
        answers the create) is removed in the background, so a caller that no longer wants it (a
        pool being closed) is not held up by it."""
        started = time.monotonic()
        creating = asyncio.ensure_future(asyncio.to_thread(docker.create_container, config))
        try:
            container_id = await asyncio.shield(creating)
        except asyncio.CancelledError:
            creating.add_done_callback(lambda done: _remove_later(docker, done))
            raise
        try:
            sock = await asyncio.to_thread(docker.attach, container_id)
            reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 22)
            sandbox = cls(docker, container_id, reader, writer, config["image"])
            await asyncio.to_thread(docker.start, container_id)
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                kind, payload = await sandbox._next_frame()
            hello = P.loads(payload) if kind == P.EVENT else {}
            if hello.get("error"):
                raise SandboxError(hello["error"])
            if hello.get("ev") != "hello" or hello.get("version") != P.VERSION:
                raise ImageMissing(
                    f"The sandbox agent speaks protocol {hello.get('version')}, the engine {P.VERSION}. "
                    "Run `isol8 setup` to rebuild the images."
                )
            filtered = "ISOL8_NETWORK" in config["environment"]  # the agent set up its proxy and iptables rules
            network = (
                "filtered: proxy and iptables rules in place" if filtered else config["host_config"]["network_mode"]
            )
            log.debug("container %s started from %s, network %s", container_id[:12], config["image"], network)
            metrics.CONTAINER_STARTS.labels(config["image"], "ok").inc()
            metrics.CONTAINER_START_SECONDS.labels(config["image"]).observe(time.monotonic() - started)
            return sandbox
        except asyncio.CancelledError:
            _remove_later(docker, creating)
            raise
        except BaseException:
            metrics.CONTAINER_STARTS.labels(config["image"], "failed").inc()
            await asyncio.shield(asyncio.to_thread(docker.remove, container_id))
            raise

    @property
    def alive(self) -> bool:
        """False once the stream to the agent has ended (the container or the daemon went away)."""
        return not self._reader.at_eof() and not self._writer.is_closing()

    # --- reading ----------------------------------------------------------------------------------
    async def _next_frame(self) -> tuple[int, bytes]:
        while not self._pending:
            try:
                if self._header is None:
                    self._header = _DOCKER_HEADER.unpack(await self._reader.readexactly(_DOCKER_HEADER.size))
                stream, size = self._header
                payload = await self._reader.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                self.reusable = False
                raise SandboxLost(self._died_message()) from exc
            self._header = None
            if stream == 2:
                self._agent_stderr.append(payload)
                continue
            self._pending.extend(self._decoder.feed(payload))
        return self._pending.popleft()

    def _died_message(self) -> str:
        tail = b"".join(self._agent_stderr).decode(errors="replace").strip().splitlines()[-3:]
        detail = f": {' | '.join(tail)}" if tail else ""
        return (
            f"The sandbox container {self.container_id[:12]} stopped unexpectedly{detail}. "
            "Retry; if it persists, run `isol8 setup --force` and check `docker info`."
        )

    async def _request(self, op: str, body: dict[str, Any]) -> None:
        """Send a request (after settling any earlier one); its last event is owed from now on."""
        if self._open is not None:
            await self.recover()
        self._open = op
        self._writer.write(P.message(P.REQUEST, {"op": op, **body}))

    def control(self, op: str, body: dict[str, Any]) -> None:
        """A message the agent takes at any time and never answers (resize, signal, network): it
        goes out whole between the frames of whatever request is open."""
        if not self._writer.is_closing():
            self._writer.write(P.message(P.REQUEST, {"op": op, **body}))

    async def recover(self) -> None:
        """End a request a caller left before its last event: cancel it in the agent (a job is
        killed, an upload discarded) and read, discarding, up to that event. SandboxError when the
        agent does not get there in RECOVER_TIMEOUT_S: the sandbox cannot be trusted any more."""
        if self._open is None:
            return
        self._writer.write(P.message(P.REQUEST, {"op": "cancel"}))
        try:
            async with asyncio.timeout(RECOVER_TIMEOUT_S):
                await self._writer.drain()
                while self._open is not None:
                    kind, payload = await self._next_frame()
                    if _ends(self._open, kind, P.loads(payload) if kind == P.EVENT else {}):
                        self._open = None
        except (TimeoutError, SandboxError) as exc:
            self.reusable = False
            raise SandboxLost(
                f"The sandbox agent did not finish an abandoned request within {RECOVER_TIMEOUT_S:g} s; "
                "its container is being replaced."
            ) from exc

    # --- jobs -------------------------------------------------------------------------------------
    async def run(self, job: Job) -> AsyncGenerator[Output, None]:
        """Send `job` and yield its output as it arrives, ending with the exit report."""
        await self._request("run", job.request())
        for content in job.files.values():
            for chunk in P.data_frames(content):
                self._writer.write(chunk)
                await self._writer.drain()
        typing = None
        if job.terminal is not None:
            self._type_keys(job.stdin or b"")  # typed ahead of the terminal's input
            typing = asyncio.ensure_future(self._type(job.terminal))
        elif job.stdin is not None:
            for chunk in P.data_frames(job.stdin):
                self._writer.write(chunk)
                await self._writer.drain()
        await self._writer.drain()
        try:
            async for output in self._outputs(job):
                yield output
        finally:
            if typing is not None:
                typing.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await typing

    def _type_keys(self, data: bytes) -> None:
        """`data` as DATA frames of the job's stdin item, which stays open (its END comes later)."""
        for chunk in P.data_frames(data):
            if chunk[0] == P.DATA:
                self._writer.write(chunk)

    async def _type(self, terminal: Terminal) -> None:
        """Forward a terminal's input to its running job (frames go out whole, so this may be
        cancelled at any await); the job's stdin is ended however this ends."""
        ended = False
        try:
            while True:
                item = await terminal.next_input()
                if isinstance(item, Keys) and not ended:
                    self._type_keys(item.data)
                elif isinstance(item, Resize):
                    self.control("resize", item.size.model_dump())
                elif isinstance(item, Interrupt):
                    self.control("signal", {"signal": item.signal})
                elif isinstance(item, EndOfInput) and not ended:
                    ended = True
                    self._writer.write(P.frame(P.END))
                await self._writer.drain()
        finally:
            if not ended and not self._writer.is_closing():
                self._writer.write(P.frame(P.END))  # the agent lets go of the job's stdin

    async def _outputs(self, job: Job) -> AsyncGenerator[Output, None]:
        files: dict[str, bytearray] = {}
        errors: list[FileError] = []
        receiving: bytearray | None = None
        received = 0
        while True:
            kind, payload = await self._next_frame()
            if kind == P.STDOUT:
                yield Output("stdout", payload)
            elif kind == P.STDERR:
                yield Output("stderr", payload)
            elif kind == P.DATA and receiving is not None:
                received += len(payload)
                self._check_bound(received, job.max_file_size)
                receiving += payload
            elif kind == P.END and receiving is not None:
                receiving = None
            elif kind == P.EVENT:
                event = P.loads(payload)
                if event.get("ev") == "file":
                    receiving = None
                    if event.get("error"):
                        files.pop(event["path"], None)
                        if event.get("reason") != "missing":  # an output path that does not exist is left out
                            errors.append(_file_error("read", event))
                    else:
                        receiving = files.setdefault(event["path"], bytearray())
                elif event.get("ev") == "net":
                    yield Output("network", entry=event["entry"])
                elif event.get("ev") == "result":
                    yield Output("result", result=event)
                elif event.get("ev") == "exit":
                    self._open = None
                    contents = {path: bytes(data) for path, data in files.items()}
                    yield Output("exit", exit=event, files=contents, file_errors=errors)
                    return

    async def put_file(self, path: str, content: bytes) -> None:
        """Write `content` to `path` in the sandbox (as the sandbox user; parents created)."""
        async with self._deadline(f"writing {path}"):
            await self._request("put", {"path": path})
            for chunk in P.data_frames(content):
                self._writer.write(chunk)
                await self._writer.drain()
            while True:
                kind, payload = await self._next_frame()
                if kind == P.EVENT and (event := P.loads(payload)).get("ev") == "done":
                    self._open = None
                    if event.get("error"):
                        raise _file_error("write", event)
                    return

    async def get_file(self, path: str, max_bytes: int) -> bytes:
        """The content of `path` in the sandbox, read as the sandbox user; at most `max_bytes`."""
        async with self._deadline(f"reading {path}"):
            await self._request("get", {"path": path, "max_bytes": max_bytes})
            await self._writer.drain()
            chunks: list[bytes] = []
            received = 0
            while True:
                kind, payload = await self._next_frame()
                if kind == P.EVENT and (event := P.loads(payload)).get("ev") == "file":
                    if event.get("error"):
                        self._open = None
                        raise _file_error("read", event)
                elif kind == P.DATA:
                    received += len(payload)
                    self._check_bound(received, max_bytes)
                    chunks.append(payload)
                elif kind == P.END:
                    self._open = None
                    return b"".join(chunks)

    def _check_bound(self, received: int, limit: int) -> None:
        """The agent bounds what it sends; an agent that does not is not trusted with more memory."""
        if received > limit:
            self.reusable = False
            raise SandboxError(
                f"The sandbox agent sent more than the {limit} bytes asked for; its container is being replaced."
            )

    @contextlib.asynccontextmanager
    async def _deadline(self, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(FILE_DEADLINE_S):
                yield
        except TimeoutError:
            self.reusable = False
            raise Timeout(
                f"The sandbox did not finish {what} within {FILE_DEADLINE_S:g} s; its container is being "
                "replaced (a session's files are gone). Retry."
            ) from None

    async def reset_kernel(self) -> None:
        """End the session's interpreter (and everything of the sandbox user); the next cell starts anew."""
        async with self._deadline("resetting the interpreter"):
            error = await self._ask("reset", "reset")
        if error:
            raise SandboxError(f"Cannot reset the interpreter: {error}; wait for the run to end, then reset again.")

    async def scrub(self) -> str | None:
        """Have the agent erase the last execution; None when it verified the sandbox is clean."""
        return await self._ask("scrub", "scrubbed")

    async def _ask(self, op: str, answer: str) -> str | None:
        """Send `op` and read up to its `answer` event: the error it carries, if any."""
        await self._request(op, {})
        await self._writer.drain()
        while True:
            kind, payload = await self._next_frame()
            if kind == P.EVENT and (event := P.loads(payload)).get("ev") == answer:
                self._open = None
                error: str | None = event.get("error")
                return error

    def detach(self) -> None:
        """Let go of the stream and leave the container running (`persist`, for debugging)."""
        self._writer.close()

    async def destroy(self) -> None:
        log.debug("container %s removed", self.container_id[:12])
        self._writer.close()
        await asyncio.to_thread(self.docker.remove, self.container_id)


def _remove_later(docker: DockerClient, created: asyncio.Future[str]) -> None:
    """Remove the container `created` made, on an executor thread nobody waits for (the
    interpreter still finishes it before it exits)."""
    if not created.cancelled() and created.exception() is None:
        asyncio.get_running_loop().run_in_executor(None, docker.remove, created.result())


def _ends(op: str, kind: int, event: dict[str, Any]) -> bool:
    """Whether this frame is the last one of request `op`."""
    if op == "get":  # a file item: its END, or its error (before or after some DATA)
        return kind == P.END or (event.get("ev") == "file" and bool(event.get("error")))
    return event.get("ev") == {"run": "exit", "put": "done", "scrub": "scrubbed", "reset": "reset"}[op]


def _file_error(verb: str, event: dict[str, Any]) -> FileError:
    """The typed error for a failed file item or upload, in one line that says what to do."""
    reason, path = event.get("reason"), event["path"]
    where = "from" if verb == "read" else "in"
    advice = {
        "too_large": "; raise maxFileSize to allow more",
        "not_regular": "; only regular files can be moved in or out",
    }.get(str(reason), "")
    return FILE_ERRORS.get(str(reason), FileError)(
        f"Cannot {verb} {path} {where} the sandbox: {event['error']}{advice}"
    )
