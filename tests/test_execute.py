"""Ephemeral execution on the real daemon: every runtime, exit codes, streaming, timeouts, inputs."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from engine.engine import DockerIsol8
from engine.errors import ImageMissing
from engine.models import ExecutionRequest, StreamEvent

pytestmark = pytest.mark.docker

HELLO = {
    "python": "import sys; print('hello', sys.version_info[0])",
    "node": "console.log('hello', typeof process)",
    "bun": "const n: number = 3; console.log('hello', n)",
    "deno": "const n: number = 4; console.log('hello', n, typeof Deno)",
    "bash": "echo hello $((2 + 3))",
}
EXPECTED = {
    "python": "hello 3\n",
    "node": "hello object\n",
    "bun": "hello 3\n",
    "deno": "hello 4 object\n",
    "bash": "hello 5\n",
}


@pytest.mark.parametrize("runtime", list(HELLO))
async def test_each_runtime_runs_inline_code(engine: DockerIsol8, runtime: str) -> None:
    result = await engine.execute(ExecutionRequest(code=HELLO[runtime], runtime=runtime))
    assert (result.stdout, result.exit_code) == (EXPECTED[runtime], 0), result.stderr
    assert result.runtime == runtime and result.container_id


async def test_output_is_returned_exactly(engine: DockerIsol8) -> None:
    code = "import sys; sys.stdout.write('  a\\n\\n  '); sys.stderr.write('err  \\n')"
    result = await engine.execute(ExecutionRequest(code=code))
    assert result.stdout == "  a\n\n  " and result.stderr == "err  \n"


@pytest.mark.parametrize(
    ("runtime", "code"),
    [("python", "import sys; sys.exit(42)"), ("node", "process.exit(42)"), ("bash", "exit 42")],
)
async def test_exit_code_propagates(engine: DockerIsol8, runtime: str, code: str) -> None:
    result = await engine.execute(ExecutionRequest(code=code, runtime=runtime))
    assert result.exit_code == 42 and not result.timed_out


async def test_cmd_runs_bash_in_the_runtime_image(engine: DockerIsol8) -> None:
    result = await engine.execute(ExecutionRequest(cmd="python3 -c 'print(7)' && echo $0", runtime="python"))
    assert result.stdout == "7\nbash\n"


async def test_node_inline_is_esm_and_cjs_extension_is_commonjs(engine: DockerIsol8) -> None:
    esm = await engine.execute(
        ExecutionRequest(code="import os from 'node:os'; console.log(typeof os.cpus)", runtime="node")
    )
    assert esm.stdout == "function\n", esm.stderr
    cjs = await engine.execute(
        ExecutionRequest(
            code="const os = require('os'); console.log(typeof os.cpus)",
            runtime="node",
            file_extension=".cjs",
        )
    )
    assert cjs.stdout == "function\n", cjs.stderr


async def test_timeout_kills_and_reports(engine: DockerIsol8) -> None:
    started = time.monotonic()
    result = await engine.execute(ExecutionRequest(code="import time; time.sleep(30)", timeout_ms=1000))
    elapsed = time.monotonic() - started
    assert result.exit_code == 137 and result.timed_out
    assert result.stderr.endswith("--- EXECUTION TIMED OUT ---")
    assert elapsed < 5, f"took {elapsed:.1f}s"


async def test_timeout_kills_detached_children(engine: DockerIsol8) -> None:
    code = "setsid sleep 60 & nohup sleep 60 >/dev/null 2>&1 & sleep 60"
    result = await engine.execute(ExecutionRequest(cmd=code, timeout_ms=500))
    assert result.timed_out and result.exit_code == 137


async def test_stdin_env_and_workdir(engine: DockerIsol8) -> None:
    code = "import os, sys; print(sys.stdin.read().upper(), os.environ['GREETING'], os.getcwd())"
    result = await engine.execute(ExecutionRequest(code=code, stdin="abc", env={"GREETING": "hi"}, workdir="sub/dir"))
    assert result.stdout == "ABC hi /sandbox/sub/dir\n", result.stderr


async def test_env_does_not_leak_into_the_next_execution(engine: DockerIsol8) -> None:
    await engine.execute(ExecutionRequest(code="print(1)", env={"LEAK": "x"}))
    result = await engine.execute(ExecutionRequest(code="import os; print(os.environ.get('LEAK'))"))
    assert result.stdout == "None\n"


async def test_stream_yields_events_in_order_and_one_exit(engine: DockerIsol8) -> None:
    code = "import sys, time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.2)\nsys.exit(3)"
    events: list[tuple[float, StreamEvent]] = []
    async for event in engine.execute_stream(ExecutionRequest(code=code)):
        events.append((time.monotonic(), event))
    kinds = [event.type for _, event in events]
    assert kinds.count("exit") == 1 and kinds[-1] == "exit"
    assert events[-1][1].data == "3"
    assert "".join(e.data for _, e in events if e.type == "stdout") == "0\n1\n2\n"
    # Live: the first line arrived well before the end, not all at once.
    first = next(t for t, e in events if e.type == "stdout")
    assert events[-1][0] - first > 0.3
    assert all(event.phase == "code" for _, event in events)


async def test_stream_timeout_emits_error_then_exit(engine: DockerIsol8) -> None:
    events = [e async for e in engine.execute_stream(ExecutionRequest(cmd="sleep 20", timeout_ms=300))]
    assert [(e.type, e.data) for e in events[-2:]] == [("error", "EXECUTION TIMED OUT"), ("exit", "137")]
    assert (events[-1].timed_out, events[-1].oom_killed) == (True, False)  # as the result says it


async def test_stream_exit_says_out_of_memory(engine: DockerIsol8) -> None:
    code = "x = bytearray(400 * 1024 * 1024)"
    request = ExecutionRequest(code=code, memory_limit="128m", timeout_ms=20_000)
    events = [e async for e in engine.execute_stream(request)]
    assert [(e.type, e.data) for e in events[-2:]] == [("error", "OUT OF MEMORY"), ("exit", "137")]
    assert (events[-1].timed_out, events[-1].oom_killed) == (False, True)
    ok = [e async for e in engine.execute_stream(ExecutionRequest(code="print(1)"))]
    assert (ok[-1].type, ok[-1].timed_out, ok[-1].oom_killed) == ("exit", False, False)


async def test_breaking_out_of_a_stream_frees_the_container(engine: DockerIsol8) -> None:
    stream = engine.execute_stream(
        ExecutionRequest(code="import time\nwhile True:\n    print(1, flush=True)\n    time.sleep(0.05)")
    )
    async for event in stream:
        if event.type == "stdout":
            break
    await stream.aclose()
    await engine.stop()
    assert engine.docker.managed_containers() == []


async def test_invalid_output_is_replaced_not_raised(engine: DockerIsol8) -> None:
    result = await engine.execute(ExecutionRequest(code="import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end')"))
    assert result.stdout == "ok \ufffd\ufffd end"


def test_unknown_runtime_is_refused_at_the_boundary() -> None:
    with pytest.raises(ValidationError, match=r'Unknown runtime: "cobol"\. Available: python, node, bun, deno, bash'):
        ExecutionRequest(code="x", runtime="cobol")


async def test_concurrent_executions_get_their_own_results(docker_client: object) -> None:
    import asyncio

    async with DockerIsol8() as engine:
        results = await asyncio.gather(*(engine.execute(ExecutionRequest(code=f"print({i} * 2)")) for i in range(6)))
    assert [r.stdout for r in results] == [f"{i * 2}\n" for i in range(6)]
    assert len({r.container_id for r in results}) == 6


async def test_a_missing_image_raises_image_missing(docker_client: object) -> None:
    async with DockerIsol8(image="isol8-test-absent:none") as engine:
        with pytest.raises(
            ImageMissing, match=r"^Image isol8-test-absent:none is missing or outdated\. Run `isol8 setup`"
        ):
            await engine.execute(ExecutionRequest(code="print(1)"))


async def test_a_nul_byte_past_validation_fails_the_job_not_the_agent(engine: DockerIsol8) -> None:
    """Defence in depth: a request built without validation reaches the agent with a NUL in argv."""
    unchecked = ExecutionRequest.model_construct(**{**ExecutionRequest(cmd="true").__dict__, "cmd": "echo a\0b"})
    result = await engine.execute(unchecked)
    assert result.exit_code != 0 and "embedded null byte" in result.stderr
    after = await engine.execute(ExecutionRequest(cmd="echo fine"))
    assert after.stdout == "fine\n"
