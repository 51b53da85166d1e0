"""The engine interface: what every backend implements and every client types against.

`DockerIsol8` (this machine's Docker) and `RemoteIsol8` (an `isol8 serve` over HTTP) implement it;
the CLI, the server and the workbench depend on this Protocol, not on a backend. One engine in
`persistent` mode is one session: its executions share a container, and the file calls reach it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol, Self

from engine.models import ExecutionRequest, ExecutionResult, NetworkFilter, PoolState, StreamEvent
from engine.terminal import Terminal


class Engine(Protocol):
    async def start(self) -> None:
        """Get ready (check the backend, warm what is configured); idempotent."""
        ...

    async def stop(self) -> None:
        """Release everything this engine holds (containers, a remote session, connections)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *_: object) -> None: ...

    async def execute(self, request: ExecutionRequest) -> ExecutionResult:
        """Run to completion; raises only Isol8Error subclasses for failures that are not the code's."""
        ...

    def execute_stream(
        self, request: ExecutionRequest, terminal: Terminal | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """Output events as they happen, then exactly one `exit`; leaving early kills the run.
        With a `terminal` the code runs on a pseudo-terminal fed by it (engine/terminal.py)."""
        ...

    async def set_network_filter(self, network_filter: NetworkFilter) -> None:
        """New allow and deny lists for a filtered network, applied to a live session at once."""
        ...

    async def reset(self) -> None:
        """End a stateful session's interpreter (its variables go; /sandbox stays): the next run
        starts a fresh one. NotStateful for an engine that is not a stateful session."""
        ...

    async def put_file(self, path: str, content: str | bytes) -> None:
        """Write a file into the session's /sandbox (persistent mode)."""
        ...

    async def get_file(self, path: str) -> bytes:
        """Read a regular file from the session (persistent mode), bounded by `maxFileSize`."""
        ...

    def pool_state(self) -> list[PoolState]:
        """Warm containers this engine keeps, per image (a remote engine keeps none itself)."""
        ...
