"""RayIsol8 on a real three-node Ray cluster (see conftest.py for how these run)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncGenerator

import pytest
from conftest import node_numbers
from local_cluster import LocalCluster

from engine.cluster import RayIsol8, cluster_status
from engine.errors import FileNotFound, Isol8Error
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


async def test_a_stateful_session_keeps_its_interpreter_on_its_node(cluster: LocalCluster) -> None:
    async with RayIsol8(mode="persistent", stateful=True, session_id="interpreter") as session:
        first = await session.execute(ExecutionRequest(code="x = 41"))
        assert first.state == "fresh", first.stderr
        events = [e async for e in session.execute_stream(ExecutionRequest(code="display('shown')\nx + 1"))]
        assert [(e.result.text(), e.result.is_main_result) for e in events if e.result] == [
            ("'shown'", False),
            ("42", True),
        ]
        assert events[-1].state == "kept"
        await session.reset()
        fresh = await session.execute(ExecutionRequest(code="print('x' in globals())"))
        assert (fresh.stdout, fresh.state) == ("False\n", "fresh")
