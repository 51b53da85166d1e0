"""RayIsol8: the engine interface over a Ray cluster, one hardened DockerIsol8 per node.

- A node opts in by offering the custom resource `isol8` (`ray start --resources='{"isol8": 1}'`);
  it needs Docker and the isol8 images (`isol8 setup`).
- Each such node gets one node engine: a detached actor named `node:<node id>` in the Ray namespace
  `isol8`, pinned to its node (hard node affinity), holding a DockerIsol8 per option set with its
  warm pool. Every driver (servers, notebooks, the CLI) shares these.
- A stateless execution goes to the node engine this driver has the fewest runs in flight on (of
  those, the one it used longest ago, so a node's pool has time to refill); streams are Ray
  streaming generators; leaving a stream early cancels the run on its node.
- A persistent session is a detached actor named `session:<id>` in the same namespace, pinned to
  the node with the fewest sessions. Any driver finds it by id. Sessions never move: when their node
  dies they are lost (the GCS key-value store remembers where each lived, so every driver answers
  SessionLost, never a fresh empty session under the old id).
- A node that dies fails its runs in flight with NodeLost naming the node; new work goes to the
  nodes left. Its containers die with its engine's process (their agents see the stream close).

Ray is imported only here, and only when a RayIsol8 starts: `pip install 'isol8[ray]'`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from pydantic import Field

from engine.audit import Caller, acting_for, current_caller
from engine.engine import DockerIsol8
from engine.errors import (
    ClusterUnavailable,
    ConfigError,
    Isol8Error,
    NodeLost,
    NotFiltered,
    NotStateful,
    SessionLost,
    SessionNotFound,
)
from engine.models import (
    ExecutionRequest,
    ExecutionResult,
    Isol8Options,
    Model,
    NetworkFilter,
    PoolState,
    StreamEvent,
)
from engine.terminal import Terminal

if TYPE_CHECKING:
    from types import ModuleType

RESOURCE = "isol8"
"""The custom Ray resource a node offers to host isol8 sandboxes."""
NAMESPACE = "isol8"
"""The Ray namespace of isol8's named actors (node engines and sessions)."""
SESSION_KEY = "isol8/session/"
"""GCS key-value prefix: session id -> the id of the node it lives on."""
NODE_REFRESH_S = 5.0
MAX_NODE_ENGINES = 16
T = TypeVar("T")


def ray_module() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise ConfigError("The cluster backend needs Ray: pip install 'isol8[ray]'") from None
    return ray


class NodeStatus(Model):
    """One node of `isol8 cluster status`."""

    node_id: str
    address: str
    alive: bool
    running: int = 0
    sessions: int = 0
    pools: list[PoolState] = Field(default_factory=list)


