"""The engines that serve stateless requests: long-lived, shared, one per engine-level option set.

The reference server built and tore down an engine (and its pool) for every request, so nothing
warm survived. Here one DockerIsol8 per distinct set of engine-level options (network mode, filter,
seccomp, image) lives as long as the server; requests only differ in per-request limits, which the
engine applies per execution. A few option sets are kept; the least recently used idle one goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from engine import DockerIsol8, Engine, Isol8Options, PoolState
from engine.cluster import RayIsol8, warm_nodes

log = logging.getLogger("isol8.server")

MAX_ENGINES = 16


@dataclass
class _Entry:
    engine: DockerIsol8
    busy: int = 0


class SharedEngines:
    """`use(options)` lends the engine for `options`; at most `max_concurrent` runs at once overall."""

    def __init__(self, max_concurrent: int, max_engines: int = MAX_ENGINES) -> None:
        self._engines: OrderedDict[str, _Entry] = OrderedDict()
        self._slots = asyncio.Semaphore(max_concurrent)
        self._max_engines = max_engines
        self._lock = asyncio.Lock()
        self._stopping: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def use(self, options: Isol8Options) -> AsyncIterator[Engine]:
        async with self._slots:
            entry = await self._entry(options)
            entry.busy += 1
            try:
                yield entry.engine
            finally:
                entry.busy -= 1

    async def warm(self, options: Isol8Options) -> None:
        """Create (and start, which warms the config's `prewarm` runtimes) the engine for `options`."""
        await self._entry(options)

    async def _entry(self, options: Isol8Options) -> _Entry:
        key = options.model_dump_json()
        async with self._lock:  # two first requests with the same options must not build two engines
            entry = self._engines.get(key)
            if entry is None:
                engine = DockerIsol8(options)
                await engine.start()
                entry = self._engines[key] = _Entry(engine)
                log.debug("engine %d created for %s", len(self._engines), key)
                self._evict(keep=key)
            self._engines.move_to_end(key)
            return entry

    def _evict(self, keep: str) -> None:
        idle = [key for key, entry in self._engines.items() if entry.busy == 0 and key != keep]
        while len(self._engines) > self._max_engines and idle:
            stale = self._engines.pop(idle.pop(0))
            task = asyncio.get_running_loop().create_task(stale.engine.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    def pool_state(self) -> list[PoolState]:
        return [state for entry in self._engines.values() for state in entry.engine.pool_state()]

    async def remove_containers(self) -> int:
        """Remove every container these engines hold (runs in flight end); fresh engines replace them."""
        count = sum(state.busy + state.ready + state.starting for state in self.pool_state())
        await self.stop()
        return count

    async def stop(self) -> None:
        engines = [entry.engine for entry in self._engines.values()]
        self._engines.clear()
        await asyncio.gather(*(engine.stop() for engine in engines), *self._stopping, return_exceptions=True)


class ClusterEngines:
    """`SharedEngines` on a Ray cluster (`server.cluster`): one RayIsol8 per option set. The warm pools
    live in the nodes' engines, which every server of the cluster shares, so this process holds none."""

    def __init__(self, address: str, max_concurrent: int) -> None:
        self.address = address
        self._engines: dict[str, RayIsol8] = {}
        self._slots = asyncio.Semaphore(max_concurrent)

    @contextlib.asynccontextmanager
    async def use(self, options: Isol8Options) -> AsyncIterator[Engine]:
        async with self._slots:
            key = options.model_dump_json()
            engine = self._engines.get(key)
            if engine is None:
                engine = self._engines[key] = RayIsol8(self.address, options)
            yield engine

    async def warm(self, options: Isol8Options) -> None:
        async with self.use(options) as engine:
            await engine.start()
        await warm_nodes(options)

    def pool_state(self) -> list[PoolState]:
        return []

    async def remove_containers(self) -> int:
        """Nothing here: the nodes' containers belong to their engines, shared with other servers."""
        return 0

    async def stop(self) -> None:
        self._engines.clear()
