"""One sandbox: a started container and the engine's end of its agent's stream.

The stream is the container's attached stdin/stdout. Docker multiplexes stdout and stderr with
8-byte headers; inside stdout run the agent's frames (engine/agent/protocol.py); the agent's own
stderr is kept as a short diagnostic tail for when it dies.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from engine.agent import protocol as P
from engine.docker import DockerClient
from engine.errors import Isol8Error, SandboxError

_DOCKER_HEADER = struct.Struct(">BxxxL")
HELLO_TIMEOUT_S = 30.0


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

    def request(self) -> dict[str, Any]:
        return {
            "op": "run",
            "argv": self.argv,
            "env": self.env,
            "cwd": self.cwd,
            "timeout_ms": self.timeout_ms,
            "max_output": self.max_output,
            "files": list(self.files),
            "stdin": self.stdin is not None,
            "output_paths": self.output_paths,
            "python_file": self.python_file,
        }


@dataclass
class Output:
    """One piece of a job's output: stdout/stderr bytes, or the final exit report with the
    output paths read back (a path that does not exist is left out)."""

    stream: str  # "stdout" | "stderr" | "network" | "exit"
    data: bytes = b""
    exit: dict[str, Any] | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    entry: dict[str, Any] | None = None  # a network log entry


class Sandbox:
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
        self._agent_stderr: deque[bytes] = deque(maxlen=20)
        self.busy = False
        self.reusable = True  # False once a run on it was lost or abandoned: it is destroyed
        self.pool_key = ""  # set by the pool for the containers it hands out

    @classmethod
    async def launch(cls, docker: DockerClient, config: dict[str, Any]) -> Sandbox:
        """Create, attach and start a container, then wait for its agent's hello."""
        container_id = await asyncio.to_thread(docker.create_container, config)
        try:
            sock = await asyncio.to_thread(docker.attach, container_id)
            reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 22)
            sandbox = cls(docker, container_id, reader, writer, config["image"])
            await asyncio.to_thread(docker.start, container_id)
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                kind, payload = await sandbox._next_frame()
            hello = json.loads(payload) if kind == P.EVENT else {}
            if hello.get("error"):
                raise SandboxError(hello["error"])
            if hello.get("ev") != "hello" or hello.get("version") != P.VERSION:
                raise SandboxError(
                    f"The sandbox agent speaks protocol {hello.get('version')}, the engine {P.VERSION}. "
                    "Run `isol8 setup` to rebuild the images."
                )
            return sandbox
        except BaseException:
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
                header = await self._reader.readexactly(_DOCKER_HEADER.size)
                stream, size = _DOCKER_HEADER.unpack(header)
                payload = await self._reader.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                raise SandboxError(self._died_message()) from exc
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

    # --- jobs -------------------------------------------------------------------------------------
    async def run(self, job: Job) -> AsyncIterator[Output]:
        """Send `job` and yield its output as it arrives, ending with the exit report."""
        self.busy = True
        self._writer.write(P.message(P.REQUEST, job.request()))
        for content in job.files.values():
            for chunk in P.data_frames(content):
                self._writer.write(chunk)
                await self._writer.drain()
        if job.stdin is not None:
            for chunk in P.data_frames(job.stdin):
                self._writer.write(chunk)
                await self._writer.drain()
        await self._writer.drain()
        files: dict[str, bytes] = {}
        receiving: bytearray | None = None
        while True:
            kind, payload = await self._next_frame()
            if kind == P.STDOUT:
                yield Output("stdout", payload)
            elif kind == P.STDERR:
                yield Output("stderr", payload)
            elif kind == P.DATA and receiving is not None:
                receiving += payload
            elif kind == P.END and receiving is not None:
                receiving = None
            elif kind == P.EVENT:
                event = json.loads(payload)
                if event.get("ev") == "file":
                    error = event.get("error")
                    if error and error != "No such file or directory":
                        raise Isol8Error(f"Cannot read {event['path']} from the sandbox: {error}")
                    if not error:
                        receiving = files.setdefault(event["path"], bytearray())  # type: ignore[assignment]
                elif event.get("ev") == "net":
                    yield Output("network", entry=event["entry"])
                elif event.get("ev") == "exit":
                    self.busy = False
                    yield Output("exit", exit=event, files={p: bytes(d) for p, d in files.items()})
                    return

    async def put_file(self, path: str, content: bytes) -> None:
        """Write `content` to `path` in the sandbox (as the sandbox user; parents created)."""
        self._writer.write(P.message(P.REQUEST, {"op": "put", "path": path}))
        for chunk in P.data_frames(content):
            self._writer.write(chunk)
            await self._writer.drain()
        while True:
            kind, payload = await self._next_frame()
            if kind == P.EVENT and (event := json.loads(payload)).get("ev") == "done":
                if event.get("error"):
                    raise Isol8Error(f"Cannot write {path} in the sandbox: {event['error']}")
                return

    async def get_file(self, path: str) -> bytes:
        """The content of `path` in the sandbox, read as the sandbox user."""
        self._writer.write(P.message(P.REQUEST, {"op": "get", "path": path}))
        await self._writer.drain()
        chunks: list[bytes] = []
        while True:
            kind, payload = await self._next_frame()
            if kind == P.EVENT and (event := json.loads(payload)).get("ev") == "file":
                if event.get("error"):
                    raise Isol8Error(f"Cannot read {path} from the sandbox: {event['error']}")
            elif kind == P.DATA:
                chunks.append(payload)
            elif kind == P.END:
                return b"".join(chunks)

    async def abort(self) -> None:
        """Kill the job in flight and wait for its exit report, so the sandbox can serve again."""
        if not self.busy:
            return
        self._writer.write(P.message(P.REQUEST, {"op": "kill"}))
        await self._writer.drain()
        while self.busy:
            kind, payload = await self._next_frame()
            if kind == P.EVENT and json.loads(payload).get("ev") == "exit":
                self.busy = False

    async def scrub(self) -> str | None:
        """Have the agent erase the last execution; None when it verified the sandbox is clean."""
        self._writer.write(P.message(P.REQUEST, {"op": "scrub"}))
        await self._writer.drain()
        while True:
            kind, payload = await self._next_frame()
            if kind == P.EVENT and (event := json.loads(payload)).get("ev") == "scrubbed":
                return event.get("error")

    def detach(self) -> None:
        """Let go of the stream and leave the container running (`persist`, for debugging)."""
        self._writer.close()

    async def destroy(self) -> None:
        self._writer.close()
        await asyncio.to_thread(self.docker.remove, self.container_id)
