"""Processes that try to outlive their execution, and what a `fast` pool's scrub must erase.

A process whose main thread has exited while its other threads run shows as a zombie in
/proc/<pid>/status: a kill that skipped zombies, or looked only at thread-group leaders, left it
running across executions, timeouts and scrubs. Each test here plants such survivors in several
spellings and then looks, from the next execution, for any task of any sandbox uid but its own.
"""

from __future__ import annotations

import json

import pytest

from engine.engine import DockerIsol8
from engine.hardening import SANDBOX_UIDS
from engine.models import ExecutionRequest

pytestmark = pytest.mark.docker

# The main thread ends with the raw exit syscall (60 on x86_64, 93 on aarch64), not exit_group:
# the process lives on in its other threads. `planted` is printed only once the leader is a zombie
# (as an attacker would wait), so the job ends with the survivor already in that state.
MAIN_THREAD_EXITS = """
import ctypes, os, platform, threading, time
SYS_EXIT = {"x86_64": 60, "aarch64": 93}[platform.machine()]
ready_r, ready_w = os.pipe()
def leader_is_a_zombie():
    return open(f"/proc/{os.getpid()}/status").read().split("State:")[1].split()[0] == "Z"
def main_thread_exits(work, tell=True):
    def run():
        while tell and not leader_is_a_zombie():
            time.sleep(0.005)
        if tell:
            os.write(ready_w, b"x")
        work()
    threading.Thread(target=run).start()
    ctypes.CDLL(None).syscall(SYS_EXIT, 0)
def planted():
    os.read(ready_r, 1)
    print("planted", flush=True)
"""

STEAL = """
def steal():  # reads every other process's environment and files, forever
    import glob
    while True:
        loot = b""
        for path in glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline") + glob.glob("/sandbox/*"):
            try:
                loot += open(path, "rb").read()
            except OSError:
                pass
        if b"next-execution-secret" in loot:
            for target in ("/tmp/loot", "/sandbox/loot", "/dev/shm/loot"):
                try:
                    open(target, "wb").write(loot)
                except OSError:
                    pass
        time.sleep(0.02)
"""

PLANTS = {
    # a child of the job: its main thread exits, a thread keeps stealing
    "main-thread-exit-in-a-child": MAIN_THREAD_EXITS
    + STEAL
    + "if os.fork() == 0:\n    main_thread_exits(steal)\nplanted()\n",
    # double fork and setsid first, as a daemon would
    "detached-grandchild": MAIN_THREAD_EXITS
    + STEAL
    + "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        main_thread_exits(steal)\n    os._exit(0)\nplanted()\n",
    # the same, and the job waits for the middle child: the survivor is the only process of its uid
    # left, and under gVisor /proc/<pid>/task of a process whose leader has exited cannot be listed
    "alone-after-the-job": MAIN_THREAD_EXITS
    + STEAL
    + (
        "middle = os.fork()\nif middle == 0:\n    os.setsid()\n    if os.fork() == 0:\n        main_thread_exits(steal)\n"
        "    os._exit(0)\nos.waitpid(middle, 0)\nplanted()\n"
    ),
    # the surviving thread keeps forking new children that do the same
    "self-renewing": MAIN_THREAD_EXITS
    + STEAL
    + (
        "def renew():\n    while True:\n        if os.fork() == 0:\n            main_thread_exits(steal, tell=False)\n        time.sleep(0.2)\n"
        "if os.fork() == 0:\n    main_thread_exits(renew)\nplanted()\n"
    ),
    # many threads, the leader gone; one of them changes its name to hide
    "many-threads-renamed": MAIN_THREAD_EXITS
    + STEAL
    + (
        "def hide():\n    ctypes.CDLL(None).prctl(15, b'kworker/0:1', 0, 0, 0)\n    steal()\n"
        "if os.fork() == 0:\n    for _ in range(5):\n        threading.Thread(target=time.sleep, args=(600,)).start()\n    main_thread_exits(hide)\n"
        "planted()\n"
    ),
}

SANDBOX_TASKS = f"""
import glob, json, os
mine = {{str(os.getpid())}}
found = []
for task in glob.glob("/proc/[0-9]*") + glob.glob("/proc/[0-9]*/task/[0-9]*"):  # the process, and each task
    pid = task.split("/")[2]
    try:
        status = open(task + "/status").read()
    except OSError:
        continue
    uids = [int(u) for u in status.split("Uid:")[1].split("\\n")[0].split()]
    if pid not in mine and any({SANDBOX_UIDS.start} <= u < {SANDBOX_UIDS.stop} for u in uids):
        found.append(task)
print(json.dumps(found))
"""

NEXT_EXECUTION = """
sleep 1.5  # time for a survivor to find this execution and write its loot
for f in /tmp/loot /sandbox/loot /dev/shm/loot; do [ -e "$f" ] && echo "STOLEN via $f"; done
echo done
"""


@pytest.mark.parametrize("plant", list(PLANTS))
async def test_survivors_do_not_outlive_their_execution_in_a_session(docker_client: object, plant: str) -> None:
    async with DockerIsol8(mode="persistent") as engine:
        planted = await engine.execute(ExecutionRequest(code=PLANTS[plant]))
        assert planted.stdout == "planted\n", planted.stderr
        left = await engine.execute(ExecutionRequest(code=SANDBOX_TASKS))
        assert json.loads(left.stdout) == [], left.stdout


