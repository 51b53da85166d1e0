"""The file API and output files against hostile sandboxes: paths that are not regular files, files
far larger than they look, uploads that fail or are abandoned halfway, and an agent that stops
answering or lies. Nothing may block, nothing partial may stay, the engine's memory stays bounded,
and the session stays usable."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from test_server_support import serve

from engine.docker import DockerClient
from engine.engine import DockerIsol8
from engine.errors import FileError, FileTooLarge, NotARegularFile, SandboxError
from engine.models import ExecutionRequest

pytestmark = pytest.mark.docker

# Every kind of path that is not a regular file the sandbox user can make (nodev: no devices).
NOT_REGULAR = {
    "fifo": "mkfifo /sandbox/thing",
    "socket": "python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('/sandbox/thing')\"",
    "directory": "mkdir /sandbox/thing",
    "fifo-in-tmp": "mkfifo /tmp/thing && ln -s /tmp/thing /sandbox/thing",  # through a symlink inside
}
QUICK_S = 10  # a refusal comes at once; blocking would run into this


@pytest.mark.parametrize("kind", list(NOT_REGULAR))
async def test_non_regular_files_are_refused_at_once_and_the_session_survives(
    docker_client: DockerClient, kind: str
) -> None:
    async with DockerIsol8(mode="persistent", runtime="python") as engine:
        await engine.execute(ExecutionRequest(cmd=NOT_REGULAR[kind]))
        for attempt in (
            engine.put_file("/sandbox/thing", b"data"),
            engine.get_file("/sandbox/thing"),
        ):
            with pytest.raises((NotARegularFile, FileError)):
                await asyncio.wait_for(attempt, QUICK_S)
        # the code's own files go through the same door
        run = await asyncio.wait_for(
            engine.execute(ExecutionRequest(code="print('ran')", files={"/sandbox/thing": "x"})), QUICK_S
        )
        assert run.exit_code == 1 and "Cannot write /sandbox/thing" in run.stderr, run.stderr
        with pytest.raises((NotARegularFile, FileError)):
            await asyncio.wait_for(
                engine.execute(ExecutionRequest(code="print('out')", output_paths=["/sandbox/thing"])), QUICK_S
            )
        after = await engine.execute(ExecutionRequest(code="print('alive')"))
        assert (after.stdout, after.exit_code) == ("alive\n", 0)


async def test_an_output_path_error_never_shifts_the_next_result(docker_client: DockerClient) -> None:
    """The error comes after its own run ended: the next run gets its own output and exit code."""
    async with DockerIsol8(mode="persistent", runtime="python") as engine:
        for make in NOT_REGULAR.values():
            await engine.execute(ExecutionRequest(cmd=f"rm -rf /sandbox/thing /tmp/thing; {make}"))
            with pytest.raises(FileError):
                await engine.execute(
                    ExecutionRequest(cmd="echo first; exit 3", output_paths=["/sandbox/ok", "/sandbox/thing"])
                )
            second = await engine.execute(ExecutionRequest(cmd="echo second; exit 5"))
            assert (second.stdout, second.exit_code) == ("second\n", 5)


# --- bounded reads --------------------------------------------------------------------------------------
MEMORY_PROBE = """
import asyncio, json, sys
from engine import DockerIsol8, ExecutionRequest
from engine.errors import FileTooLarge

def peak_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

async def main() -> None:
    report = {}
    async with DockerIsol8(mode="persistent", runtime="python") as engine:
        await engine.execute(ExecutionRequest(cmd=sys.argv[1]))
        before = peak_mib()
        for name, attempt in (
            ("get_file", lambda: engine.get_file("/sandbox/big")),
            ("output_paths", lambda: engine.execute(ExecutionRequest(cmd="true", output_paths=["/sandbox/big"]))),
        ):
            try:
                await attempt()
                report[name] = "read"
            except FileTooLarge as exc:
                report[name] = str(exc)
        report["grew_mib"] = peak_mib() - before
        after = await engine.execute(ExecutionRequest(cmd="echo alive"))
        report["after"] = after.stdout
    print(json.dumps(report))

