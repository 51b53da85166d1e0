"""Sessions: a persistent engine per (tenant, sessionId), created by the first execute that names it.

State under /sandbox and /tmp carries over between a session's requests. A session idle longer than
`cleanup.maxContainerAgeMs` is pruned, but never while a request is using it: the in-use count is
taken and checked under the same lock. Sessions are namespaced by the caller's tenant so one API
key cannot reach another tenant's files by guessing an id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

from engine import DockerIsol8, Isol8Options, PoolState
from engine.cluster import RayIsol8, delete_session
from engine.errors import SessionLost, SessionNotFound, TooManySessions
from engine.models import Model

log = logging.getLogger("isol8.server")


class SessionInfo(Model):
    id: str
    runtime: str | None = None
    is_active: bool = False
    created_at: str
    last_accessed_at: str
    container_id: str | None = None
    stateful: bool = False  # its code runs on one interpreter that keeps variables (reset: POST /session/{id}/reset)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Session:
    id: str
    tenant_id: str
    engine: DockerIsol8 | RayIsol8
    created_at: float = field(default_factory=time.time)
    last_accessed_at: float = field(default_factory=time.time)
    active: int = 0  # requests using it now; a session in use is never pruned

    def touch(self) -> None:
        self.last_accessed_at = time.time()

    def info(self) -> SessionInfo:
        return SessionInfo(
            id=self.id,
            runtime=self.engine.options.runtime,
            is_active=self.active > 0,
            created_at=_iso(self.created_at),
            last_accessed_at=_iso(self.last_accessed_at),
            container_id=self.engine.container_id,
            stateful=self.engine.options.stateful,
        )


class SessionRegistry:
    """Sessions by (tenant, id), capped overall and per tenant so one key holder cannot take every
    slot. The caps are checked and the session added under one lock: concurrent creations never
    overshoot them."""

    def __init__(self, max_sessions: int, max_per_tenant: int, idle_ms: int, cluster: str | None = None) -> None:
        self.cluster = cluster  # a Ray address: sessions live on the cluster, shared with its other servers
        self.max_sessions = max_sessions
        self.max_per_tenant = max_per_tenant
        self.idle_ms = idle_ms
        self._sessions: dict[tuple[str, str], Session] = {}
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def use(self, tenant_id: str, session_id: str, create: Isol8Options | None = None) -> AsyncIterator[Session]:
        """Lend a session, creating it from `create` (a persistent engine's options) if it is new."""
        key = (tenant_id, session_id)
        async with self._lock:
            session = self._sessions.get(key)
            if session is None and create is None and self.cluster is not None:
                # Another server of the cluster may have made it: join it, never create it.
                session = self._sessions[key] = Session(session_id, tenant_id, self._cluster_engine(key, None))
            if session is None:
                if create is None:
                    raise SessionNotFound()
                if len(self._sessions) >= self.max_sessions:
                    raise TooManySessions.over(self.max_sessions)
                if sum(tenant == tenant_id for tenant, _ in self._sessions) >= self.max_per_tenant:
                    raise TooManySessions.over(self.max_per_tenant, tenant_id)
                engine = DockerIsol8(create) if self.cluster is None else self._cluster_engine(key, create)
                session = self._sessions[key] = Session(session_id, tenant_id, engine)
                log.debug("session %s created for tenant %s", session_id, tenant_id)
            session.active += 1
            session.touch()
        try:
            if self.cluster is not None:  # joined: learn how the session was made (e.g. stateful)
                await session.engine.start()
            yield session
        except (SessionNotFound, SessionLost):
            # On a cluster: joined nothing, deleted by another server, or lost with its node. The handle
            # goes; the next request asks the cluster again (a lost session stays lost there).
            if self.cluster is not None:
                self._sessions.pop(key, None)
            raise
        finally:
            session.active -= 1
            session.touch()

    def _cluster_engine(self, key: tuple[str, str], create: Isol8Options | None) -> RayIsol8:
        """The cluster session for (tenant, id): its Ray id quotes both, so no pair can spell another's."""
        cluster_id = "/".join(quote(part, safe="") for part in key)
        options = create or Isol8Options(mode="persistent")
        return RayIsol8(self.cluster, options, session_id=cluster_id, create=create is not None)

    def list_for(self, tenant_id: str) -> list[SessionInfo]:
        sessions = [s for (tenant, _), s in self._sessions.items() if tenant == tenant_id]
        return [s.info() for s in sorted(sessions, key=lambda s: s.created_at)]

    def __len__(self) -> int:
        return len(self._sessions)

    def per_tenant(self) -> list[int]:
        """How many sessions each tenant with any has open (no tenant ids: for the metrics)."""
        counts: dict[str, int] = {}
        for tenant, _ in self._sessions:
            counts[tenant] = counts.get(tenant, 0) + 1
        return list(counts.values())

    def pool_state(self) -> list[PoolState]:
        return [state for session in self._sessions.values() for state in session.engine.pool_state()]

    async def delete(self, tenant_id: str, session_id: str) -> bool:
        """Stop and forget the session (a run in flight ends); False if there was none."""
        async with self._lock:
            session = self._sessions.pop((tenant_id, session_id), None)
        if session is not None:
            await session.engine.stop()
        elif self.cluster is not None:  # made by another server of the cluster
            cluster_id = self._cluster_engine((tenant_id, session_id), None).session_id or ""
            return await delete_session(cluster_id, self.cluster)
        return session is not None

    async def prune(self) -> list[str]:
        """Stop sessions idle longer than `idle_ms` and not in use; their ids."""
        cutoff = time.time() - self.idle_ms / 1000
        async with self._lock:
            stale = [key for key, s in self._sessions.items() if s.active == 0 and s.last_accessed_at < cutoff]
            victims = [self._sessions.pop(key) for key in stale]
        await asyncio.gather(*(s.engine.stop() for s in victims), return_exceptions=True)
        for session in victims:
            log.info("session %s pruned after %d ms idle", session.id, self.idle_ms)
        return [s.id for s in victims]

    async def prune_forever(self) -> None:
        # Often enough that a session outlives its idle limit by at most a quarter of it (or a minute).
        interval = min(60.0, max(0.25, self.idle_ms / 4000))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.prune()
            except Exception:  # one bad stop must not end pruning for the server's life
                log.exception("session prune failed")

    async def stop_all(self) -> tuple[int, list[str]]:
        """Stop every session: (how many, error messages)."""
        async with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        results = await asyncio.gather(*(s.engine.stop() for s in sessions), return_exceptions=True)
        errors = [f"{s.id}: {r}" for s, r in zip(sessions, results, strict=True) if isinstance(r, BaseException)]
        return len(sessions) - len(errors), errors
