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
from collections import defaultdict, deque
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


class Pool:
    def __init__(self, docker: DockerClient, strategy: Strategy, size: int, cap: int) -> None:
        self.docker = docker
        self.strategy = strategy
        self.size = size
        self.cap = max(size, cap)  # the most a `secure` key keeps ready or starting for a burst
        self._last_arrival: dict[str, float] = {}
        self._gap: dict[str, float] = {}  # smoothed seconds between acquires, per key
        self._start_s: dict[str, float] = {}  # smoothed seconds a launch takes, per key
        self._ready: dict[str, deque[Sandbox]] = defaultdict(deque)
        self._starting: dict[str, int] = defaultdict(int)
        self._busy: dict[str, int] = defaultdict(int)
        self._images: dict[str, str] = {}
        self._scrubbing: dict[str, int] = defaultdict(int)
        self._configs: dict[str, dict[str, Any]] = {}
        self._waiters: dict[str, deque[asyncio.Future[Sandbox]]] = defaultdict(deque)
        self._peak: dict[str, int] = defaultdict(int)  # most busy at once since the key was last idle
        self._trims: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._starts: set[asyncio.Task[None]] = set()  # starts in flight: a closing pool cancels them
        self._closed = False

    async def acquire(self, config: dict[str, Any]) -> Sandbox:
        key = pool_key(config)
        self._arrived(key)
        self._images[key] = config["image"]
        self._configs[key] = config
        self._busy[key] += 1
        self._peak[key] = max(self._peak[key], self._busy[key])
        if key in self._trims:
            self._trims.pop(key).cancel()
        try:
            try:
                sandbox = await self._take(key, config)
            except _Retry:
                sandbox = await Sandbox.launch(self.docker, config)
        except BaseException:
            self._busy[key] -= 1
            raise
        sandbox.pool_key = key
        if self.strategy == "secure":
            self._refill(key, config)
        return sandbox

    async def _take(self, key: str, config: dict[str, Any]) -> Sandbox:
        """A ready sandbox; else one being started or scrubbed (a few ms away); else a new one."""
        while self._ready[key]:
            sandbox = self._ready[key].popleft()
            if sandbox.alive:
                return sandbox
            self._spawn(self._destroy(sandbox))  # died while waiting (e.g. the daemon restarted)
        if self._starting[key] + self._scrubbing[key] > len(self._waiters[key]):
            waiter: asyncio.Future[Sandbox] = asyncio.get_running_loop().create_future()
            self._waiters[key].append(waiter)
            try:
                return await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._put(key, waiter.result())
                raise
        return await Sandbox.launch(self.docker, config)

    def _put(self, key: str, sandbox: Sandbox) -> None:
        """A sandbox is ready: to the first waiter, else onto the ready queue."""
        if not sandbox.alive:
            self._spawn(self._destroy(sandbox))
            self._wake_waiters(key)
            return
        waiters = self._waiters[key]
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(sandbox)
                return
        self._ready[key].append(sandbox)

    def _wake_waiters(self, key: str) -> None:
        """A start or scrub failed: waiters it was meant for start their own sandbox instead."""
        while len(self._waiters[key]) > self._starting[key] + self._scrubbing[key]:
            waiter = self._waiters[key].pop()
            if not waiter.done():
                waiter.set_exception(_Retry())

    def release(self, sandbox: Sandbox, reusable: bool = True) -> None:
        """Give a sandbox back after an execution (in the background: the caller has its result)."""
        key = sandbox.pool_key
        self._busy[key] -= 1
        keep = self.strategy == "fast" and reusable and not self._closed
        if keep:
            self._scrubbing[key] += 1
            self._spawn(self._recycle(key, sandbox))
        else:
            self._spawn(self._destroy(sandbox))
            if self.strategy == "fast" and not self._closed and key in self._configs:
                self._refill(key, self._configs[key])
        if self._busy[key] == 0 and not self._closed:
            self._trims[key] = asyncio.get_running_loop().call_later(IDLE_TRIM_S, self._trim, key)

    async def prewarm(self, configs: list[dict[str, Any]]) -> None:
        for config in configs:
            key = pool_key(config)
            self._images[key] = config["image"]
            self._configs[key] = config
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
        return sorted((s for s in per_image.values() if s.ready or s.busy or s.starting), key=lambda s: s.image)

    async def close(self) -> None:
        """Remove every ready container; starts still in flight are cancelled, not waited for (what
        they made is removed in the background as soon as it exists)."""
        self._closed = True
        for timer in self._trims.values():
            timer.cancel()
        self._trims.clear()
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(_Retry())
        for start in self._starts:
            start.cancel()
        await self.settle()
        doomed = [sandbox for ready in self._ready.values() for sandbox in ready]
        self._ready.clear()
        await asyncio.gather(*(sandbox.destroy() for sandbox in doomed), return_exceptions=True)

    # --- background work --------------------------------------------------------------------------
    def _arrived(self, key: str) -> None:
        now = time.monotonic()
        last = self._last_arrival.get(key)
        self._last_arrival[key] = now
        if last is not None:
            self._gap[key] = _smooth(self._gap.get(key), now - last)

    def wanted(self, key: str) -> int:
        """How many sandboxes a key keeps ready or starting: `size`, or for `secure` what covers the
        start time at the arrival rate seen (fast keys come back from their scrub instead)."""
        gap, start = self._gap.get(key), self._start_s.get(key)
        if self.strategy != "secure" or not self.size or not gap or start is None:
            return self.size  # a pool of 0 stays off: no container is started ahead
        return min(self.cap, max(self.size, math.ceil(start / gap)))

    def _refill(self, key: str, config: dict[str, Any]) -> None:
        missing = self.wanted(key) - len(self._ready[key]) - self._starting[key]
        for _ in range(max(0, missing)):
            self._starting[key] += 1
            task = self._spawn(self._start(key, config))
            self._starts.add(task)
            task.add_done_callback(self._starts.discard)

    async def _start(self, key: str, config: dict[str, Any]) -> None:
        started = time.monotonic()
        try:
            sandbox = await Sandbox.launch(self.docker, config)
        except asyncio.CancelledError:  # the pool is closing
            self._starting[key] -= 1
            raise
        except Exception as exc:  # a waiter starts one itself and reports the error
            log.debug("pool start for %s failed: %s", config["image"], exc)
            self._starting[key] -= 1
            self._wake_waiters(key)
            return
        self._starting[key] -= 1
        self._start_s[key] = _smooth(self._start_s.get(key), time.monotonic() - started)
        sandbox.pool_key = key
        if self._closed:
            await sandbox.destroy()
        else:
            self._put(key, sandbox)

    async def _recycle(self, key: str, sandbox: Sandbox) -> None:
        try:
            error = await asyncio.wait_for(sandbox.scrub(), 10)
        except Exception as exc:
            error = str(exc) or type(exc).__name__
        finally:
            self._scrubbing[key] -= 1
        wanted = self._waiters[key] or len(self._ready[key]) < max(self.size, self._peak[key])
        if error is None and not self._closed and wanted:
            self._put(key, sandbox)
            return
        if error:
            log.debug("sandbox %s not reused: %s", sandbox.container_id[:12], error)
            self._wake_waiters(key)
        await sandbox.destroy()

    def _trim(self, key: str) -> None:
        """Idle for a while: back to `size` ready sandboxes for this key, and no burst remembered."""
        self._trims.pop(key, None)
        self._peak[key] = 0
        self._gap.pop(key, None)
        self._last_arrival.pop(key, None)
        ready = self._ready[key]
        while len(ready) > self.size:
            self._spawn(self._destroy(ready.pop()))

    async def _destroy(self, sandbox: Sandbox) -> None:
        await sandbox.destroy()

    def _spawn(self, coroutine: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _smooth(average: float | None, sample: float) -> float:
    return sample if average is None else (1 - SMOOTHING) * average + SMOOTHING * sample


class _Retry(Exception):
    """Raised into a waiter whose promised sandbox will not come."""
