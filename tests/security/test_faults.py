"""Faults: the engine killed, the agent killed or wedged, the Docker daemon restarted."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from engine.docker import DockerClient
from engine.engine import AGENT_SILENT, DockerIsol8
from engine.errors import DockerUnavailable, SandboxError
from engine.models import ExecutionRequest

DEFAULT_SOCKET = "/var/run/docker.sock"

pytestmark = pytest.mark.docker


def wait_for(predicate: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


async def first_output_container(engine: DockerIsol8, request: ExecutionRequest) -> tuple[object, str]:
    """Start a stream, wait for its first output, and return it with its container id."""
    stream = engine.execute_stream(request)
    async for event in stream:
        if event.type == "stdout":
            break
    busy = [s for s in engine._live]  # the sandbox serving this stream
    return stream, busy[0].container_id


def test_engine_killed_mid_run_leaves_nothing(docker_client: DockerClient) -> None:
    script = (
        "import asyncio\nfrom engine import DockerIsol8, ExecutionRequest\n"
        "async def main():\n    async with DockerIsol8(pool_strategy='fast', pool_size=2, prewarm=['python', 'bash']) as e:\n"
        "        async for ev in e.execute_stream(ExecutionRequest(cmd='echo running; sleep 60')):\n"
        "            print(ev.data, end='', flush=True)\nasyncio.run(main())\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout and process.stdout.readline() == "running\n"
    assert len(docker_client.managed_containers()) >= 4
    process.send_signal(signal.SIGKILL)
    process.wait()
    # Most go by themselves (their agent sees the stream close); one caught between create and
    # start cannot: the next engine's start removes whatever its dead owner left.
    asyncio.run(DockerIsol8(pool_size=0).start())
    assert wait_for(lambda: not docker_client.managed_containers(), 15), docker_client.managed_containers()


async def test_killed_agent_fails_the_run_clearly_and_is_replaced(docker_client: DockerClient) -> None:
    async with DockerIsol8(pool_strategy="fast", pool_size=1, prewarm=["bash"]) as engine:
        stream, container_id = await first_output_container(engine, ExecutionRequest(cmd="echo up; sleep 30"))
        await asyncio.to_thread(docker_client.api.kill, container_id)
        with pytest.raises(SandboxError, match=r"stopped unexpectedly.*Retry"):
            async for _ in stream:
                pass
        result = await engine.execute(ExecutionRequest(cmd="echo replaced"))
        assert result.stdout == "replaced\n" and result.container_id != container_id


async def test_wedged_agent_times_out_with_a_clear_error(docker_client: DockerClient) -> None:
    async with DockerIsol8(pool_size=0) as engine:
        stream, container_id = await first_output_container(
            engine, ExecutionRequest(cmd="echo up; sleep 30", timeout_ms=1000)
        )
        started = time.monotonic()
        await asyncio.to_thread(docker_client.api.kill, container_id, "SIGSTOP")
        events = [event async for event in stream]
        assert time.monotonic() - started < 6
        assert [(e.type, e.data) for e in events[-2:]] == [
            ("error", f"EXECUTION TIMED OUT ({AGENT_SILENT})"),
            ("exit", "137"),
        ]
        after = await engine.execute(ExecutionRequest(code="print('next one works')"))
        assert after.stdout == "next one works\n"
    assert wait_for(lambda: not any(c["Id"] == container_id for c in docker_client.managed_containers()), 10)


def _daemon_serving(socket_path: str) -> int:
    """The pid of the dockerd that listens on `socket_path` (a machine may run more than one)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [arg.decode() for arg in f.read().split(b"\0") if arg]
        except OSError:
            continue
        if not argv or os.path.basename(argv[0]) != "dockerd":
            continue
        hosts = [value for flag, value in itertools.pairwise(argv) if flag in ("-H", "--host")]
        hosts += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--host=")]
        if any(host.removeprefix("unix://") == socket_path for host in hosts) or (
            not hosts and socket_path == DEFAULT_SOCKET
        ):
            return int(entry)
    raise AssertionError(f"no dockerd listens on {socket_path}")


def _restart_dockerd() -> None:
    """Restart the daemon this test talks to (and no other): by its pid, with its own arguments."""
    socket_path = os.environ.get("DOCKER_HOST", f"unix://{DEFAULT_SOCKET}").removeprefix("unix://")
    if (
        socket_path == DEFAULT_SOCKET
        and shutil.which("systemctl")
        and subprocess.run(["systemctl", "is-active", "--quiet", "docker"]).returncode == 0
    ):
        subprocess.run(["systemctl", "restart", "docker"], check=True)
        return
    pid = _daemon_serving(socket_path)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = [arg.decode() for arg in f.read().split(b"\0") if arg]
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 30)
    with open("/var/log/isol8-dockerd.log", "ab") as log:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)


def _daemon_up() -> bool:
    try:
        DockerClient().ping()
        return True
    except DockerUnavailable:
        return False


@pytest.mark.skipif(os.geteuid() != 0, reason="restarting the Docker daemon needs root")
async def test_daemon_restart_mid_run(docker_client: DockerClient) -> None:
    async with (
        DockerIsol8(pool_strategy="fast", pool_size=1, prewarm=["python"]) as engine,
        DockerIsol8(mode="persistent", runtime="bash") as session,
    ):
        await session.execute(ExecutionRequest(cmd="echo state > /sandbox/f", runtime="bash"))
        stream, _ = await first_output_container(engine, ExecutionRequest(cmd="echo up; sleep 60"))
        await asyncio.to_thread(_restart_dockerd)
        with pytest.raises(SandboxError, match="stopped unexpectedly"):
            async for _ in stream:
                pass
        assert await asyncio.to_thread(wait_for, _daemon_up, 60), "the daemon did not come back"
        result = await engine.execute(ExecutionRequest(code="print('after restart')"))
        assert result.stdout == "after restart\n"
        with pytest.raises(SandboxError, match="The persistent container stopped"):
            await session.execute(ExecutionRequest(cmd="cat /sandbox/f", runtime="bash"))
        fresh = await session.execute(ExecutionRequest(cmd="cat /sandbox/f 2>/dev/null || echo gone", runtime="bash"))
        assert fresh.stdout == "gone\n"


async def test_a_flooding_run_left_mid_stream_is_removed_at_once(docker_client: DockerClient) -> None:
    """The agent is blocked writing output nobody reads; leaving the stream must still end the
    container at once (a second copy of the attach connection once kept the daemon waiting on it)."""
    async with DockerIsol8(pool_size=0) as engine:
        flood = ExecutionRequest(cmd="cat /dev/zero", max_output_size=1 << 30, timeout_ms=120_000)
        stream, container_id = await first_output_container(engine, flood)
        await asyncio.sleep(1)  # the engine reads nothing more: every buffer on the way fills up
        await stream.aclose()
        gone = await asyncio.to_thread(
            wait_for, lambda: not any(c["Id"] == container_id for c in docker_client.managed_containers()), 20
        )
        assert gone
