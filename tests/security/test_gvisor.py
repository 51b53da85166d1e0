"""Optional stronger isolation: sandboxes under gVisor (`security.runtime: "runsc"`)."""

from __future__ import annotations

import logging

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


@pytest.mark.parametrize("plant", ["detached-grandchild", "alone-after-the-job", "many-threads-renamed"])
async def test_gvisor_fast_pool_kills_survivors_and_moves_to_the_next_uid(
    runsc: None, plant: str, caplog: pytest.LogCaptureFixture
) -> None:
    """gVisor's /proc differs from Linux's: a process whose leader has exited has no listable
    /proc/<pid>/task there, so the agent must find it by its own status too."""
    from test_survivors import PLANTS, SANDBOX_TASKS

    caplog.set_level(logging.DEBUG, "isol8.pool")  # why a sandbox was not reused, should it not be
    async with DockerIsol8(
        security={"runtime": "runsc"}, pool_strategy="fast", pool_size=1, prewarm=["python"]
    ) as engine:
        planted = await engine.execute(ExecutionRequest(code=PLANTS[plant]))
        await engine._pool.settle()
        left = await engine.execute(ExecutionRequest(code="import os\nprint(os.getuid())\n" + SANDBOX_TASKS))
    assert planted.stdout == "planted\n", planted.stderr
    assert left.container_id == planted.container_id, caplog.text
    assert left.stdout == "61001\n[]\n", left.stdout


async def test_gvisor_session_survivor_is_gone_before_the_next_execution(runsc: None) -> None:
    """The same walk at the end of every job: the next execution of a session finds no survivor, and
    none writes what it stole (the secret is in the next execution's environment). A session keeps
    its files, so the loot the survivor wrote while its own execution ran is removed first."""
    from test_survivors import NEXT_EXECUTION, PLANTS, SANDBOX_TASKS

    async with DockerIsol8(security={"runtime": "runsc"}, mode="persistent") as session:
        planted = await session.execute(ExecutionRequest(code=PLANTS["alone-after-the-job"]))
        left = await session.execute(ExecutionRequest(code=SANDBOX_TASKS))
        victim = await session.execute(
            ExecutionRequest(
                cmd="rm -f /tmp/loot /sandbox/loot /dev/shm/loot\n" + NEXT_EXECUTION,
                runtime="python",
                secrets={"TOKEN": "next-execution-secret"},
            )
        )
    assert planted.stdout == "planted\n", planted.stderr
    assert left.stdout == "[]\n", left.stdout
    assert victim.stdout == "done\n", victim.stdout


# gVisor has no /proc/sysvipc: what a job left can be attached by its key, or by a small id alone
IPC_FIND = """
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(512)
found = [k for k, get in ((4243, libc.shmget), (4244, libc.semget), (4245, libc.msgget)) if get(k, 0, 0) >= 0]
for ident in range(64):  # IPC_STAT: 0 or EACCES both say the object exists
    for name, stat in (("shm", lambda i: libc.shmctl(i, 2, buf)), ("sem", lambda i: libc.semctl(i, 0, 2, buf)),
                       ("msg", lambda i: libc.msgctl(i, 2, buf))):
        if stat(ident) == 0 or ctypes.get_errno() == 13:
            found.append(f"{name}:{ident}")
print(json.dumps(found))
"""


@pytest.mark.parametrize(
    "leave", ["shared-memory-handed-to-root", "semaphores-handed-away-mode-0", "queue-handed-to-another-sandbox-uid"]
)
async def test_gvisor_fast_pool_hands_no_ipc_object_to_the_next_execution(
    runsc: None, leave: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The scrub cannot list these objects under gVisor, so the kernel's own count must be zero for
    the container to be reused; otherwise it is replaced, and a replacement is started at once."""
    from test_survivors import IPC_LEAVE

    caplog.set_level(logging.DEBUG, "isol8.pool")
    async with DockerIsol8(
        security={"runtime": "runsc"}, pool_strategy="fast", pool_size=1, prewarm=["python"]
    ) as engine:
        left = await engine.execute(ExecutionRequest(code=IPC_LEAVE[leave]))
        await engine._pool.settle()
        assert engine._pool.state()[0].ready == 1  # the replacement is ready, not started by the next run
        found = await engine.execute(ExecutionRequest(code=IPC_FIND))
    assert left.stdout == "left\n", left.stderr
    assert found.stdout == "[]\n", found.stdout
    assert found.container_id != left.container_id
    assert "System V IPC objects are left that /proc/sysvipc does not list" in caplog.text
