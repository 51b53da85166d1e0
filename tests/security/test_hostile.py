"""Hostile programs: each runs real attack code and checks the host, the engine and the next
execution are unharmed and the run is reported for what it was. (Cases proved elsewhere are
listed in SECURITY.md with their tests.)"""

from __future__ import annotations

import platform

import pytest

from engine.engine import DockerIsol8
from engine.models import ExecutionRequest

pytestmark = pytest.mark.docker

# Syscall numbers for the probe below (x86_64, aarch64).
SYSCALLS = {
    "x86_64": {"mount": 165, "unshare": 272, "setns": 308, "ptrace": 101, "keyctl": 250, "bpf": 321,
               "perf_event_open": 298, "io_uring_setup": 425, "init_module": 175, "kexec_load": 246},
    "aarch64": {"mount": 40, "unshare": 97, "setns": 268, "ptrace": 117, "keyctl": 219, "bpf": 280,
                "perf_event_open": 241, "io_uring_setup": 425, "init_module": 105, "kexec_load": 104},
}  # fmt: skip

PROBE = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
result = {}
for name, number in NUMBERS.items():
    ctypes.set_errno(0)
    rc = libc.syscall(number, 0, 0, 0, 0, 0)
    result[name] = 'allowed' if rc >= 0 else os.strerror(ctypes.get_errno())
print(json.dumps(result))
"""


async def test_dangerous_syscalls_are_refused(engine: DockerIsol8) -> None:
    numbers = SYSCALLS.get(platform.machine())
    if numbers is None:
        pytest.skip(f"no syscall table for {platform.machine()}")
    result = await engine.execute(ExecutionRequest(code=f"NUMBERS = {numbers!r}\n{PROBE}"))
    outcome = __import__("json").loads(result.stdout)
    assert set(outcome) == set(numbers)
    assert all(value == "Operation not permitted" for value in outcome.values()), outcome


@pytest.mark.parametrize(
    ("runtime", "code"),
    [
        # The script then spins on builtins: a `sleep` would need a fork the bomb has taken,
        # and bash's fork retries could end the script before its timeout.
        ("bash", ":(){ :|:& };: ; while true; do true; done"),
        ("python", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"),
    ],
)
async def test_fork_bomb_is_contained(engine: DockerIsol8, runtime: str, code: str) -> None:
    result = await engine.execute(ExecutionRequest(code=code, runtime=runtime, timeout_ms=2000))
    assert result.timed_out and result.exit_code == 137
    after = await engine.execute(ExecutionRequest(code="print('alive')"))
    assert after.stdout == "alive\n"


@pytest.mark.parametrize(
    ("runtime", "code"),
    [
        ("python", "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024 * 1024))"),
        ("bash", "x=a; while true; do x=$x$x; done"),
    ],
)
async def test_memory_bomb_is_reported_as_out_of_memory(engine: DockerIsol8, runtime: str, code: str) -> None:
    result = await engine.execute(ExecutionRequest(code=code, runtime=runtime, memory_limit="128m", timeout_ms=20_000))
    assert result.oom_killed and not result.timed_out and result.exit_code == 137, result.stderr[-300:]


@pytest.mark.parametrize("where", ["/sandbox", "/tmp", "/dev/shm"])
async def test_filling_the_disk_stops_inside(engine: DockerIsol8, where: str) -> None:
    code = f"import errno\ntry:\n    with open('{where}/fill', 'wb') as f:\n        while True:\n            f.write(b'x' * (1 << 20))\nexcept OSError as e:\n    print(errno.errorcode[e.errno])"
    result = await engine.execute(ExecutionRequest(code=code, sandbox_size="32m", tmp_size="32m", timeout_ms=20_000))
    assert result.stdout == "ENOSPC\n", result.stderr


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "/usr/lib/evil", "/proc/sys/kernel/hostname", "/sys/kernel/mm/evil", "/proc/sysrq-trigger"]
)
async def test_system_paths_cannot_be_written(engine: DockerIsol8, path: str) -> None:
    code = f"try:\n    open('{path}', 'w').write('x')\n    print('WROTE')\nexcept OSError as e:\n    print('refused', e.errno)"
    result = await engine.execute(ExecutionRequest(code=code))
    assert result.stdout.startswith("refused"), result.stdout


async def test_host_and_agent_cannot_be_read(engine: DockerIsol8) -> None:
    code = """
import os
def attempt(path):
    try:
        with open(path, 'rb') as f:
            f.read(1)
        return 'READ'
    except OSError as e:
        return 'refused'
