"""RayIsol8 on a real three-node Ray cluster (see conftest.py for how these run).

The node-failure test kills a node for good, so it comes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncGenerator

import pytest
from conftest import node_numbers, wait_for
from local_cluster import LocalCluster

from engine.cluster import RayIsol8, cluster_status
from engine.docker import DockerClient
from engine.errors import FileNotFound, Isol8Error, NodeLost, SessionLost
from engine.hardening import OWNER_LABEL
from engine.models import ExecutionRequest, StreamEvent

pytestmark = pytest.mark.docker

SLEEPER = ExecutionRequest(cmd="echo up; sleep 120", runtime="bash")


async def node_load() -> dict[int, int]:
    """Node number -> runs in flight on its node engine."""
    numbers = node_numbers()
    return {numbers[s.node_id]: s.running for s in await cluster_status(None) if s.node_id in numbers}


async def started(stream: AsyncGenerator[StreamEvent]) -> AsyncGenerator[StreamEvent]:
    first = await anext(stream)
    assert (first.type, first.data) == ("stdout", "up\n")
    return stream


def run_driver(cluster: LocalCluster, session_id: str, script: str) -> str:
    """Run `script` in a second driver process joined to the cluster; its stdout."""
    program = textwrap.dedent(
        """
        import asyncio, sys
        from engine.cluster import RayIsol8
        from engine.models import ExecutionRequest

        async def main(session):
        {body}

        async def run():
            async with RayIsol8(sys.argv[1], session_id=sys.argv[2], runtime="bash", keep_session=True) as s:
                await main(s)

        asyncio.run(run())
        """
    ).format(body=textwrap.indent(textwrap.dedent(script), "    "))
    done = subprocess.run(
        [sys.executable, "-c", program, cluster.address, session_id],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


async def test_executions_spread_over_the_nodes(cluster: LocalCluster) -> None:
    async with RayIsol8() as engine:
        streams = [await started(engine.execute_stream(SLEEPER)) for _ in range(6)]
        try:
            load = await node_load()
            assert load == {0: 2, 1: 2, 2: 2}, load
        finally:
            for stream in streams:
                await stream.aclose()  # leaving early kills the run on its node
        for _ in range(150):
            if await node_load() == {0: 0, 1: 0, 2: 0}:
                break
            await asyncio.sleep(0.2)
        assert await node_load() == {0: 0, 1: 0, 2: 0}
        results = await asyncio.gather(*(engine.execute(ExecutionRequest(code=f"print({i} * 2)")) for i in range(6)))
        assert [r.stdout for r in results] == [f"{i * 2}\n" for i in range(6)]


async def test_streaming_through_the_cluster(cluster: LocalCluster) -> None:
    request = ExecutionRequest(cmd="echo a; echo oops >&2; sleep 0.3; echo b; exit 3", runtime="bash")
    async with RayIsol8() as engine:
        events = [(e.type, e.data) async for e in engine.execute_stream(request)]
    assert events == [("stdout", "a\n"), ("stderr", "oops\n"), ("stdout", "b\n"), ("exit", "3")]


async def test_files_round_trip_with_the_local_engines_errors(cluster: LocalCluster) -> None:
    blob = bytes(range(256)) * 64
    async with RayIsol8(session_id="files", runtime="bash") as session:
        await session.put_file("/sandbox/blob.bin", blob)
        result = await session.execute(ExecutionRequest(cmd="sha256sum blob.bin | cut -c1-16", runtime="bash"))
        assert result.stdout.strip() and result.exit_code == 0
        assert await session.get_file("/sandbox/blob.bin") == blob
        with pytest.raises(FileNotFound):
            await session.get_file("/sandbox/missing")
        with pytest.raises(Isol8Error, match=r"inside /sandbox or /tmp"):
            await session.put_file("/sandbox/../etc/passwd", b"x")
        # A session's own stream
        events = [
            e.data async for e in session.execute_stream(ExecutionRequest(cmd="wc -c < blob.bin", runtime="bash"))
        ]
        assert events == [f"{len(blob)}\n", "0"]


async def test_a_session_made_by_one_driver_is_used_by_another(cluster: LocalCluster) -> None:
    node = run_driver(
        cluster,
        "shared",
        """
        await session.put_file("/sandbox/one.txt", b"from driver one")
        await session.execute(ExecutionRequest(cmd="echo $((6 * 7)) > /sandbox/two.txt", runtime="bash"))
        print(session._session_node)
        """,
    )
    async with RayIsol8(session_id="shared", runtime="bash") as session:
        assert session._session_node == node.strip()
        assert await session.get_file("/sandbox/one.txt") == b"from driver one"
        result = await session.execute(ExecutionRequest(cmd="cat two.txt; echo back > three.txt", runtime="bash"))
        assert result.stdout == "42\n"
        back = run_driver(cluster, "shared", 'print((await session.get_file("/sandbox/three.txt")).decode(), end="")')
        assert back == "back\n"
    # stop() deleted it: the id now names a fresh, empty session, not the old one's files.
    fresh = run_driver(
        cluster,
        "shared",
        """
        from engine.errors import FileNotFound
        await session.execute(ExecutionRequest(cmd="true", runtime="bash"))
        try:
            await session.get_file("/sandbox/one.txt")
        except FileNotFound:
            print("gone")
        """,
    )
    assert fresh == "gone\n"
    run_driver(cluster, "shared", "session.keep_session = False")


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
