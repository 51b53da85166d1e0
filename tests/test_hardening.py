"""The hardening defaults, each proved from inside a real sandbox."""

from __future__ import annotations

import pytest

from engine.engine import DockerIsol8
from engine.hardening import SANDBOX_UID
from engine.models import ExecutionRequest

pytestmark = pytest.mark.docker


async def run(engine: DockerIsol8, code: str, **fields: object) -> tuple[str, str, int]:
    result = await engine.execute(ExecutionRequest(code=code, **fields))
    return result.stdout, result.stderr, result.exit_code


async def test_code_does_not_run_as_root(engine: DockerIsol8) -> None:
    stdout, _, _ = await run(engine, "import os; print(os.getuid(), os.getgid(), os.getgroups())")
    assert stdout == f"{SANDBOX_UID} {SANDBOX_UID} []\n"


@pytest.mark.parametrize("path", ["/etc/passwd", "/etc/new-file", "/usr/bin/python3", "/opt/isol8/agent.py"])
async def test_root_filesystem_is_read_only(engine: DockerIsol8, path: str) -> None:
    code = f"try:\n    open({path!r}, 'a').write('x')\n    print('wrote')\nexcept OSError as e:\n    print(e.errno)"
    stdout, _, _ = await run(engine, code)
    assert stdout in ("30\n", "13\n"), stdout  # EROFS, or EACCES before the kernel gets that far


async def test_sandbox_is_writable_and_executable_tmp_is_not_executable(engine: DockerIsol8) -> None:
    script = (
        "printf '#!/bin/sh\\necho ran\\n' > /sandbox/x.sh && chmod +x /sandbox/x.sh && /sandbox/x.sh;"
        "cp /sandbox/x.sh /tmp/x.sh && /tmp/x.sh; echo status=$?"
    )
    stdout, stderr, _ = await run(engine, script, runtime="bash")
    assert stdout == "ran\nstatus=126\n", stderr
    assert "Permission denied" in stderr


async def test_no_capabilities_and_no_new_privileges(engine: DockerIsol8) -> None:
    stdout, _, _ = await run(engine, "grep -E '^(CapEff|CapPrm|NoNewPrivs|Seccomp):' /proc/self/status", runtime="bash")
    fields = dict(line.split(":\t") for line in stdout.splitlines())
    assert fields["CapEff"] == fields["CapPrm"] == "0000000000000000"
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"


async def test_agent_cannot_be_killed_or_read(engine: DockerIsol8) -> None:
    stdout, _, _ = await run(
        engine, "kill -9 1; echo kill=$?; cat /proc/1/environ >/dev/null 2>&1; echo read=$?", runtime="bash"
    )
    assert stdout == "kill=1\nread=1\n"


async def test_pids_limit_holds(engine: DockerIsol8) -> None:
    code = (
        "import subprocess\nprocs = []\ntry:\n    for _ in range(200):\n"
        "        procs.append(subprocess.Popen(['sleep', '30']))\nexcept OSError as e:\n"
        "    print('stopped at', len(procs), e.errno)\n"
    )
    stdout, stderr, _ = await run(engine, code, timeout_ms=10_000)
    assert stdout.startswith("stopped at "), stderr
    count = int(stdout.split()[2])
    assert 40 < count < 64
    assert stdout.split()[3] == "11"  # EAGAIN


async def test_fork_bomb_is_contained_and_engine_returns(engine: DockerIsol8) -> None:
    result = await engine.execute(ExecutionRequest(cmd=":(){ :|:& };:; sleep 3", timeout_ms=2000))
    assert result.timed_out and result.exit_code == 137
    after = await engine.execute(ExecutionRequest(code="print('fine')"))
    assert after.stdout == "fine\n"


async def test_no_network_by_default(engine: DockerIsol8) -> None:
    code = (
        "import socket\nprint(sorted(n for _, n in socket.if_nameindex()))\ntry:\n"
        "    socket.create_connection(('1.1.1.1', 53), timeout=2)\n    print('connected')\n"
        "except OSError as e:\n    print('blocked')"
    )
    for _ in range(3):  # repeated runs all fail: no race at start
        stdout, _, _ = await run(engine, code)
        assert stdout == "['lo']\nblocked\n"


async def test_memory_and_cpu_limits_are_applied(engine: DockerIsol8) -> None:
    stdout, _, _ = await run(
        engine,
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max;"
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max",
        runtime="bash",
    )
    assert stdout.split() == [str(512 << 20), "100000"]


async def test_sandbox_owned_by_sandbox_user_and_sized(engine: DockerIsol8) -> None:
    stdout, _, _ = await run(
        engine, "stat -c '%u %a' /sandbox; df -k /sandbox /tmp | tail -2 | awk '{print $2}'", runtime="bash"
    )
    owner, sandbox_kb, tmp_kb = stdout.split("\n")[0], *stdout.split()[2:]
    assert owner == f"{SANDBOX_UID} 755"
    assert (int(sandbox_kb), int(tmp_kb)) == (512 * 1024, 256 * 1024)


async def test_sandbox_containers_are_labelled(engine: DockerIsol8) -> None:
    # Its own container, found by the hostname Docker gives it (the short id): other tests' and the
    # pool's containers may exist on the same daemon at the same time.
    stream = engine.execute_stream(ExecutionRequest(cmd="cat /etc/hostname; sleep 5", runtime="bash"))
    async for event in stream:
        short_id = event.data.strip()
        break
    by_id = {container["Id"][:12]: container["Labels"] for container in engine.docker.managed_containers()}
    await stream.aclose()
    labels = by_id[short_id]
    assert labels["isol8.managed"] == "true"
    assert labels["isol8.runtime"] == "bash" and labels["isol8.mode"] == "ephemeral"
