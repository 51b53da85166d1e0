"""Execution semantics on the real daemon: limits, output caps, masking, files, usage."""

from __future__ import annotations

import hashlib
import os
import resource

import pytest
from pydantic import ValidationError

from engine.engine import DockerIsol8
from engine.errors import Isol8Error
from engine.models import ExecutionRequest

pytestmark = pytest.mark.docker

MIB = 1 << 20

FLOOD = {
    "python": "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 100_000)\n",
    "node": "for (let i = 0; i < 100; i++) process.stdout.write('x'.repeat(100000))",
    "bash": "head -c 10000000 /dev/zero | tr '\\0' x",
}


@pytest.mark.parametrize("runtime", list(FLOOD))
async def test_output_cap_cuts_once_and_keeps_memory_flat(engine: DockerIsol8, runtime: str) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = await engine.execute(ExecutionRequest(code=FLOOD[runtime], runtime=runtime))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    marker = f"\n--- OUTPUT TRUNCATED (10000000 bytes, limit: {MIB}) ---\n"
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "x" * MIB + marker
    assert result.stdout.count("OUTPUT TRUNCATED") == 1
    assert result.truncated and result.stdout_truncated and not result.stderr_truncated
    assert grown_mib < 30, f"engine grew by {grown_mib:.0f} MiB for 10 MB of output"


async def test_stream_is_capped_the_same_way(engine: DockerIsol8) -> None:
    request = ExecutionRequest(code=FLOOD["python"], max_output_size=1000)
    events = [event async for event in engine.execute_stream(request)]
    stdout = "".join(e.data for e in events if e.type == "stdout")
    assert stdout == "x" * 1000 + "\n--- OUTPUT TRUNCATED (10000000 bytes, limit: 1000) ---\n"
    assert events[-1].type == "exit" and events[-1].truncated is True


async def test_caps_apply_to_each_stream_separately(engine: DockerIsol8) -> None:
    code = "import sys; sys.stdout.write('o' * 50); sys.stderr.write('e' * 500)"
    result = await engine.execute(ExecutionRequest(code=code, max_output_size=100))
    assert result.stdout == "o" * 50 and not result.stdout_truncated
    assert result.stderr.startswith("e" * 100 + "\n--- OUTPUT TRUNCATED (500 bytes") and result.stderr_truncated


async def test_endless_output_is_drained_not_blocking(engine: DockerIsol8) -> None:
    result = await engine.execute(ExecutionRequest(cmd="yes", timeout_ms=1500, max_output_size=1000))
    assert result.timed_out and result.stdout_truncated
    assert result.stdout.count("OUTPUT TRUNCATED") == 1


SPLIT_SECRET = {
    "python": "import os, sys, time\ns = os.environ['API_KEY']\nsys.stdout.write(s[:5]); sys.stdout.flush()\n"
    "time.sleep(0.2)\nprint(s[5:])\nprint('again', s, file=sys.stderr)",
    "node": "const s = process.env.API_KEY; process.stdout.write(s.slice(0, 5));"
    "setTimeout(() => { console.log(s.slice(5)); console.error('again', s) }, 200)",
    "bash": 'printf %s "${API_KEY:0:5}"; sleep 0.2; echo "${API_KEY:5}"; echo again "$API_KEY" >&2',
}


@pytest.mark.parametrize("runtime", list(SPLIT_SECRET))
async def test_secret_split_across_writes_never_appears(engine: DockerIsol8, runtime: str) -> None:
    secret = "sk-live-0123456789abcdef"
    request = ExecutionRequest(code=SPLIT_SECRET[runtime], runtime=runtime, secrets={"API_KEY": secret})
    result = await engine.execute(request)
    assert (result.stdout, result.stderr) == ("***\n", "again ***\n")
    events = [event async for event in engine.execute_stream(request)]
    streamed = "".join(e.data for e in events)
    assert secret not in streamed and secret[:5] not in streamed
    assert "".join(e.data for e in events if e.type == "stdout") == "***\n"


async def test_secret_cut_by_the_output_cap_is_masked(engine: DockerIsol8) -> None:
    code = "import os; print('ab' + os.environ['TOKEN'])"
    result = await engine.execute(ExecutionRequest(code=code, secrets={"TOKEN": "topsecretvalue"}, max_output_size=6))
    assert "tops" not in result.stdout and result.stdout.startswith("ab***")


async def test_engine_level_secrets_are_masked(docker_client: object) -> None:
    async with DockerIsol8(secrets={"DB_PASSWORD": "pa55word!"}) as engine:
        result = await engine.execute(ExecutionRequest(cmd="echo $DB_PASSWORD; echo pa55word! >&2"))
    assert (result.stdout, result.stderr) == ("***\n", "***\n")


