"""Persistent sessions, the file API, package installs, setup scripts and custom images."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import run_cli

from engine.docker import DockerClient
from engine.engine import DockerIsol8
from engine.errors import Isol8Error
from engine.images.custom import build_custom, find_custom
from engine.models import ExecutionRequest

pytestmark = pytest.mark.docker

STATE = {
    "python": ("open('/sandbox/state.txt', 'w').write('kept')", "print(open('/sandbox/state.txt').read())"),
    "node": (
        "import fs from 'node:fs'; fs.writeFileSync('/tmp/state.txt', 'kept')",
        "import fs from 'node:fs'; console.log(fs.readFileSync('/tmp/state.txt', 'utf8'))",
    ),
    "bun": (
        "await Bun.write('/sandbox/state.txt', 'kept')",
        "console.log(await Bun.file('/sandbox/state.txt').text())",
    ),
    "deno": (
        "Deno.writeTextFileSync('/sandbox/s.txt', 'kept')",
        "console.log(Deno.readTextFileSync('/sandbox/s.txt'))",
    ),
    "bash": ("echo kept > /sandbox/state.txt", "cat /sandbox/state.txt"),
}


@pytest.mark.parametrize("runtime", list(STATE))
async def test_state_survives_between_calls(docker_client: DockerClient, runtime: str) -> None:
    write, read = STATE[runtime]
    async with DockerIsol8(mode="persistent") as engine:
        first = await engine.execute(ExecutionRequest(code=write, runtime=runtime))
        assert first.exit_code == 0, first.stderr
        second = await engine.execute(ExecutionRequest(code=read, runtime=runtime))
        assert second.stdout == "kept\n", second.stderr
        assert first.container_id == second.container_id == engine.container_id
    assert docker_client.managed_containers() == []


async def test_switching_runtime_is_refused(docker_client: DockerClient) -> None:
    async with DockerIsol8(mode="persistent") as engine:
        await engine.execute(ExecutionRequest(code="print(1)", runtime="python"))
        with pytest.raises(Isol8Error) as info:
            await engine.execute(ExecutionRequest(code="console.log(1)", runtime="node"))
    assert str(info.value) == (
        'Cannot switch runtime from "python" to "node". Each persistent container supports a single runtime. '
        "Create a new engine for a different runtime."
    )


async def test_large_file_round_trips_through_the_file_api(docker_client: DockerClient) -> None:
    payload = os.urandom(64 << 20)
    async with DockerIsol8(mode="persistent", runtime="python") as engine:
        await engine.put_file("/sandbox/deep/dir/big.bin", payload)
        result = await engine.execute(
            ExecutionRequest(
                code="import hashlib; print(hashlib.sha256(open('/sandbox/deep/dir/big.bin','rb').read()).hexdigest())"
            )
        )
        assert result.stdout.strip() == __import__("hashlib").sha256(payload).hexdigest()
        assert await engine.get_file("/sandbox/deep/dir/big.bin") == payload
        await engine.put_file("/tmp/note.txt", "text")
        assert await engine.get_file("/tmp/note.txt") == b"text"


async def test_file_api_needs_a_container_or_a_runtime(docker_client: DockerClient) -> None:
    async with DockerIsol8(mode="persistent") as engine:
        with pytest.raises(Isol8Error, match=r"^No active container\. Call execute\(\) first in persistent mode\.$"):
            await engine.put_file("/sandbox/a.txt", "x")
        assert docker_client.managed_containers() == []
    async with DockerIsol8() as engine:
        with pytest.raises(Isol8Error, match="No active container"):
            await engine.get_file("/sandbox/a.txt")


async def test_file_api_is_confined(docker_client: DockerClient) -> None:
    async with DockerIsol8(mode="persistent", runtime="bash") as engine:
        with pytest.raises(Isol8Error, match="File path must be a file inside /sandbox or /tmp"):
            await engine.put_file("/etc/evil", "x")
        with pytest.raises(Isol8Error, match="File path must be a file inside /sandbox or /tmp"):
            await engine.get_file("/sandbox/../etc/passwd")
        await engine.execute(
            ExecutionRequest(cmd="ln -s /etc/shadow /sandbox/link; ln -s /etc /sandbox/dir", runtime="bash")
        )
        with pytest.raises(Isol8Error, match="escapes /sandbox and /tmp through a symlink"):
            await engine.get_file("/sandbox/link")
        with pytest.raises(Isol8Error, match="escapes /sandbox and /tmp through a symlink"):
            await engine.put_file("/sandbox/dir/new", "x")
        with pytest.raises(Isol8Error, match="No such file"):
            await engine.get_file("/sandbox/missing")


async def test_background_processes_do_not_outlive_their_execution(docker_client: DockerClient) -> None:
    async with DockerIsol8(mode="persistent") as engine:
        await engine.execute(ExecutionRequest(cmd="nohup sleep 100 >/dev/null 2>&1 & setsid sleep 100 & echo started"))
        result = await engine.execute(ExecutionRequest(cmd="ps -eo user=,comm= | grep -c sleep || true"))
        assert result.stdout == "0\n"


async def test_leaving_a_stream_keeps_the_session_usable(docker_client: DockerClient) -> None:
    async with DockerIsol8(mode="persistent") as engine:
        await engine.execute(ExecutionRequest(cmd="echo 1 > /sandbox/kept"))
        stream = engine.execute_stream(ExecutionRequest(cmd="while true; do echo tick; sleep 0.1; done"))
        async for _ in stream:
            break
        await stream.aclose()
        result = await engine.execute(ExecutionRequest(cmd="cat /sandbox/kept"))
        assert result.stdout == "1\n"


@pytest.mark.parametrize(
    ("runtime", "package", "code"),
    [
        ("python", "six", "import six; print(six.__name__)"),
        (
            "node",
            "is-number",
            "import isNumber from 'is-number'; console.log(isNumber(5) ? 'is-number' : 'no')",
        ),
        (
            "bun",
            "is-number",
            "import isNumber from 'is-number'; console.log(isNumber(5) ? 'is-number' : 'no')",
        ),
        (
            "deno",
            "npm:is-number",
            "import isNumber from 'npm:is-number'; console.log(isNumber(5) ? 'is-number' : 'no')",
        ),
    ],
)
async def test_packages_install_and_import(docker_client: DockerClient, runtime: str, package: str, code: str) -> None:
    async with DockerIsol8(network="host") as engine:
        events = [
            e
            async for e in engine.execute_stream(
                ExecutionRequest(code=code, runtime=runtime, install_packages=[package], timeout_ms=120_000)
            )
        ]
    assert events[-1].type == "exit" and events[-1].data == "0", events
    assert (
        "".join(e.data for e in events if e.type == "stdout" and e.phase == "code")
        == package.removeprefix("npm:") + "\n"
    )
    assert any(e.phase == "setup" for e in events)


async def test_bad_package_name_is_refused_before_any_container(docker_client: DockerClient) -> None:
    async with DockerIsol8(network="host") as engine:
        for name in ("requests; rm -rf /", "--index-url=http://evil", "a b", "$(id)"):
            with pytest.raises(Isol8Error, match="Invalid package name"):
                await engine.execute(ExecutionRequest(code="1", install_packages=[name]))
        assert docker_client.managed_containers() == []


async def test_install_without_network_is_a_clear_error(engine: DockerIsol8) -> None:
    with pytest.raises(Isol8Error, match=r'^Installing packages needs network access: use network "filtered"'):
        await engine.execute(ExecutionRequest(code="1", install_packages=["some-package-nobody-built"]))


async def test_failed_install_reports_exit_code_and_stderr(docker_client: DockerClient) -> None:
    async with DockerIsol8(network="host") as engine:
        with pytest.raises(Isol8Error, match=r"^Package install failed \(exit code 1\): .*isol8-no-such-package"):
            await engine.execute(
                ExecutionRequest(code="1", install_packages=["isol8-no-such-package-xyz"], timeout_ms=60_000)
            )


async def test_setup_script_runs_first_as_sandbox_with_env_and_secrets(engine: DockerIsol8) -> None:
    request = ExecutionRequest(
        code="print(open('/sandbox/prepared').read())",
        setup_script='echo "$(id -un) $(pwd) $GREETING $TOKEN" > /sandbox/prepared; echo setting up $TOKEN',
        env={"GREETING": "hi"},
        secrets={"TOKEN": "s3cr3t-t0ken"},
    )
    result = await engine.execute(request)
    assert result.stdout == "sandbox /sandbox hi ***\n\n"
    events = [e async for e in engine.execute_stream(request)]
    setup = [e for e in events if e.phase == "setup"]
    assert [(e.type, e.data) for e in setup] == [("stdout", "setting up ***\n")]


async def test_failing_setup_stops_the_run(engine: DockerIsol8) -> None:
    request = ExecutionRequest(code="print('never')", setup_script="echo broken >&2; exit 3")
    with pytest.raises(Isol8Error) as info:
        await engine.execute(request)
    assert str(info.value) == "Setup script failed (exit code 3): broken"
    events = [e async for e in engine.execute_stream(request)]
    assert [(e.type, e.data, e.phase) for e in events] == [
        ("stderr", "broken\n", "setup"),
        ("error", "Setup script failed (exit code 3)", "setup"),
        ("exit", "3", "setup"),
    ]


async def test_setup_and_code_share_one_timeout(engine: DockerIsol8) -> None:
    started = time.monotonic()
    result = await engine.execute(ExecutionRequest(cmd="sleep 1; echo late", setup_script="sleep 0.8", timeout_ms=1200))
    assert result.timed_out and result.stdout == ""
    assert time.monotonic() - started < 3


async def test_custom_image_is_reused_without_installing(docker_client: DockerClient) -> None:
    tag = "isol8-test-six:latest"
    try:
        build_custom(docker_client, "python", ["six"], None, tag, force=True)
        assert find_custom(docker_client, "python", ["six"]).tag == tag
        listed = run_cli("list-custom")
        assert tag in listed.stdout and "six" in listed.stdout
        # Network "none": this only works because nothing is installed at run time.
        async with DockerIsol8() as engine:
            events = [
                e
                async for e in engine.execute_stream(
                    ExecutionRequest(code="import six; print('ok')", install_packages=["six"])
                )
            ]
        # Nothing ran in the setup phase (no install), and the code ran in the custom image.
        assert {e.phase for e in events} == {"code"}
        assert "".join(e.data for e in events if e.type == "stdout") == "ok\n"
        assert (events[-1].type, events[-1].data) == ("exit", "0")
    finally:
        docker_client.remove_image(tag)


def test_build_and_list_custom_cli(docker_client: DockerClient) -> None:
    try:
        built = run_cli("build", "--base", "python", "--install", "six", "--tag", "my-six", timeout=300)
        assert built.returncode == 0, built.stderr
        assert "[OK] Built image: my-six" in built.stdout
        again = run_cli("build", "--base", "python", "--install", "six", "--tag", "my-six")
        assert "[OK] my-six: Up to date" in again.stdout
        assert "my-six:latest" in run_cli("list-custom").stdout
        used = run_cli("run", "--net", "none", "--install", "six", "-e", "import six; print(6)")
        assert (used.stdout, used.returncode) == ("6\n", 0), used.stderr
    finally:
        docker_client.remove_image("my-six")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--base", "cobol", "--install", "x", "--tag", "t"), '[ERR] Unknown runtime: "cobol"'),
        (("--base", "python", "--tag", "t"), "[ERR] No packages or setup script specified."),
        (
            ("--base", "python", "--install", "six", "--tag", "isol8:python"),
            '[ERR] The tag "isol8:python" is reserved',
        ),
        (("--base", "python", "--install", "six", "--tag", "../etc"), '[ERR] Invalid image tag: "../etc"'),
    ],
)
def test_build_refuses_bad_input(docker_client: DockerClient, args: tuple[str, ...], message: str) -> None:
    result = run_cli("build", *args)
    assert result.returncode == 1 and result.stderr.startswith(message), result.stderr


def test_cli_persistent_shares_one_container() -> None:
    result = run_cli("run", "--persistent", "--cmd", "echo hi > /sandbox/x", "--cmd", "cat /sandbox/x")
    assert (result.stdout, result.returncode) == ("hi\n", 0), result.stderr
    separate = run_cli("run", "--cmd", "echo hi > /sandbox/x", "--cmd", "cat /sandbox/x")
    assert separate.returncode == 1 and separate.stdout == ""


def test_cli_persist_leaves_the_container_running(docker_client: DockerClient) -> None:
    result = run_cli("run", "--persist", "-e", "print('kept')")
    assert result.stdout == "kept\n"
    assert "left running (--persist)" in result.stderr and "isol8 cleanup" in result.stderr
    time.sleep(0.5)
    running = [c for c in docker_client.managed_containers() if c["State"] == "running"]
    assert len(running) == 1
    assert run_cli("cleanup").stdout == "Removed 1 container(s)\n"


def test_a_killed_engine_leaves_no_container(docker_client: DockerClient) -> None:
    script = (
        "import asyncio\nfrom engine import DockerIsol8, ExecutionRequest\n"
        "async def main():\n    async with DockerIsol8(mode='persistent') as e:\n"
        "        await e.execute(ExecutionRequest(cmd='true'))\n"
        "        print('running', flush=True)\n"
        "        await e.execute(ExecutionRequest(cmd='sleep 60'))\nasyncio.run(main())\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout and process.stdout.readline() == "running\n"
    assert len(docker_client.managed_containers()) == 1
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while docker_client.managed_containers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert docker_client.managed_containers() == []


async def test_sessions_are_isolated_from_each_other(docker_client: DockerClient) -> None:
    async with DockerIsol8(mode="persistent") as a, DockerIsol8(mode="persistent") as b:
        await a.execute(ExecutionRequest(cmd="echo mine > /sandbox/f"))
        result, _ = await asyncio.gather(
            b.execute(ExecutionRequest(cmd="cat /sandbox/f 2>&1 || echo absent")),
            a.execute(ExecutionRequest(cmd="true")),
        )
        assert result.stdout.endswith("absent\n")


async def test_a_new_engine_removes_stale_leftovers(
    docker_client: DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine import engine as engine_module
    from engine.hardening import container_config
    from engine.models import Isol8Options

    never_started = docker_client.create_container(container_config(Isol8Options(), "isol8:bash", "bash"))
    monkeypatch.setattr(engine_module, "STALE_AFTER_S", -1)
    async with DockerIsol8():
        pass
    assert never_started not in [c["Id"] for c in docker_client.managed_containers()]


async def test_cancelling_a_consumer_frees_the_container(docker_client: DockerClient) -> None:
    async with DockerIsol8(pool_size=0) as engine:
        started = asyncio.Event()

        async def consume() -> None:
            async for event in engine.execute_stream(ExecutionRequest(cmd="echo up; sleep 60")):
                if event.type == "stdout":
                    started.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await engine.stop()
        assert engine.pool_state() == []
        assert not engine._live