@pytest.mark.parametrize("plant", list(PLANTS))
async def test_survivors_do_not_outlive_a_timeout(docker_client: object, plant: str) -> None:
    async with DockerIsol8(mode="persistent") as engine:
        timed_out = await engine.execute(ExecutionRequest(code=PLANTS[plant] + "time.sleep(60)\n", timeout_ms=1500))
        assert timed_out.timed_out
        left = await engine.execute(ExecutionRequest(code=SANDBOX_TASKS))
        assert json.loads(left.stdout) == [], left.stdout


@pytest.mark.parametrize("plant", list(PLANTS))
async def test_fast_pool_scrub_leaves_no_survivor_to_read_the_next_execution(docker_client: object, plant: str) -> None:
    async with DockerIsol8(pool_strategy="fast", pool_size=1, prewarm=["python"]) as engine:
        first = await engine.execute(ExecutionRequest(code=PLANTS[plant]))
        assert first.stdout == "planted\n", first.stderr
        await engine._pool.settle()  # the scrub has run
        left = await engine.execute(ExecutionRequest(code=SANDBOX_TASKS))
        await engine._pool.settle()
        victim = await engine.execute(
            ExecutionRequest(cmd=NEXT_EXECUTION, runtime="python", secrets={"TOKEN": "next-execution-secret"})
        )
        await engine._pool.settle()
    assert left.container_id == first.container_id == victim.container_id  # the same, reused container
    assert json.loads(left.stdout) == [], left.stdout
    assert victim.stdout == "done\n", victim.stdout


async def test_fast_pool_runs_each_execution_as_its_own_uid(docker_client: object) -> None:
    """Defence in depth: a reused container's next execution is another uid, alone in its roots."""
    probe = (
        "import os, stat\nroots = ['/sandbox', '/tmp', '/dev/shm', '/dev/mqueue']\n"
        "print(os.getuid(), os.getgid(), os.getgroups(), [(os.stat(r).st_uid, oct(stat.S_IMODE(os.stat(r).st_mode))) for r in roots])"
    )
    seen = []
    async with DockerIsol8(pool_strategy="fast", pool_size=1, prewarm=["python"]) as engine:
        for _ in range(3):
            result = await engine.execute(ExecutionRequest(code=probe))
            await engine._pool.settle()
            seen.append((result.container_id, result.stdout))
    assert len({container for container, _ in seen}) == 1
    uids = [int(stdout.split()[0]) for _, stdout in seen]
    assert len(set(uids)) == 3 and all(uid in SANDBOX_UIDS for uid in uids), seen
    for (_, stdout), uid in zip(seen[1:], uids[1:], strict=True):  # after a scrub: the roots are its alone
        assert stdout == f"{uid} {uid} [] {[(uid, '0o700')] * 4}\n", stdout


# --- System V IPC ------------------------------------------------------------------------------------
IPC = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
IPC_CREAT, IPC_SET, IPC_STAT = 0o1000, 1, 2
def hand_over(ctl, ident, uid, mode):  # IPC_SET: the object now belongs to another uid
    buf = ctypes.create_string_buffer(512)
    assert ctl(ident, IPC_STAT, buf) == 0, os.strerror(ctypes.get_errno())
    ctypes.c_uint32.from_buffer(buf, 4).value = uid
    ctypes.c_uint32.from_buffer(buf, 8).value = uid
    ctypes.c_ushort.from_buffer(buf, 20).value = mode
    assert ctl(ident, IPC_SET, buf) == 0, os.strerror(ctypes.get_errno())
"""
IPC_LEAVE = {
    "shared-memory-handed-to-root": IPC
    + "shm = libc.shmget(4243, 4096, IPC_CREAT | 0o666)\naddr = ctypes.c_void_p(libc.shmat(shm, None, 0))\n"
    "ctypes.memmove(addr, b'previous-secret', 15)\nhand_over(lambda i, c, b: libc.shmctl(i, c, b), shm, 0, 0o666)\nprint('left')\n",
    "semaphores-handed-away-mode-0": IPC
    + "sem = libc.semget(4244, 3, IPC_CREAT | 0o600)\nhand_over(lambda i, c, b: libc.semctl(i, 0, c, b), sem, 12345, 0)\nprint('left')\n",
    "queue-handed-to-another-sandbox-uid": IPC
    + "q = libc.msgget(4245, IPC_CREAT | 0o666)\nmsg = ctypes.create_string_buffer(b'\\x01\\0\\0\\0\\0\\0\\0\\0previous-secret')\n"
    f"assert libc.msgsnd(q, msg, 15, 0) == 0\nhand_over(lambda i, c, b: libc.msgctl(i, c, b), q, {SANDBOX_UIDS.stop - 1}, 0o666)\nprint('left')\n",
}
IPC_LOOK = """
import glob
objects = []
for kind in ("shm", "sem", "msg"):
    objects += open(f"/proc/sysvipc/{kind}").read().splitlines()[1:]
print(len(objects), objects)
"""


@pytest.mark.parametrize("leave", list(IPC_LEAVE))
async def test_scrub_removes_every_ipc_object_whoever_owns_it(docker_client: object, leave: str) -> None:
    async with DockerIsol8(pool_strategy="fast", pool_size=1, prewarm=["python"]) as engine:
        left = await engine.execute(ExecutionRequest(code=IPC_LEAVE[leave]))
        assert left.stdout == "left\n", left.stderr
        await engine._pool.settle()
        after = await engine.execute(ExecutionRequest(code=IPC_LOOK))
        await engine._pool.settle()
    assert after.container_id == left.container_id
    assert after.stdout.startswith("0 "), after.stdout
