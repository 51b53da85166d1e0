"""A Ray node killed mid-run (its raylet, by pid). The node stays dead: this module runs last."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import pytest
from conftest import node_numbers, wait_for
from local_cluster import LocalCluster
from test_cluster import SLEEPER, started

from engine.cluster import RayIsol8, cluster_status
from engine.docker import DockerClient
from engine.errors import NodeLost, SessionLost
from engine.hardening import OWNER_LABEL
from engine.models import ExecutionRequest, StreamEvent

pytestmark = pytest.mark.docker


async def _consume(stream: AsyncGenerator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in stream]


def _containers_by_node(cluster: LocalCluster, client: DockerClient) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for container in client.managed_containers():
        pid = container["Labels"].get(OWNER_LABEL, "").split("/")[1:2]
        node = cluster.node_of_pid(int(pid[0])) if pid and pid[0].isdigit() else None
        if node is not None:
            found.setdefault(node, set()).add(container["Id"])
    return found


async def test_a_killed_node_fails_its_runs_clearly_and_loses_its_sessions(
    cluster: LocalCluster, docker_client: DockerClient
) -> None:
    sessions = [RayIsol8(session_id=f"s{n}", runtime="bash") for n in range(3)]
    for session in sessions:
        await session.start()
        await session.execute(ExecutionRequest(cmd="echo kept > /sandbox/state", runtime="bash"))
    numbers = node_numbers()
    placed = {numbers[s._session_node or ""]: s for s in sessions}
    assert sorted(placed) == [0, 1, 2], "sessions go to the node with the fewest"
    victim = 1  # not the head (0): that one holds the cluster's GCS
    victim_id = next(node_id for node_id, n in numbers.items() if n == victim)

    engine = RayIsol8()
    await engine.start()
    stateless = [await started(engine.execute_stream(SLEEPER)) for _ in range(3)]
    session_stream = await started(placed[victim].execute_stream(SLEEPER))
    doomed = _containers_by_node(cluster, docker_client).get(victim, set())
    assert len(doomed) >= 2, "the victim runs a session and a stateless run"

    tasks = [asyncio.create_task(_consume(s)) for s in stateless]
    session_task = asyncio.create_task(_consume(session_stream))
    cluster.kill_raylet(victim)

    # Never a hang: the victim's runs fail long before their code would end.
    with pytest.raises(SessionLost, match=rf"lost with Ray node {victim_id[:12]}"):
        await asyncio.wait_for(session_task, 60)
    done, pending = await asyncio.wait(tasks, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1 and len(pending) == 2
    failure = next(iter(done)).exception()
    assert isinstance(failure, NodeLost) and victim_id[:12] in str(failure), failure
    for task in pending:  # the runs on the other nodes are still going
        task.cancel()
    for stream in stateless:
        with contextlib.suppress(Exception):
            await stream.aclose()

    # The session is lost from then on, for this driver and for a new one.
    with pytest.raises(SessionLost):
        await placed[victim].execute(ExecutionRequest(cmd="cat /sandbox/state", runtime="bash"))
    async with RayIsol8(session_id=placed[victim].session_id, runtime="bash") as again:
        with pytest.raises(SessionLost):
            await again.execute(ExecutionRequest(cmd="cat /sandbox/state", runtime="bash"))
    # The others keep working, and new work goes to the nodes left.
    for n in (0, 2):
        result = await placed[n].execute(ExecutionRequest(cmd="cat /sandbox/state", runtime="bash"))
        assert result.stdout == "kept\n"
    results = await asyncio.gather(*(engine.execute(ExecutionRequest(code="print('ok')")) for _ in range(4)))
    assert [r.stdout for r in results] == ["ok\n"] * 4
    statuses = {numbers[s.node_id]: s.alive for s in await cluster_status(None)}
    assert statuses == {0: True, 1: False, 2: True}
    # The victim's containers died with its engines.
    assert wait_for(lambda: not doomed & {c["Id"] for c in docker_client.managed_containers()}, 30)
    for n in (0, 2):
        await placed[n].stop()
    await engine.stop()
