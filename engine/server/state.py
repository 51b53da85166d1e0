"""What one server process owns and shares between requests: engines, sessions, policy, key store.

Engines are long-lived and shared (one per option set, engine/server/engines.py) instead of one per
request as in the reference; sessions are per tenant; background tasks prune sessions and purge
expired keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.exceptions import HTTPException

from engine import Engine, PoolState
from engine.config import Isol8Config
from engine.errors import Isol8Error
from engine.server.auth import Authenticator, KeyStore, Principal, open_store
from engine.server.engines import ClusterEngines, SharedEngines
from engine.server.policy import Plan, Policy
from engine.server.sessions import SessionRegistry

log = logging.getLogger("isol8.server")

KEY_PURGE_EVERY_S = 3600.0


@dataclass
class ServerSettings:
    config: Isol8Config
    master_key: str
    auth_db: str | None = None  # overrides the config's `server.authDb`
    cluster: str | None = None  # overrides the config's `server.cluster` (a Ray address)


class ServerState:
    """Everything one server process owns: its engines, sessions, key store and background tasks."""

    def __init__(self, settings: ServerSettings) -> None:
        config = settings.config
        self.config = config
        self.policy = Policy(config)
        server = config.server
        cluster = settings.cluster or server.cluster
        self.engines: SharedEngines | ClusterEngines = (
            SharedEngines(config.max_concurrent) if cluster is None else ClusterEngines(cluster, config.max_concurrent)
        )
        self.sessions = SessionRegistry(
            server.max_sessions, server.max_sessions_per_tenant, config.cleanup.max_container_age_ms, cluster
        )
        connection = settings.auth_db or config.server.auth_db
        self.store: KeyStore | None = open_store(connection) if connection else None
        self.auth = Authenticator(settings.master_key, self.store)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        # The engine for requests that bring no options: built now, so the first request finds it
        # (with the config's `prewarm` runtimes already warm).
        await self.engines.warm(self.config.engine_options())
        if self.config.cleanup.auto_prune:
            self._tasks.append(asyncio.create_task(self.sessions.prune_forever()))
        if self.store is not None:
            self._tasks.append(asyncio.create_task(self._purge_keys_forever()))

    async def stop(self) -> None:
        """Stop every container this server created; the images stay (the next start needs them)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.sessions.cluster is None:  # a cluster's sessions outlive this server: other servers share them
            await self.sessions.stop_all()
        await self.engines.stop()
        if self.store is not None:
            self.store.close()

    async def _purge_keys_forever(self) -> None:
        assert self.store is not None
        while True:
            await asyncio.sleep(KEY_PURGE_EVERY_S)
            try:
                await asyncio.to_thread(self.store.purge)
            except Exception:
                log.exception("purging expired API keys failed")

    @contextlib.asynccontextmanager
    async def engine_for(self, principal: Principal, session_id: str | None, plan: Plan) -> AsyncIterator[Engine]:
        """The session's engine (created on first use) or the shared engine for the plan's options."""
        where = f"sessionId={session_id}" if session_id else "ephemeral"
        log.debug("[Server] execute runtime=%s tenant=%s %s", plan.request.runtime, principal.tenant_id, where)
        if session_id is None:
            if plan.stateful:
                raise Isol8Error(
                    "stateful needs a sessionId: the interpreter that keeps variables lives in a session "
                    "(pass any new sessionId to create one)"
                )
            async with self.engines.use(plan.engine_options) as engine:
                yield engine
        else:
            async with self.sessions.use(principal.tenant_id, session_id, plan.session_options()) as session:
                plan.check_session(session.engine.options)
                yield session.engine

    def pool_state(self) -> list[PoolState]:
        """Warm containers per image over every engine (shared and sessions'): `/health` and `/metrics`."""
        pool: dict[str, PoolState] = {}
        for item in (*self.engines.pool_state(), *self.sessions.pool_state()):
            total = pool.setdefault(item.image, PoolState(image=item.image))
            total.ready += item.ready
            total.busy += item.busy
            total.starting += item.starting
        return sorted(pool.values(), key=lambda s: s.image)

    def store_or_refuse(self) -> KeyStore:
        if self.store is None:
            raise HTTPException(400, "DB-backed auth is not enabled")
        return self.store
