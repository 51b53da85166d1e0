"""Optional stronger isolation: sandboxes under gVisor (`security.runtime: "runsc"`)."""

from __future__ import annotations

import logging

import pytest
from test_survivors import IPC_LEAVE, NEXT_EXECUTION, PLANTS, SANDBOX_TASKS

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


async def test_gvisor_sessions_keep_their_files(runsc: None) -> None:
    async with DockerIsol8(security={"runtime": "runsc"}, mode="persistent") as session:
        await session.execute(ExecutionRequest(cmd="echo kept > /sandbox/f"))
        assert (await session.execute(ExecutionRequest(cmd="cat /sandbox/f"))).stdout == "kept\n"


@pytest.mark.parametrize("plant", ["detached-grandchild", "alone-after-the-job", "many-threads-renamed"])
async def test_gvisor_survivor_is_gone_before_the_next_execution(runsc: None, plant: str) -> None:
    """The walk at the end of every job, under gVisor's /proc: a process whose leader has exited has
    no listable /proc/<pid>/task there, so the agent finds it by its own status too. The next
    execution finds no survivor, and none writes what it stole (the secret is in the next
    execution's environment); a session keeps its files, so the loot written while the survivor's
    own execution ran is removed first."""
    async with DockerIsol8(security={"runtime": "runsc"}, mode="persistent") as session:
        planted = await session.execute(ExecutionRequest(code=PLANTS[plant]))
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


# What a run leaves in the kernel, found the way an attacker would: by key, name, or a small id alone.
KERNEL_LEAVE = {
    **IPC_LEAVE,
    "posix-queue-mode-666": (  # gVisor has no mq_send: the queue's name is what is left
        "import ctypes, os\nrt = ctypes.CDLL('librt.so.1', use_errno=True)\n"
        "assert rt.mq_open(b'/left', os.O_CREAT | os.O_RDWR, 0o666, None) >= 0, os.strerror(ctypes.get_errno())\n"
        "print('left')\n"
    ),
    "nothing": "print('left')\n",
}
KERNEL_FIND = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
rt = ctypes.CDLL("librt.so.1", use_errno=True)
buf = ctypes.create_string_buffer(512)
found = [k for k, get in ((4243, libc.shmget), (4244, libc.semget), (4245, libc.msgget)) if get(k, 0, 0) >= 0]
for ident in range(64):  # IPC_STAT: 0 or EACCES both say the object exists
    for name, stat in (("shm", lambda i: libc.shmctl(i, 2, buf)), ("sem", lambda i: libc.semctl(i, 0, 2, buf)),
                       ("msg", lambda i: libc.msgctl(i, 2, buf))):
        if stat(ident) == 0 or ctypes.get_errno() == 13:
            found.append(f"{name}:{ident}")
if rt.mq_open(b"/left", os.O_RDONLY, 0, None) >= 0:
    found.append("mq:/left")
print(json.dumps(found))
"""


@pytest.mark.parametrize("leave", list(KERNEL_LEAVE))
async def test_gvisor_fast_pool_hands_no_container_on(
    runsc: None, leave: str, caplog: pytest.LogCaptureFixture
) -> None:
    """gVisor has neither /proc/sysvipc nor /dev/mqueue, though System V IPC and POSIX queues work:
    a scrub could not find what a run left there, so it says so and the container is replaced
    (a replacement is started at once), whatever the run did."""
    caplog.set_level(logging.DEBUG, "isol8.pool")
    async with DockerIsol8(
        security={"runtime": "runsc"}, pool_strategy="fast", pool_size=1, prewarm=["python"]
    ) as engine:
        left = await engine.execute(ExecutionRequest(code=KERNEL_LEAVE[leave]))
        await engine._pool.settle()
        assert [state.ready for state in engine._pool.state()] == [1]  # not left for the next run to start
        found = await engine.execute(ExecutionRequest(code=KERNEL_FIND))
    assert left.stdout == "left\n", left.stderr
    assert found.stdout == "[]\n", found.stdout
    assert found.container_id != left.container_id
    assert "System V IPC objects and POSIX message queues cannot be listed here" in caplog.text
