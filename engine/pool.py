"""Warm containers, started ahead of demand so an execution skips container start-up.

Containers with identical settings are interchangeable; each settings key (image, limits,
network policy, ...) has its own queue of ready sandboxes.
- `secure`: a sandbox serves one execution, then it is destroyed; the pool keeps more started
  in the background: `size`, or, when executions arrive faster than a container starts, as many
  as cover a start at that rate (Little's law: start time / time between arrivals), up to `cap`.
- `fast`: after an execution the agent scrubs the sandbox (kills every process, empties
  /sandbox, /tmp, /dev/shm and IPC objects, and verifies it); a verified one goes back to the
  pool, any other is destroyed.
More executions at once than `size` get freshly started sandboxes: the pool grows to the demand
it sees (reused sandboxes are kept up to the peak number busy at once), and shrinks back to `size`
once that settings key has been idle for IDLE_TRIM_S.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.docker import DockerClient
from engine.models import PoolState
from engine.sandbox import Sandbox

log = logging.getLogger("isol8.pool")
Strategy = Literal["secure", "fast"]
IDLE_TRIM_S = 10.0
SMOOTHING = 0.3  # weight of the newest sample in the moving averages of arrival gaps and start times


def pool_key(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class _Key:
    """Everything the pool knows about one settings key."""

    config: dict[str, Any]
    ready: deque[Sandbox] = field(default_factory=deque)
    waiters: deque[asyncio.Future[Sandbox]] = field(default_factory=deque)
    starting: int = 0
    scrubbing: int = 0
    busy: int = 0
    peak: int = 0  # most busy at once since the key was last idle
    trim: asyncio.TimerHandle | None = None
    last_arrival: float | None = None
    gap: float | None = None  # smoothed seconds between acquires
    start_s: float | None = None  # smoothed seconds a launch takes

    @property
    def promised(self) -> int:
        """Sandboxes on their way: being started or scrubbed."""
        return self.starting + self.scrubbing


class Pool:
    def __init__(self, docker: DockerClient, strategy: Strategy, size: int, cap: int) -> None:
        self.docker = docker
        self.strategy = strategy
        self.size = size
        self.cap = max(size, cap)  # the most a `secure` key keeps ready or starting for a burst
        self._keys: dict[str, _Key] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._starts: set[asyncio.Task[None]] = set()  # starts in flight: a closing pool cancels them
        self._closed = False

    def _key(self, config: dict[str, Any]) -> tuple[str, _Key]:
        name = pool_key(config)
        if name not in self._keys:
            self._keys[name] = _Key(config)
        return name, self._keys[name]

    async def acquire(self, config: dict[str, Any]) -> Sandbox:
        name, key = self._key(config)
        self._arrived(key)
        key.busy += 1
        key.peak = max(key.peak, key.busy)
        if key.trim is not None:
            key.trim.cancel()
            key.trim = None
        try:
            try:
                sandbox = await self._take(key)
            except _Retry:
                sandbox = await Sandbox.launch(self.docker, config)
        except BaseException:
            key.busy -= 1
            raise
        sandbox.pool_key = name
        if self.strategy == "secure":
            self._refill(name)
        return sandbox

    async def _take(self, key: _Key) -> Sandbox:
        """A ready sandbox; else one being started or scrubbed (a few ms away); else a new one."""
        while key.ready:
            sandbox = key.ready.popleft()
            if sandbox.alive:
                log.debug("sandbox %s taken from the pool", sandbox.container_id[:12])
                return sandbox
            self._spawn(self._destroy(sandbox))  # died while waiting (e.g. the daemon restarted)
        if key.promised > len(key.waiters):
            waiter: asyncio.Future[Sandbox] = asyncio.get_running_loop().create_future()
            key.waiters.append(waiter)
            try:
                log.debug("waiting for a pool sandbox being started or scrubbed")
                return await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._put(key, waiter.result())
                raise
        log.debug("no pool sandbox ready: starting one")
        return await Sandbox.launch(self.docker, key.config)

    def _put(self, key: _Key, sandbox: Sandbox) -> None:
        """A sandbox is ready: to the first waiter, else onto the ready queue."""
        if not sandbox.alive:
            self._spawn(self._destroy(sandbox))
            self._wake_waiters(key)
            return
        while key.waiters:
            waiter = key.waiters.popleft()
            if not waiter.done():
                waiter.set_result(sandbox)
                return
        key.ready.append(sandbox)

    def _wake_waiters(self, key: _Key) -> None:
        """A start or scrub failed: waiters it was meant for start their own sandbox instead."""
        while len(key.waiters) > key.promised:
            waiter = key.waiters.pop()
            if not waiter.done():
                waiter.set_exception(_Retry())

    def release(self, sandbox: Sandbox, reusable: bool = True) -> None:
        """Give a sandbox back after an execution (in the background: the caller has its result)."""
        name = sandbox.pool_key
        key = self._keys[name]
        key.busy -= 1
        if self.strategy == "fast" and reusable and not self._closed:
            key.scrubbing += 1
            self._spawn(self._recycle(key, sandbox))
        else:
            self._spawn(self._destroy(sandbox))
            if self.strategy == "fast" and not self._closed:
                self._refill(name)
        if key.busy == 0 and not self._closed:
            key.trim = asyncio.get_running_loop().call_later(IDLE_TRIM_S, self._trim, key)

    async def prewarm(self, configs: list[dict[str, Any]]) -> None:
        for config in configs:
            self._refill(self._key(config)[0])
        await self.settle()

    async def settle(self) -> None:
        """Wait for background starts, scrubs and removals (tests, benchmarks and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def state(self) -> list[PoolState]:
        per_image: dict[str, PoolState] = {}
        for key in self._keys.values():
            image = key.config["image"]
            state = per_image.setdefault(image, PoolState(image=image))
            state.ready += len(key.ready)
            state.busy += key.busy
            state.starting += key.starting
        return sorted((s for s in per_image.values() if s.ready or s.busy or s.starting), key=lambda s: s.image)

    async def close(self) -> None:
        """Remove every ready container; starts still in flight are cancelled, not waited for (what
        they made is removed in the background as soon as it exists)."""
        self._closed = True
        for key in self._keys.values():
            if key.trim is not None:
                key.trim.cancel()
                key.trim = None
            for waiter in key.waiters:
                if not waiter.done():
                    waiter.set_exception(_Retry())
        for start in self._starts:
            start.cancel()
        await self.settle()
        doomed = [sandbox for key in self._keys.values() for sandbox in key.ready]
        for key in self._keys.values():
            key.ready.clear()
        await asyncio.gather(*(sandbox.destroy() for sandbox in doomed), return_exceptions=True)

    # --- background work --------------------------------------------------------------------------
    def _arrived(self, key: _Key) -> None:
        now = time.monotonic()
        if key.last_arrival is not None:
            key.gap = _smooth(key.gap, now - key.last_arrival)
        key.last_arrival = now

    def wanted(self, name: str) -> int:
        """How many sandboxes a key keeps ready or starting: `size`, or for `secure` what covers the
        start time at the arrival rate seen (fast keys come back from their scrub instead)."""
        key = self._keys[name]
        if self.strategy != "secure" or not self.size or not key.gap or key.start_s is None:
            return self.size  # a pool of 0 stays off: no container is started ahead
        return min(self.cap, max(self.size, math.ceil(key.start_s / key.gap)))

    def _refill(self, name: str) -> None:
        key = self._keys[name]
        for _ in range(max(0, self.wanted(name) - len(key.ready) - key.starting)):
            key.starting += 1
            task = self._spawn(self._start(name, key))
            self._starts.add(task)
            task.add_done_callback(self._starts.discard)

    async def _start(self, name: str, key: _Key) -> None:
        started = time.monotonic()
        try:
            sandbox = await Sandbox.launch(self.docker, key.config)
        except asyncio.CancelledError:  # the pool is closing
            key.starting -= 1
            raise
        except Exception as exc:  # a waiter starts one itself and reports the error
            log.debug("pool start for %s failed: %s", key.config["image"], exc)
            key.starting -= 1
            self._wake_waiters(key)
            return
        key.starting -= 1
        key.start_s = _smooth(key.start_s, time.monotonic() - started)
        sandbox.pool_key = name
        if self._closed:
            await sandbox.destroy()
        else:
            self._put(key, sandbox)

    async def _recycle(self, key: _Key, sandbox: Sandbox) -> None:
        try:
            error = await asyncio.wait_for(sandbox.scrub(), 10)
        except Exception as exc:
            error = str(exc) or type(exc).__name__
        finally:
            key.scrubbing -= 1
        wanted = key.waiters or len(key.ready) < max(self.size, key.peak)
        if error is None and not self._closed and wanted:
            log.debug("sandbox %s scrubbed for reuse", sandbox.container_id[:12])
            self._put(key, sandbox)
            return
        if error:
            log.debug("sandbox %s not reused: %s", sandbox.container_id[:12], error)
            if not self._closed:  # a replacement, as for one not reusable: the next run need not start cold
                self._refill(sandbox.pool_key)
            self._wake_waiters(key)  # those the replacement does not cover
        await sandbox.destroy()

    def _trim(self, key: _Key) -> None:
        """Idle for a while: back to `size` ready sandboxes for this key, and no burst remembered."""
        key.trim = None
        key.peak = 0
        key.gap = key.last_arrival = None
        while len(key.ready) > self.size:
            self._spawn(self._destroy(key.ready.pop()))

    async def _destroy(self, sandbox: Sandbox) -> None:
        await sandbox.destroy()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _smooth(average: float | None, sample: float) -> float:
    return sample if average is None else (1 - SMOOTHING) * average + SMOOTHING * sample


class _Retry(Exception):
    """Raised into a waiter whose promised sandbox will not come."""