print(attempt('/proc/1/root/etc/shadow'), attempt('/proc/1/environ'), attempt('/proc/1/mem'))
print(os.path.exists('/var/run/docker.sock'), os.path.exists('/run/docker.sock'))
print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit())[0])
"""
    result = await engine.execute(ExecutionRequest(code=code))
    lines = result.stdout.splitlines()
    assert lines[0] == "refused refused refused"
    assert lines[1] == "False False"
    assert lines[2] == "1"  # its own PID namespace: no host process is visible


async def test_agent_cannot_be_killed_or_traced(engine: DockerIsol8) -> None:
    result = await engine.execute(
        ExecutionRequest(
            cmd="kill -9 1; echo kill=$?; kill -STOP 1; echo stop=$?; cat /proc/1/status >/dev/null; echo next"
        )
    )
    assert result.stdout == "kill=1\nstop=1\nnext\n"
    again = await engine.execute(ExecutionRequest(code="print('agent fine')"))
    assert again.stdout == "agent fine\n"


async def test_setuid_binaries_give_nothing(engine: DockerIsol8) -> None:
    code = "find / -xdev -perm -4000 -type f 2>/dev/null | head -3; su -c id root </dev/null 2>&1 | tail -1; id -u"
    result = await engine.execute(ExecutionRequest(cmd=code))
    assert result.stdout.splitlines()[-1] == "61000"
    assert "uid=0" not in result.stdout


@pytest.mark.parametrize(
    "escape",
    [
        "nohup sleep 300 >/dev/null 2>&1 &",
        "setsid sleep 300 &",
        "(sleep 300 &) &",
        "python3 -c 'import os,time\nif os.fork(): os._exit(0)\nos.setsid()\ntime.sleep(300)' &",
    ],
)
async def test_no_process_outlives_its_execution(docker_client: object, escape: str) -> None:
    async with DockerIsol8(mode="persistent") as engine:
        await engine.execute(ExecutionRequest(cmd=f"{escape} echo spawned"))
        survivors = 'ps -eo uid=,comm= | awk \'$1 == 61000 && ($2 == "sleep" || $2 == "python3")\' | wc -l'
        result = await engine.execute(ExecutionRequest(cmd=survivors))
    assert result.stdout == "0\n"


async def test_concurrent_executions_cannot_see_each_other(engine: DockerIsol8) -> None:
    import asyncio

    writer = ExecutionRequest(
        code="import time\nopen('/sandbox/mine', 'w').write('secret')\nprint('written', flush=True)\ntime.sleep(2)",
        env={"PRIVATE": "value-a"},
    )
    reader = ExecutionRequest(
        code="import os, time\ntime.sleep(0.7)\nprint(os.path.exists('/sandbox/mine'), os.environ.get('PRIVATE'), len([p for p in os.listdir('/proc') if p.isdigit()]) < 10)"
    )
    _, seen = await asyncio.gather(engine.execute(writer), engine.execute(reader))
    assert seen.stdout == "False None True\n"


@pytest.mark.parametrize(
    ("runtime", "code"),
    [
        ("python", "import sys\nsys.stdout.write('y' * 50_000_000)"),  # one huge line
        ("bash", "head -c 30000000 /dev/urandom"),  # binary garbage
        (
            "python",
            "import sys\nfor _ in range(2000):\n    sys.stdout.buffer.write(bytes(range(128, 256)) * 100)",
        ),  # invalid UTF-8
    ],
)
async def test_hostile_output_is_capped_and_decoded(engine: DockerIsol8, runtime: str, code: str) -> None:
    result = await engine.execute(ExecutionRequest(code=code, runtime=runtime, timeout_ms=20_000))
    assert result.exit_code == 0 and result.stdout_truncated
    assert len(result.stdout.encode()) < 4 * (1 << 20)  # 1 MiB kept; replacement characters widen it at most 3x
    assert result.stdout.count("--- OUTPUT TRUNCATED") == 1


@pytest.mark.parametrize(
    "target", ["169.254.169.254:80", "172.17.0.1:2375", "1.1.1.1:53", "[2606:4700:4700::1111]:443"]
)
async def test_no_network_escape_in_none_mode(engine: DockerIsol8, target: str) -> None:
    host, port = target.rsplit(":", 1)
    code = f"import socket\ntry:\n    socket.create_connection(({host.strip('[]')!r}, {port}), timeout=3)\n    print('CONNECTED')\nexcept OSError:\n    print('blocked')"
    result = await engine.execute(ExecutionRequest(code=code))
    assert result.stdout == "blocked\n"
