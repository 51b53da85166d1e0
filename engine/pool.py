"""Warm containers, started ahead of demand so an execution skips container start-up.

Containers with identical settings are interchangeable; each settings key (image, limits,
network policy, ...) has its own queue of ready sandboxes.
- `secure`: a sandbox serves one execution, then it is destroyed; the pool keeps `size` more
  started in the background.
- `fast`: after an execution the agent scrubs the sandbox (kills every process, empties
  /sandbox, /tmp, /dev/shm and IPC objects, and verifies it); a verified one goes back to the
  pool, any other is destroyed.
More executions at once than `size` get freshly started sandboxes (the pool grows); on release,
sandboxes beyond `size` are destroyed (it shrinks back).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import defaultdict, deque
from typing import Any, Literal

from engine.docker import DockerClient
from engine.models import PoolState
from engine.sandbox import Sandbox

log = logging.getLogger("isol8.pool")
Strategy = Literal["secure", "fast"]


def pool_key(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


class Pool:
    def __init__(self, docker: DockerClient, strategy: Strategy, size: int) -> None:
        self.docker = docker
        self.strategy = strategy
        self.size = size
        self._ready: dict[str, deque[Sandbox]] = defaultdict(deque)
        self._starting: dict[str, int] = defaultdict(int)
        self._busy: dict[str, int] = defaultdict(int)
        self._images: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def acquire(self, config: dict[str, Any]) -> Sandbox:
        key = pool_key(config)
        self._images[key] = config["image"]
        self._busy[key] += 1
        try:
            ready = self._ready[key]
            sandbox = ready.popleft() if ready else await Sandbox.launch(self.docker, config)
        except BaseException:
            self._busy[key] -= 1
            raise
        sandbox.pool_key = key
        if self.strategy == "secure":
            self._refill(key, config)
        return sandbox

    def release(self, sandbox: Sandbox, reusable: bool = True) -> None:
        """Give a sandbox back after an execution (in the background: the caller has its result)."""
        key = sandbox.pool_key
        self._busy[key] -= 1
        keep = self.strategy == "fast" and reusable and not self._closed
        self._spawn(self._recycle(key, sandbox) if keep else self._destroy(sandbox))

    async def prewarm(self, configs: list[dict[str, Any]]) -> None:
        for config in configs:
            key = pool_key(config)
            self._images[key] = config["image"]
            self._refill(key, config)
        await self.settle()

    async def settle(self) -> None:
        """Wait for background starts, scrubs and removals (tests, benchmarks and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def state(self) -> list[PoolState]:
        keys = set(self._ready) | set(self._starting) | set(self._busy)
        per_image: dict[str, PoolState] = {}
        for key in keys:
            image = self._images[key]
            state = per_image.setdefault(image, PoolState(image=image))
            state.ready += len(self._ready[key])
            state.busy += self._busy[key]
            state.starting += self._starting[key]
        return sorted(per_image.values(), key=lambda s: s.image)

    async def close(self) -> None:
        self._closed = True
        await self.settle()
        doomed = [sandbox for ready in self._ready.values() for sandbox in ready]
        self._ready.clear()
        await asyncio.gather(*(sandbox.destroy() for sandbox in doomed), return_exceptions=True)

    # --- background work --------------------------------------------------------------------------
    def _refill(self, key: str, config: dict[str, Any]) -> None:
        missing = self.size - len(self._ready[key]) - self._starting[key]
        for _ in range(max(0, missing)):
            self._starting[key] += 1
            self._spawn(self._start(key, config))

    async def _start(self, key: str, config: dict[str, Any]) -> None:
        try:
            sandbox = await Sandbox.launch(self.docker, config)
        except Exception as exc:  # the next acquire starts one itself and reports the error
            log.debug("pool start for %s failed: %s", config["image"], exc)
            return
        finally:
            self._starting[key] -= 1
        sandbox.pool_key = key
        if self._closed:
            await sandbox.destroy()
        else:
            self._ready[key].append(sandbox)

    async def _recycle(self, key: str, sandbox: Sandbox) -> None:
        try:
            error = await asyncio.wait_for(sandbox.scrub(), 10)
        except Exception as exc:
            error = str(exc) or type(exc).__name__
        if error is None and not self._closed and len(self._ready[key]) < self.size:
            self._ready[key].append(sandbox)
            return
        if error:
            log.debug("sandbox %s not reused: %s", sandbox.container_id[:12], error)
        await sandbox.destroy()

    async def _destroy(self, sandbox: Sandbox) -> None:
        await sandbox.destroy()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
