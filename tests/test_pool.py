"""The warm pool: reuse without leaks (fast), one execution per container (secure), growth and
shrinking, concurrency limits, and removal of everything on stop."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import pytest
from helpers import ISOL8

from engine import pool as pool_module
from engine.docker import DockerClient
from engine.engine import DockerIsol8
from engine.hardening import container_config
from engine.models import ExecutionRequest, Isol8Options
from engine.sandbox import Sandbox

pytestmark = pytest.mark.docker

LEAVE_TRACES = """
import os, subprocess
for path in ('/sandbox/file', '/tmp/file', '/dev/shm/file'):
    open(path, 'w').write('secret')
os.makedirs('/sandbox/locked/inner'); open('/sandbox/locked/inner/x', 'w').write('x'); os.chmod('/sandbox/locked', 0)
os.environ['LEAKED'] = 'yes'
subprocess.Popen(['setsid', 'sleep', '300'])
subprocess.run(['ipcmk', '-M', '4096'], capture_output=True)
print('left traces')
"""

LOOK_FOR_TRACES = """
import os, subprocess
found = [p for p in ('/sandbox/file', '/tmp/file', '/dev/shm/file', '/sandbox/locked') if os.path.exists(p)]
found += ['env'] if 'LEAKED' in os.environ else []
found += ['process'] if subprocess.run(['pgrep', 'sleep'], capture_output=True).returncode == 0 else []
found += ['shm'] if len(open('/proc/sysvipc/shm').read().splitlines()) > 1 else []
print(found)
"""


async def test_fast_reuses_the_container_and_leaks_nothing(docker_client: DockerClient) -> None:
    async with DockerIsol8(pool_strategy="fast", pool_size=1, prewarm=["python"]) as engine:
        first = await engine.execute(ExecutionRequest(code=LEAVE_TRACES))
        assert first.stdout == "left traces\n", first.stderr
        await engine._pool.settle()
        second = await engine.execute(ExecutionRequest(code=LOOK_FOR_TRACES))
    assert second.stdout == "[]\n", second.stderr
    assert first.container_id == second.container_id


async def test_secure_uses_each_container_once(docker_client: DockerClient) -> None:
    async with DockerIsol8(pool_strategy="secure", pool_size=1, prewarm=["python"]) as engine:
        warmed = [c["Id"] for c in docker_client.managed_containers()]
        assert len(warmed) == 1 and engine.pool_state()[0].ready == 1
        results = [
            await engine.execute(ExecutionRequest(code=LEAVE_TRACES if i == 0 else LOOK_FOR_TRACES)) for i in range(3)
        ]
        await engine._pool.settle()
        assert results[0].container_id == warmed[0]  # the prewarmed one served the first run
        assert len({r.container_id for r in results}) == 3
        assert results[1].stdout == "[]\n"
        state = engine.pool_state()[0]
        # back-to-back runs are a burst: the pool keeps what covers a start at that rate, up to its cap
        assert state.image == "isol8:python" and 1 <= state.ready <= engine._pool.cap
        assert (state.busy, state.starting) == (0, 0)
        assert len(docker_client.managed_containers()) == state.ready


async def test_pool_grows_with_demand_and_shrinks_when_idle(
    docker_client: DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "IDLE_TRIM_S", 0.5)
    async with DockerIsol8(pool_strategy="fast", pool_size=1) as engine:
        await asyncio.gather(*(engine.execute(ExecutionRequest(code="import time; time.sleep(0.3)")) for _ in range(3)))
        await engine._pool.settle()
        assert engine.pool_state()[0].ready == 3
        await asyncio.sleep(1.0)
        await engine._pool.settle()
        assert engine.pool_state()[0].ready == 1
        assert len(docker_client.managed_containers()) == 1


async def test_max_concurrent_queues_in_order(docker_client: DockerClient) -> None:
    starts: list[tuple[int, float]] = []
    async with DockerIsol8(max_concurrent=2, pool_size=0) as engine:

        async def run(index: int) -> None:
            async for event in engine.execute_stream(
                ExecutionRequest(code="print('go', flush=True)\nimport time; time.sleep(1)")
            ):
                if event.type == "stdout" and index not in [i for i, _ in starts]:
                    starts.append((index, time.monotonic()))

        tasks = []
        for index in range(4):
            tasks.append(asyncio.create_task(run(index)))
            await asyncio.sleep(0.05)  # a clear order of arrival
        await asyncio.gather(*tasks)
    order = [index for index, _ in sorted(starts, key=lambda s: s[1])]
    assert sorted(order[:2]) == [0, 1] and sorted(order[2:]) == [2, 3]
    first_wave = max(t for i, t in starts if i in (0, 1))
    second_wave = min(t for i, t in starts if i in (2, 3))
    assert second_wave - first_wave > 0.7  # the third waited for a slot


async def test_stop_removes_ready_and_busy_containers(docker_client: DockerClient) -> None:
    engine = DockerIsol8(pool_strategy="fast", pool_size=2, prewarm=["python", "bash"])
    await engine.start()
    stream = engine.execute_stream(ExecutionRequest(cmd="echo started; sleep 60"))
    async for _ in stream:
        break
    assert len(docker_client.managed_containers()) >= 4  # 2 ready per runtime, one of them now busy
    started = time.monotonic()
    await engine.stop()
    await stream.aclose()
    assert docker_client.managed_containers() == []
    assert time.monotonic() - started < 10


def test_ctrl_c_removes_the_container(docker_client: DockerClient) -> None:
    process = subprocess.Popen(
        [ISOL8, "run", "-e", "print('up', flush=True)\nimport time; time.sleep(60)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout and process.stdout.readline() == "up\n"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=15) == 130
    deadline = time.monotonic() + 10
    while docker_client.managed_containers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert docker_client.managed_containers() == []


async def test_many_quick_runs_on_one_warm_container(docker_client: DockerClient) -> None:
    """A job that ends before the agent hears it started must still be reported (a past hang)."""
    async with DockerIsol8(pool_strategy="fast", pool_size=1, prewarm=["python"]) as engine:
        results = [await engine.execute(ExecutionRequest(code="print(1)", timeout_ms=5000)) for _ in range(300)]
    assert all(r.stdout == "1\n" and r.exit_code == 0 for r in results)
    assert len({r.container_id for r in results}) == 1


async def test_python_fast_path_behaves_like_python3(engine: DockerIsol8) -> None:
    code = (
        "import sys, os, threading, atexit\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "threading.Thread(target=lambda: (__import__('time').sleep(0.2), print('thread done'))).start()\n"
        "print(sys.argv, sys.path[0], __name__, __file__, os.getuid() != 0)\n"
        "print(sys.stdin.read())\n"
        "sys.exit('bye')\n"
    )
    result = await engine.execute(ExecutionRequest(code=code, stdin="input!", env={"PYTHONPATH": "/sandbox/lib"}))
    assert result.stdout == (
        "['/sandbox/main.py'] /sandbox __main__ /sandbox/main.py True\ninput!\nthread done\natexit ran\n"
    )
    assert (result.stderr, result.exit_code) == ("bye\n", 1)
    traceback = await engine.execute(ExecutionRequest(code="def f():\n    raise KeyError('k')\nf()"))
    assert traceback.stderr.splitlines()[0] == "Traceback (most recent call last):"
    assert "zygote" not in traceback.stderr and traceback.stderr.endswith("KeyError: 'k'\n")


async def test_secure_pool_grows_for_a_burst_and_shrinks_back(
    docker_client: DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "IDLE_TRIM_S", 1.0)
    async with DockerIsol8(pool_size=1, prewarm=["python"]) as engine:
        pool = engine._pool
        key = next(iter(pool._keys))
        assert pool.wanted(key) == 1
        peak = 0
        runs = []
        for _ in range(8):  # arrivals far faster than a container starts
            runs.append(asyncio.ensure_future(engine.execute(ExecutionRequest(code="print(1)"))))
            await asyncio.sleep(0.03)
            peak = max(peak, pool.wanted(key))
        results = await asyncio.gather(*runs)
        assert [r.stdout for r in results] == ["1\n"] * 8
        assert len({r.container_id for r in results}) == 8  # still one container per execution
        assert 2 <= peak <= pool.cap
        await pool.settle()
        await asyncio.sleep(1.5)  # idle: back to one ready container
        await pool.settle()
        assert pool.wanted(key) == 1 and engine.pool_state()[0].ready == 1
        assert len(docker_client.managed_containers()) == 1


async def test_cancelled_launches_leave_nothing(docker_client: DockerClient) -> None:
    """A start cancelled at any point (a pool closing mid-refill) removes what it made, unwaited."""
    config = container_config(Isol8Options(), "isol8:python", "python")
    for delay in (0.0, 0.005, 0.02, 0.05, 0.1, 0.15, 0.25):
        launch = asyncio.ensure_future(Sandbox.launch(docker_client, config))
        await asyncio.sleep(delay)
        launch.cancel()
        outcome = await asyncio.gather(launch, return_exceptions=True)
        if not isinstance(outcome[0], BaseException):  # it finished first: an ordinary sandbox
            await outcome[0].destroy()
    deadline = time.monotonic() + 15
    while docker_client.managed_containers() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert docker_client.managed_containers() == []


async def test_stop_does_not_wait_for_a_refill_and_leaves_nothing(docker_client: DockerClient) -> None:
    for _ in range(3):
        engine = DockerIsol8(pool_size=1, prewarm=["python"])
        await engine.start()
        await engine.execute(ExecutionRequest(code="print(1)"))
        assert engine.pool_state()[0].starting == 1  # the refill is in flight
        await engine.stop()
    deadline = time.monotonic() + 15
    while docker_client.managed_containers() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert docker_client.managed_containers() == []