asyncio.run(main())
"""
HUGE = {
    "sparse-1-tib": "truncate -s 1T /sandbox/big",
    "sparse-with-data-at-the-end": "truncate -s 1T /sandbox/big && echo tail >> /sandbox/big",
    "sparse-by-seek": "python3 -c \"f = open('/sandbox/big', 'wb'); f.seek((1 << 40) - 1); f.write(b'x')\"",
}


@pytest.mark.parametrize("make", list(HUGE))
def test_huge_files_are_refused_without_moving_the_engines_memory(docker_client: DockerClient, make: str) -> None:
    # A process of its own, so its peak memory is this test's alone.
    probe = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, HUGE[make]],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    report = json.loads(probe.stdout)
    for name in ("get_file", "output_paths"):
        assert report[name].startswith("Cannot read /sandbox/big from the sandbox: it is 1099511627"), report
        assert "over maxFileSize (67108864 bytes" in report[name] and "raise maxFileSize" in report[name], report
    assert report["grew_mib"] < 40, report
    assert report["after"] == "alive\n"


async def test_output_paths_together_are_bounded_by_max_file_size(docker_client: DockerClient) -> None:
    """Hard links cost nothing: the same 30 MiB file under five names is 150 MiB to read back."""
    async with DockerIsol8(mode="persistent", runtime="python", max_file_size=100 << 20) as engine:
        await engine.execute(
            ExecutionRequest(
                cmd="head -c 30M /dev/zero > /sandbox/f0; for i in 1 2 3 4; do ln /sandbox/f0 /sandbox/f$i; done"
            )
        )
        with pytest.raises(FileTooLarge, match=r"/sandbox/f3.*left for this execution's output paths"):
            await engine.execute(ExecutionRequest(cmd="true", output_paths=[f"/sandbox/f{i}" for i in range(5)]))
        three = await engine.execute(ExecutionRequest(cmd="true", output_paths=[f"/sandbox/f{i}" for i in range(3)]))
        assert three.files is not None and [len(three.files[f"/sandbox/f{i}"]) for i in range(3)] == [30 << 20] * 3
        assert await engine.get_file("/sandbox/f4") == bytes(30 << 20)


def test_huge_output_paths_through_the_server_keep_its_memory_flat(tmp_path: Path, docker_client: DockerClient) -> None:
    with serve(tmp_path) as server, server.client() as http:

        def peak_mib() -> float:
            status = Path(f"/proc/{server.proc.pid}/status").read_text()
            return int(status.split("VmHWM:")[1].split()[0]) / 1024

        warm = http.post("/execute", json={"request": {"cmd": "true"}})
        assert warm.status_code == 200
        before = peak_mib()
        for make in HUGE.values():
            reply = http.post("/execute", json={"request": {"cmd": make, "outputPaths": ["/sandbox/big"]}})
            assert reply.status_code == 413 and "maxFileSize" in reply.json()["error"], reply.text
        assert peak_mib() - before < 40


def lying_agent_image(client: docker.DockerClient) -> Iterator[str]:
    """An agent that ignores the limit it is given (as a compromised one would)."""
    tag = "isol8-test-lying-agent"
    patch = (
        "RUN sed -i -e 's/if size > limit:/if False:/' -e 's/if sent + len(chunk) > limit:/if False:/' "
        "/opt/isol8/agent.py && grep -c 'if False:' /opt/isol8/agent.py"
    )
    client.images.build(fileobj=io.BytesIO(f"FROM isol8:bash\nUSER root\n{patch}\n".encode()), tag=tag, rm=True)
    try:
        yield tag
    finally:
        client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def lying_agent(docker_client: DockerClient) -> Iterator[str]:
    yield from lying_agent_image(docker.from_env())


async def test_an_agent_that_sends_too_much_is_cut_off_and_replaced(lying_agent: str) -> None:
    async with DockerIsol8(mode="persistent", runtime="python", image=lying_agent, max_file_size=8 << 20) as engine:
        await engine.execute(ExecutionRequest(cmd="head -c 64M /dev/zero > /sandbox/big", runtime="python"))
        first = engine.container_id
        with pytest.raises(SandboxError, match="sent more than the 8388608 bytes asked for"):
            await engine.get_file("/sandbox/big")
        after = await engine.execute(ExecutionRequest(cmd="echo fresh; ls /sandbox", runtime="python"))
        assert after.stdout == "fresh\n" and engine.container_id != first


# --- failed, abandoned and wedged uploads -----------------------------------------------------------
LIST = "find /sandbox /tmp -mindepth 1 -type f -printf '%p %s\\n' | sort"


async def test_a_failed_upload_leaves_nothing_behind(docker_client: DockerClient) -> None:
    async with DockerIsol8(mode="persistent", runtime="python", sandbox_size="8m", tmp_size="8m") as engine:
        await engine.execute(ExecutionRequest(cmd="echo old > /sandbox/kept", runtime="python"))
        for target in ("/sandbox/new.bin", "/sandbox/kept", "/tmp/deep/new.bin"):
            with pytest.raises(FileError, match="No space left on device"):
                await engine.put_file(target, bytes(16 << 20))  # twice what fits
        listing = await engine.execute(ExecutionRequest(cmd=LIST, runtime="python"))
        assert listing.stdout == "/sandbox/kept 4\n", listing.stdout
        kept = await engine.get_file("/sandbox/kept")
        assert kept == b"old\n"  # a failed overwrite keeps the old content


async def test_an_abandoned_upload_leaves_nothing_and_the_session_goes_on(docker_client: DockerClient) -> None:
    async with DockerIsol8(mode="persistent", runtime="python") as engine:
        await engine.execute(ExecutionRequest(cmd="echo 1 > /sandbox/kept", runtime="python"))
        for size in (8 << 20, 200 << 20):
            upload = asyncio.ensure_future(engine.put_file("/sandbox/half.bin", bytes(size)))
            await asyncio.sleep(0.05)
            upload.cancel()  # mid-way, or (the small one, on a fast machine) just after it finished
            await asyncio.gather(upload, return_exceptions=True)
            listing = await engine.execute(ExecutionRequest(cmd=LIST + "; echo exit-ok", runtime="python"))
            assert listing.stdout in (
                "/sandbox/kept 2\nexit-ok\n",
                f"/sandbox/half.bin {size}\n/sandbox/kept 2\nexit-ok\n",
            )
            assert listing.exit_code == 0
            await engine.execute(ExecutionRequest(cmd="rm -f /sandbox/half.bin", runtime="python"))


async def test_a_wedged_file_operation_times_out_and_the_session_is_usable(
    docker_client: DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("engine.sandbox.FILE_DEADLINE_S", 2.0)
    async with DockerIsol8(mode="persistent", runtime="python") as engine:
        await engine.execute(ExecutionRequest(cmd="head -c 1M /dev/urandom > /sandbox/f", runtime="python"))
        for operation in (lambda: engine.get_file("/sandbox/f"), lambda: engine.put_file("/sandbox/g", bytes(8 << 20))):
            container = engine.container_id
            assert container is not None
            await asyncio.to_thread(docker_client.api.kill, container, "SIGSTOP")
            with pytest.raises(SandboxError, match=r"did not finish (reading|writing) /sandbox/[fg] within 2 s"):
                await asyncio.wait_for(operation(), QUICK_S)
            after = await engine.execute(ExecutionRequest(cmd="echo usable; ls /sandbox", runtime="python"))
            assert after.stdout == "usable\n" and engine.container_id != container
            await engine.execute(ExecutionRequest(cmd="head -c 1M /dev/urandom > /sandbox/f", runtime="python"))