async def test_binary_file_round_trips_byte_identical(engine: DockerIsol8) -> None:
    payload = os.urandom(MIB)
    result = await engine.execute(
        ExecutionRequest(
            cmd="sha256sum /sandbox/a/b/c.bin | cut -c1-64; cp /sandbox/a/b/c.bin /tmp/copy.bin",
            files={"/sandbox/a/b/c.bin": payload, "/tmp/note.txt": "text too"},
            output_paths=["/sandbox/a/b/c.bin", "/tmp/copy.bin", "/tmp/note.txt", "/sandbox/missing"],
        )
    )
    assert result.stdout == hashlib.sha256(payload).hexdigest() + "\n", result.stderr
    assert result.files == {
        "/sandbox/a/b/c.bin": payload,
        "/tmp/copy.bin": payload,
        "/tmp/note.txt": b"text too",
    }


@pytest.mark.parametrize("path", ["/etc/passwd", "/sandbox/../etc/x", "relative.txt", "/sandbox", "/sandboxes/x"])
def test_file_paths_outside_the_sandbox_are_refused(path: str) -> None:
    with pytest.raises(ValidationError, match="File path must be a file inside /sandbox or /tmp"):
        ExecutionRequest(code="1", files={path: "x"})
    with pytest.raises(ValidationError, match="File path must be a file inside /sandbox or /tmp"):
        ExecutionRequest(code="1", output_paths=[path])


async def test_symlink_out_of_the_sandbox_is_refused_on_the_way_out(engine: DockerIsol8) -> None:
    with pytest.raises(Isol8Error, match=r"Cannot read /sandbox/link from the sandbox: .*escapes"):
        await engine.execute(ExecutionRequest(cmd="ln -s /etc/passwd /sandbox/link", output_paths=["/sandbox/link"]))


async def test_large_stdin_is_delivered_exactly(engine: DockerIsol8) -> None:
    data = os.urandom(8 * MIB)
    result = await engine.execute(
        ExecutionRequest(
            code="import sys, hashlib; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())", stdin=data
        )
    )
    assert result.stdout == hashlib.sha256(data).hexdigest() + "\n", result.stderr


async def test_timeout_has_millisecond_precision(engine: DockerIsol8) -> None:
    result = await engine.execute(ExecutionRequest(cmd="sleep 5", timeout_ms=500))
    assert result.timed_out and result.exit_code == 137
    assert 450 <= result.duration_ms < 900, result.duration_ms


@pytest.mark.parametrize(
    ("runtime", "code"),
    [
        ("python", "x = bytearray(400 * 1024 * 1024)\nprint('allocated')"),
        (
            "node",
            "const b = []; for (let i = 0; i < 100; i++) b.push(Buffer.alloc(8 << 20, 1)); console.log('no')",
        ),
    ],
)
async def test_out_of_memory_is_reported_as_such(engine: DockerIsol8, runtime: str, code: str) -> None:
    result = await engine.execute(ExecutionRequest(code=code, runtime=runtime, memory_limit="128m", timeout_ms=20_000))
    assert result.oom_killed and result.exit_code == 137 and not result.timed_out, result.stderr
    assert result.stderr.endswith("--- OUT OF MEMORY (limit: 128m) ---")
    after = await engine.execute(ExecutionRequest(code="print('still fine')"))
    assert after.stdout == "still fine\n"


async def test_cpu_limit_throttles(engine: DockerIsol8) -> None:
    code = "import time\nend = time.time() + 1.5\nwhile time.time() < end:\n    pass"
    result = await engine.execute(ExecutionRequest(code=code, cpu_limit=0.25))
    usage = result.resource_usage
    assert usage and usage.cpu_time_ms is not None
    assert 200 < usage.cpu_time_ms < 700, usage  # a quarter of 1.5 s, with slack


@pytest.mark.parametrize(("where", "size_field"), [("/sandbox", "sandbox_size"), ("/tmp", "tmp_size")])
async def test_tmpfs_sizes_hold(engine: DockerIsol8, where: str, size_field: str) -> None:
    code = f"head -c 64m /dev/zero > {where}/big 2>/dev/null; echo $?; du -m {where}/big | cut -f1"
    result = await engine.execute(ExecutionRequest(cmd=code, **{size_field: "16m"}))
    status, written = result.stdout.split()
    assert status == "1" and int(written) <= 16


async def test_resource_usage_on_every_result(engine: DockerIsol8) -> None:
    result = await engine.execute(ExecutionRequest(code="x = bytearray(60 * 1024 * 1024); print(len(x))"))
    usage = result.resource_usage
    assert usage is not None and usage.cpu_time_ms and usage.cpu_time_ms > 0
    assert usage.peak_memory_bytes and usage.peak_memory_bytes > 60 * MIB
    assert usage.network_bytes_in is None  # network "none": there is no interface to count


async def test_binary_garbage_does_not_break_the_stream(engine: DockerIsol8) -> None:
    events = [
        e async for e in engine.execute_stream(ExecutionRequest(cmd="head -c 200000 /dev/urandom; echo done >&2"))
    ]
    assert events[-1].type == "exit" and events[-1].data == "0"
    assert "".join(e.data for e in events if e.type == "stderr") == "done\n"