# --- the actors ---------------------------------------------------------------------------------
class _Relay:
    """`execute_stream` for drivers on Ray Client, which has no streaming generators: the events
    wait in a queue on the actor and the driver fetches them in batches (each fetch waits for one)."""

    def __init__(self) -> None:
        self._relays: dict[str, tuple[asyncio.Queue[StreamEvent | BaseException | None], asyncio.Task[None]]] = {}

    async def relay_open(self, *args: Any) -> str:
        """Start the subclass's `execute_stream(*args)` into a queue; the relay's id."""
        queue: asyncio.Queue[StreamEvent | BaseException | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                stream: AsyncGenerator[StreamEvent] = cast(Any, self).execute_stream(*args)
                async with contextlib.aclosing(stream) as events:
                    async for event in events:
                        queue.put_nowait(event)
                queue.put_nowait(None)
            except Exception as exc:
                queue.put_nowait(exc)

        run_id = uuid.uuid4().hex
        self._relays[run_id] = (queue, asyncio.get_running_loop().create_task(pump()))
        return run_id

    async def relay_next(self, run_id: str) -> tuple[list[StreamEvent], bool]:
        """The events so far (at least one, or the end): (events, ended). Raises the run's error."""
        queue, _ = self._relays[run_id]
        items = [await queue.get()]
        while not queue.empty():
            items.append(queue.get_nowait())
        events = [item for item in items if isinstance(item, StreamEvent)]
        ended = len(events) < len(items)
        if ended:
            self._relays.pop(run_id, None)
            if isinstance(items[-1], BaseException):
                raise items[-1]
        return events, ended

    async def relay_close(self, run_id: str) -> None:
        _, task = self._relays.pop(run_id, (None, None))
        if task is not None:
            task.cancel()


class NodeEngine(_Relay):
    """On one node: a DockerIsol8 per option set (each with its warm pool), shared by every driver.
    At most MAX_NODE_ENGINES are kept; the least recently used idle one goes (as in `isol8 serve`)."""

    def __init__(self) -> None:
        super().__init__()
        self._engines: OrderedDict[str, DockerIsol8] = OrderedDict()
        self._busy: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._stopping: set[asyncio.Task[None]] = set()
        self.running = 0

    @contextlib.asynccontextmanager
    async def _use(self, options: Isol8Options) -> AsyncIterator[DockerIsol8]:
        key = options.model_dump_json()
        async with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                engine = DockerIsol8(options)
                await engine.start()
                self._engines[key] = engine
                self._evict(keep=key)
            self._engines.move_to_end(key)
            self._busy[key] = self._busy.get(key, 0) + 1
        self.running += 1
        try:
            yield engine
        finally:
            self.running -= 1
            self._busy[key] -= 1

    def _evict(self, keep: str) -> None:
        idle = [key for key in self._engines if key != keep and self._busy.get(key, 0) == 0]
        while len(self._engines) > MAX_NODE_ENGINES and idle:
            key = idle.pop(0)
            self._busy.pop(key, None)
            task = asyncio.get_running_loop().create_task(self._engines.pop(key).stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def warm(self, options: Isol8Options) -> None:
        async with self._use(options):
            pass

    async def execute(
        self, options: Isol8Options, request: ExecutionRequest, caller: Caller | None = None
    ) -> ExecutionResult:
        async with self._use(options) as engine:
            with _acting(caller):
                return await engine.execute(request)

    async def execute_stream(
        self, options: Isol8Options, request: ExecutionRequest, caller: Caller | None = None
    ) -> AsyncGenerator[StreamEvent]:
        async with self._use(options) as engine:
            with _acting(caller):
                stream = engine.execute_stream(request)
            async with contextlib.aclosing(stream) as events:
                async for event in events:
                    yield event

    def status(self) -> tuple[int, list[PoolState]]:
        return self.running, [state for engine in self._engines.values() for state in engine.pool_state()]


class SessionEngine(_Relay):
    """One persistent session: a DockerIsol8 in persistent mode on the node this actor is pinned to."""

    def __init__(self, options: Isol8Options) -> None:
        super().__init__()
        self.engine = DockerIsol8(options.model_copy(update={"mode": "persistent"}))

    def node(self) -> str:
        return str(ray_module().get_runtime_context().get_node_id())

    async def execute(self, request: ExecutionRequest, caller: Caller | None = None) -> ExecutionResult:
        with _acting(caller):
            return await self.engine.execute(request)

    async def execute_stream(
        self, request: ExecutionRequest, caller: Caller | None = None
    ) -> AsyncGenerator[StreamEvent]:
        with _acting(caller):
            stream = self.engine.execute_stream(request)
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                yield event

    async def set_network_filter(self, network_filter: NetworkFilter) -> None:
        await self.engine.set_network_filter(network_filter)

    async def reset(self) -> None:
        await self.engine.reset()

    async def put_file(self, path: str, content: str | bytes) -> None:
        await self.engine.put_file(path, content)

    async def get_file(self, path: str) -> bytes:
        return await self.engine.get_file(path)

    def container_id(self) -> str | None:
        return self.engine.container_id

    def options(self) -> Isol8Options:
        return self.engine.options

    async def stop(self) -> None:
        await self.engine.stop()


_actor_classes: dict[str, Any] = {}


def _acting(caller: Caller | None) -> contextlib.AbstractContextManager[None]:
    """Executions started inside are `caller`'s in this node's audit log (a driver's context does not
    travel over Ray: the caller is an argument)."""
    if caller is None:
        return contextlib.nullcontext()
    return acting_for(caller.tenant_id, caller.key_id, caller.session_id)


def _actor_class(cls: type) -> Any:
    if cls.__name__ not in _actor_classes:
        _actor_classes[cls.__name__] = ray_module().remote(cls)
    return _actor_classes[cls.__name__]


def _pinned(node_id: str) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


# --- connecting ---------------------------------------------------------------------------------
CLIENT_ATTEMPTS = 3


def connect(address: str | None) -> ModuleType:
    """Join the cluster at `address` (`ray://host:10001`, `host:6379` or `auto`) once per process."""
    ray = ray_module()
    # Ray Client's proxy starts a server process per client, which can fail on a loaded head: a
    # `ray://` join is tried again before it is given up.
    attempts = CLIENT_ATTEMPTS if (address or "").startswith("ray://") else 1
    for attempt in range(1, attempts + 1):
        if ray.is_initialized():
            break
        try:
            ray.init(address=address or "auto", namespace=NAMESPACE, log_to_driver=False, logging_level="error")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            if attempt == attempts:
                raise ClusterUnavailable(
                    f"Cannot join the Ray cluster at {address or 'auto'} ({exc}); check the address and that its "
                    "head runs."
                ) from None
            time.sleep(1.0)
    return ray


def isol8_nodes(ray: ModuleType) -> dict[str, str]:
    """Alive nodes that offer the `isol8` resource: node id -> its address."""
    return {
        node["NodeID"]: node["NodeManagerAddress"]
        for node in ray.nodes()
        if node.get("Alive") and node.get("Resources", {}).get(RESOURCE, 0) > 0
    }


def _node_engine(ray: ModuleType, node_id: str) -> Any:
    return (
        _actor_class(NodeEngine)
        .options(
            name=f"node:{node_id}",
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=0,
            max_concurrency=1000,
            scheduling_strategy=_pinned(node_id),
        )
        .remote()
    )


def _session_nodes(ray: ModuleType) -> dict[str, str]:
    """Session id -> node id, for every session the cluster remembers."""
    from ray.experimental import internal_kv

    keys = internal_kv._internal_kv_list(SESSION_KEY, namespace=NAMESPACE)
    found: dict[str, str] = {}
    for key in keys:
        value = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
        if value is not None:
            found[key.decode().removeprefix(SESSION_KEY)] = value.decode()
    return found


# --- the engine ---------------------------------------------------------------------------------
class RayIsol8:
    """`async with RayIsol8("ray://head:10001") as isol8: await isol8.execute(...)`.

    Ephemeral (default): each execution runs on the least-loaded node. With `session_id` (or
    `mode="persistent"`, which makes a new id) every call runs in that cluster-wide session; `stop()`
    deletes it unless `keep_session` is set. The first call starts the engine if `start()` was not
    called.
    """

    def __init__(
        self,
        address: str | None = None,
        options: Isol8Options | None = None,
        *,
        session_id: str | None = None,
        keep_session: bool = False,
        create: bool = True,
        **kwargs: Any,
    ) -> None:
        self.address = address
        self.options = options or Isol8Options(**kwargs)
        if self.options.mode == "persistent" and session_id is None:
            session_id = uuid.uuid4().hex
        self.session_id = session_id
        self.keep_session = keep_session
        self.create = create  # False: only join an existing session (SessionNotFound otherwise)
        self._ray: ModuleType | None = None
        self._starting = asyncio.Lock()
        self._nodes: dict[str, Any] = {}  # node id -> node engine handle
        self._addresses: dict[str, str] = {}
        self._load: dict[str, int] = {}
        self._picked: dict[str, float] = {}  # node id -> when this driver last sent it a run
        self._refreshed = 0.0
        self._session: Any = None
        self._session_node: str | None = None
        self._lost: str | None = None  # why the session is gone, once it is
        self._container_id: str | None = None

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Join the cluster, find its isol8 nodes (and the session, created if new)."""
        async with self._starting:
            if self._ray is not None:
                return
            ray = await asyncio.to_thread(connect, self.address)
            self._ray = ray
            try:
                await self._refresh_nodes()
                if self.session_id is not None:
                    await self._open_session()
            except BaseException:
                self._ray = None
                raise

    async def stop(self) -> None:
        """Delete the session (unless `keep_session`); the node engines stay for other drivers."""
        if self._ray is None:
            return
        if self.session_id is not None and not self.keep_session and self._lost is None:
            await delete_session(self.session_id, self.address)
        self._session = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    @property
    def container_id(self) -> str | None:
        return self._container_id

    def pool_state(self) -> list[PoolState]:
        """Nothing: the warm containers are the node engines' (`isol8 cluster status` lists them)."""
        return []

    # --- execution --------------------------------------------------------------------------------
    async def execute(self, request: ExecutionRequest) -> ExecutionResult:
        caller = current_caller()  # the node's audit log records the server's caller
        await self.start()
        if self.session_id is not None:
            result: ExecutionResult = await self._session_call("execute", request, caller)
            self._container_id = result.container_id
            return result
        node_id, engine = await self._pick()
        self._load[node_id] += 1
        try:
            return await self._awaited(node_id, engine.execute.remote(self.options, request, caller))
        finally:
            self._load[node_id] -= 1

    def execute_stream(
        self, request: ExecutionRequest, terminal: Terminal | None = None
    ) -> AsyncGenerator[StreamEvent]:
        """Events as they happen; the audit log's caller is the one current when this is called."""
        return self._stream(request, terminal, current_caller())

    async def _stream(
        self, request: ExecutionRequest, terminal: Terminal | None, caller: Caller | None
    ) -> AsyncGenerator[StreamEvent]:
        if terminal is not None:  # its keys would have to reach a node's sandbox as they are typed
            raise Isol8Error(
                "Interactive runs (a terminal) are not available on a Ray cluster; "
                "run them through `isol8 serve` on a node, or the library on that machine."
            )
        await self.start()
        if self.session_id is not None:
            session, node_id = self._require_session()
            async with contextlib.aclosing(self._streamed(node_id, session, request, caller)) as events:
                async for event in events:
                    yield event
            return
        node_id, engine = await self._pick()
        self._load[node_id] += 1
        try:
            async with contextlib.aclosing(self._streamed(node_id, engine, self.options, request, caller)) as ev:
                async for event in ev:
                    yield event
        finally:
            self._load[node_id] -= 1

    async def set_network_filter(self, network_filter: NetworkFilter) -> None:
        """New lists: the session's proxy applies them at once; stateless runs from now on get them."""
        if self.options.network != "filtered":
            raise NotFiltered.of(self.options.network)
        self.options = self.options.model_copy(update={"network_filter": network_filter})
        if self.session_id is not None:
            await self.start()
            self._require_session()
            await self._session_call("set_network_filter", network_filter)

    async def reset(self) -> None:
        """The session's interpreter ends on its node; the next run starts a fresh one."""
        if not self.options.stateful or self.session_id is None:
            raise NotStateful.for_reset()
        await self.start()
        self._require_session()
        await self._session_call("reset")

    # --- files ------------------------------------------------------------------------------------
    async def put_file(self, path: str, content: str | bytes) -> None:
        await self.start()
        self._require_session()
        await self._session_call("put_file", path, content)

    async def get_file(self, path: str) -> bytes:
        await self.start()
        self._require_session()
        data: bytes = await self._session_call("get_file", path)
        return data

    # --- plumbing ---------------------------------------------------------------------------------
    async def _refresh_nodes(self) -> None:
        ray = self._require_ray()
        nodes = await asyncio.to_thread(isol8_nodes, ray)
        for node_id in list(self._nodes):
            if node_id not in nodes:
                self._forget_node(node_id)
        for node_id, address in nodes.items():
            if node_id not in self._nodes:
                self._nodes[node_id] = await asyncio.to_thread(_node_engine, ray, node_id)
                self._addresses[node_id] = address
                self._load.setdefault(node_id, 0)
        self._refreshed = time.monotonic()

    def _forget_node(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    async def _pick(self) -> tuple[str, Any]:
        """The node engine with the fewest of this driver's runs in flight; of those, the one picked
        longest ago (so a node's pool has the most time to refill before its next run)."""
        if time.monotonic() - self._refreshed > NODE_REFRESH_S or not self._nodes:
            await self._refresh_nodes()
        if not self._nodes:
            raise ClusterUnavailable(
                f"No alive Ray node offers the {RESOURCE!r} resource; start nodes with "
                f"`ray start --resources='{{\"{RESOURCE}\": 1}}'` (each needs Docker and `isol8 setup`)."
            )
        node_id = min(self._nodes, key=lambda n: (self._load[n], self._picked.get(n, 0.0)))
        self._picked[node_id] = time.monotonic()
        return node_id, self._nodes[node_id]

    def _node_lost(self, node_id: str) -> NodeLost:
        self._forget_node(node_id)
        return NodeLost.of(node_id, self._addresses.get(node_id, "?"))

    async def _awaited(self, node_id: str, call: Awaitable[T]) -> T:
        """The call's result; the actor's own Isol8Error as itself; a dead actor as NodeLost."""
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return await call
        except RayTaskError as exc:
            if isinstance(exc.cause, Isol8Error):
                raise exc.cause from None
            raise
        except RayActorError:
            raise self._node_lost(node_id) from None

    async def _streamed(self, node_id: str, actor: Any, *args: Any) -> AsyncGenerator[StreamEvent]:
        """The actor's `execute_stream(*args)`: a Ray streaming generator, or through Ray Client
        (which has none) the actor's relay, fetched in batches."""
        from ray.exceptions import RayActorError
        from ray.util.client import ray as ray_client

        if ray_client.is_connected():
            async with contextlib.aclosing(self._relayed(node_id, actor, *args)) as relayed:
                async for relayed_event in relayed:
                    yield relayed_event
            return
        ray = self._require_ray()
        refs = actor.execute_stream.options(num_returns="streaming").remote(*args)
        finished = False
        try:
            while True:
                try:
                    ref = await refs.__anext__()
                except StopAsyncIteration:
                    break
                except RayActorError:
                    raise await self._stream_lost(node_id) from None
                event: StreamEvent = await self._awaited_stream(node_id, ref)
                yield event
            finished = True
        finally:
            if not finished:  # the caller left early (or the stream failed): end the run
                with contextlib.suppress(Exception):
                    ray.cancel(refs)

    async def _relayed(self, node_id: str, actor: Any, *args: Any) -> AsyncGenerator[StreamEvent]:
        run_id: str = await self._awaited_stream(node_id, actor.relay_open.remote(*args))
        ended = False
        try:
            while not ended:
                events, ended = await self._awaited_stream(node_id, actor.relay_next.remote(run_id))
                for event in events:
                    yield event
        finally:
            if not ended:  # the caller left early (or the stream failed): end the run
                actor.relay_close.remote(run_id)

    async def _awaited_stream(self, node_id: str, ref: Any) -> Any:
        try:
            return await self._awaited(node_id, ref)
        except NodeLost:
            raise await self._stream_lost(node_id) from None

    async def _stream_lost(self, node_id: str) -> Isol8Error:
        if self.session_id is not None:
            return await self._session_gone(node_id)
        return self._node_lost(node_id)

    async def _open_session(self) -> None:
        ray = self._require_ray()
        assert self.session_id is not None
        name = f"session:{self.session_id}"
        remembered = (await asyncio.to_thread(_session_nodes, ray)).get(self.session_id)
        try:
            self._session = await asyncio.to_thread(ray.get_actor, name, NAMESPACE)
        except ValueError:  # no such actor (never made, deleted, or dead with its node)
            if remembered is not None:
                self._mark_session_lost(remembered)
                return
            if not self.create:
                raise SessionNotFound() from None
            self._session = await asyncio.to_thread(self._create_session, ray, name)
        node_id: str = await self._session.node.remote()
        self._session_node = node_id
        # What the session was made with (stateful or not, its limits), also when another driver made it.
        self.options = await self._session.options.remote()
        if remembered is None:
            from ray.experimental import internal_kv

            await asyncio.to_thread(
                internal_kv._internal_kv_put, SESSION_KEY + self.session_id, node_id, namespace=NAMESPACE
            )

    def _create_session(self, ray: ModuleType, name: str) -> Any:
        """The session's actor on the alive isol8 node with the fewest sessions."""
        counts = dict.fromkeys(isol8_nodes(ray), 0)
        if not counts:
            raise ClusterUnavailable(f"No alive Ray node offers the {RESOURCE!r} resource for a new session.")
        for node_id in _session_nodes(ray).values():
            if node_id in counts:
                counts[node_id] += 1
        fewest = min(counts.values())
        node_id = random.choice([n for n, count in counts.items() if count == fewest])
        return (
            _actor_class(SessionEngine)
            .options(
                name=name,
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,  # a second driver creating the same id at once gets this one
                num_cpus=0,
                max_restarts=0,
                max_concurrency=1000,
                scheduling_strategy=_pinned(node_id),
            )
            .remote(self.options)
        )

    def _mark_session_lost(self, node_id: str) -> SessionLost:
        self._session = None
        self._lost = (
            f"Session {self.session_id} was lost with Ray node {node_id[:12]}: its files and state are gone; "
            "delete it and start a new session."
        )
        return SessionLost(self._lost)

    def _require_ray(self) -> ModuleType:
        if self._ray is None:
            raise Isol8Error("The cluster engine is not started: use `async with RayIsol8(...)` or call start()")
        return self._ray

    def _require_session(self) -> tuple[Any, str]:
        if self.session_id is None:
            raise Isol8Error("File operations require a sessionId (persistent mode)")
        if self._lost is not None:
            raise SessionLost(self._lost)
        if self._session is None or self._session_node is None:
            raise Isol8Error("The cluster engine is not started: use `async with RayIsol8(...)` or call start()")
        return self._session, self._session_node

    async def _session_call(self, method: str, *args: Any) -> Any:
        session, node_id = self._require_session()
        try:
            return await self._awaited(node_id, getattr(session, method).remote(*args))
        except NodeLost:
            raise await self._session_gone(node_id) from None

    async def _session_gone(self, node_id: str) -> Isol8Error:
        """Its actor died: deleted by another driver (the cluster forgot it), else lost with its node."""
        assert self.session_id is not None
        if self.session_id not in await asyncio.to_thread(_session_nodes, self._require_ray()):
            self._session = None
            return SessionNotFound("Session not found: another client deleted it")
        return self._mark_session_lost(node_id)


# --- cluster-wide calls -------------------------------------------------------------------------
async def delete_session(session_id: str, address: str | None = None) -> bool:
    """Stop the session's container and end its actor; False if the cluster has no such session."""
    ray = await asyncio.to_thread(connect, address)
    from ray.experimental import internal_kv

    try:
        actor = await asyncio.to_thread(ray.get_actor, f"session:{session_id}", NAMESPACE)
    except ValueError:
        actor = None
    known = await asyncio.to_thread(internal_kv._internal_kv_del, SESSION_KEY + session_id, namespace=NAMESPACE)
    if actor is not None:
        from ray.exceptions import RayActorError

        with contextlib.suppress(RayActorError):
            await actor.stop.remote()
        ray.kill(actor)
    return actor is not None or bool(known)


async def warm_nodes(options: Isol8Options) -> None:
    """Build the node engine for `options` on every isol8 node (which warms its `prewarm` runtimes)."""
    ray = ray_module()
    nodes = await asyncio.to_thread(isol8_nodes, ray)
    engines = [await asyncio.to_thread(_node_engine, ray, node_id) for node_id in nodes]
    await asyncio.gather(*(engine.warm.remote(options) for engine in engines))


async def cluster_status(address: str | None) -> list[NodeStatus]:
    """Every node that offers `isol8` (and dead ones that held sessions): runs in flight, warm pools, sessions."""
    ray = await asyncio.to_thread(connect, address)
    from ray.exceptions import RayActorError

    sessions = list((await asyncio.to_thread(_session_nodes, ray)).values())
    # A dead node no longer lists its resources: it is shown while sessions lost with it are remembered.
    nodes = [
        n
        for n in await asyncio.to_thread(ray.nodes)
        if n.get("Resources", {}).get(RESOURCE, 0) > 0 or (not n.get("Alive") and n["NodeID"] in sessions)
    ]
    statuses: list[NodeStatus] = []
    for node in nodes:
        node_id = node["NodeID"]
        status = NodeStatus(
            node_id=node_id,
            address=node["NodeManagerAddress"],
            alive=bool(node.get("Alive")),
            sessions=sessions.count(node_id),
        )
        if status.alive:
            with contextlib.suppress(RayActorError, ValueError):  # ValueError: no engine there yet
                engine = await asyncio.to_thread(ray.get_actor, f"node:{node_id}", NAMESPACE)
                status.running, status.pools = await engine.status.remote()
        statuses.append(status)
    return statuses
