"""Optional stronger isolation: sandboxes under gVisor (`security.runtime: "runsc"`)."""

from __future__ import annotations

import pytest

from engine.docker import DockerClient
from engine.engine import DockerIsol8
from engine.models import ExecutionRequest

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def runsc(docker_client: DockerClient) -> None:
    if "runsc" not in docker_client.api.info().get("Runtimes", {}):
        pytest.skip("the Docker daemon has no runsc runtime registered (bash .ci/bootstrap.sh registers Debian's)")


async def test_code_runs_under_gvisor_with_the_same_promises(runsc: None) -> None:
    async with DockerIsol8(security={"runtime": "runsc"}, pool_size=0) as engine:
        result = await engine.execute(
            ExecutionRequest(code="import os, platform\nprint(os.getuid(), platform.release())\nopen('/etc/x', 'w')")
        )
        uid, kernel = result.stdout.split()
        assert uid == "61000" and result.exit_code == 1 and "Permission denied" in result.stderr
        assert kernel == "4.4.0"  # gVisor's own kernel, not the host's
        timed = await engine.execute(ExecutionRequest(cmd="sleep 30", timeout_ms=500))
        assert timed.timed_out and timed.exit_code == 137
        capped = await engine.execute(ExecutionRequest(code="print('z' * 100)", max_output_size=10))
        assert capped.stdout_truncated


async def test_gvisor_with_a_warm_pool_and_sessions(runsc: None) -> None:
    async with DockerIsol8(
        security={"runtime": "runsc"}, pool_strategy="fast", pool_size=1, prewarm=["python"]
    ) as engine:
        first = await engine.execute(ExecutionRequest(code="open('/sandbox/x', 'w').write('1'); print('a')"))
        await engine._pool.settle()  # scrubbed and handed to the next uid
        second = await engine.execute(ExecutionRequest(code="import os; print(os.path.exists('/sandbox/x'))"))
    assert (first.stdout, second.stdout) == ("a\n", "False\n")
    assert first.container_id == second.container_id  # the scrub holds under gVisor's kernel too
    async with DockerIsol8(security={"runtime": "runsc"}, mode="persistent") as session:
        await session.execute(ExecutionRequest(cmd="echo kept > /sandbox/f"))
        assert (await session.execute(ExecutionRequest(cmd="cat /sandbox/f"))).stdout == "kept\n"


async def test_gvisor_fast_pool_kills_survivors_and_moves_to_the_next_uid(runsc: None) -> None:
    from test_survivors import PLANTS, SANDBOX_TASKS

    async with DockerIsol8(
        security={"runtime": "runsc"}, pool_strategy="fast", pool_size=1, prewarm=["python"]
    ) as engine:
        planted = await engine.execute(ExecutionRequest(code=PLANTS["detached-grandchild"]))
        await engine._pool.settle()
        left = await engine.execute(ExecutionRequest(code="import os\nprint(os.getuid())\n" + SANDBOX_TASKS))
    assert planted.stdout == "planted\n", planted.stderr
    assert left.container_id == planted.container_id
    assert left.stdout == "61001\n[]\n", left.stdout
