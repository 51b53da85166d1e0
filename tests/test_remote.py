"""RemoteIsol8 and `isol8 run --host` / `isol8 session` against a real `isol8 serve` and real Docker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from helpers import run_cli
from test_server_support import (
    MASTER_KEY,
    ServerProcess,
    free_port,
    in_process,
    managed_ids,
    running_container,
    serve,
    wait_until,
)

from engine import ExecutionRequest, Isol8Error, Isol8Options, StreamEvent
from engine.config import Isol8Config
from engine.errors import FileNotFound, SessionNotFound
from engine.remote import RemoteIsol8
from engine.server.app import ServerSettings, create_app

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_client")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[ServerProcess]:
    with serve(tmp_path_factory.mktemp("remote")) as running:
        yield running


async def collect(events: AsyncIterator[StreamEvent]) -> list[tuple[str, str]]:
    return [(event.type, event.data) async for event in events]


# --- RemoteIsol8 ------------------------------------------------------------------------------------------
async def test_start_checks_health(server: ServerProcess) -> None:
    await RemoteIsol8(server.url, "any key: /health needs none").start()
    with pytest.raises(Isol8Error) as status:
        await RemoteIsol8(f"{server.url}/nowhere", MASTER_KEY).start()
    assert str(status.value) == "Remote server health check failed: 404"
    with pytest.raises(Isol8Error) as refused:
        await RemoteIsol8(f"http://127.0.0.1:{free_port()}/", MASTER_KEY).start()
    assert str(refused.value).startswith("Remote server health check failed: ")


async def test_execute_and_errors(server: ServerProcess) -> None:
    async with RemoteIsol8(server.url + "/", MASTER_KEY) as remote:  # a trailing slash is fine
        result = await remote.execute(ExecutionRequest(code="import sys; print('hi'); sys.exit(4)"))
        assert (result.stdout, result.exit_code) == ("hi\n", 4)
        with pytest.raises(Isol8Error) as bad:
            await remote.execute(ExecutionRequest(code="1", setup_script="exit 3"))
        assert str(bad.value) == "Execution failed: Setup script failed (exit code 3): "
    async with RemoteIsol8(server.url, "wrong") as stranger:
        with pytest.raises(Isol8Error) as denied:
            await stranger.execute(ExecutionRequest(code="1"))
        assert str(denied.value) == "Execution failed: Invalid API key"


async def test_stream_over_websocket_in_order(server: ServerProcess) -> None:
    async with RemoteIsol8(server.url, MASTER_KEY) as remote:
        request = ExecutionRequest(cmd="echo one; sleep 0.1; echo two >&2; exit 2")
        assert await collect(remote.execute_stream(request)) == [
            ("stdout", "one\n"),
            ("stderr", "two\n"),
            ("exit", "2"),
        ]
        assert remote._ws_available is True
        timed_out = await collect(remote.execute_stream(ExecutionRequest(code="while True: pass", timeout_ms=300)))
        assert timed_out[-2:] == [("error", "EXECUTION TIMED OUT"), ("exit", "137")]


async def test_stream_errors_are_the_reference_messages(server: ServerProcess) -> None:
    async with RemoteIsol8(server.url, "wrong") as stranger:
        with pytest.raises(Isol8Error) as denied:
            await collect(stranger.execute_stream(ExecutionRequest(code="1")))
        assert str(denied.value) == "Stream failed: Invalid API key"
    refused_options = Isol8Options(network="host")
    async with RemoteIsol8(server.url, MASTER_KEY, options=refused_options) as remote:
        with pytest.raises(Isol8Error) as refused:
            await collect(remote.execute_stream(ExecutionRequest(code="1")))
        assert str(refused.value) == 'Stream failed: network "host" is not allowed by this server (allowed: none)'
        with pytest.raises(Isol8Error) as refused_again:
            await remote.execute(ExecutionRequest(code="1"))
        assert str(refused_again.value).startswith('Execution failed: network "host" is not allowed')


async def test_leaving_the_stream_early_kills_the_run(server: ServerProcess) -> None:
    marker = "sleep 3604.25"
    request = ExecutionRequest(cmd=f"echo go; {marker}")
    async with (
        RemoteIsol8(server.url, MASTER_KEY) as remote,
        contextlib.aclosing(remote.execute_stream(request)) as events,
    ):
        async for event in events:
            assert (event.type, event.data) == ("stdout", "go\n")
            container = await asyncio.to_thread(running_container, marker)
            break
    await asyncio.to_thread(wait_until, lambda: container not in managed_ids(), 15.0, "the container to go")


async def test_files_need_a_session() -> None:
    remote = RemoteIsol8("http://127.0.0.1:9", MASTER_KEY)  # never contacted
    for call in (remote.put_file("/sandbox/a", "x"), remote.get_file("/sandbox/a")):
        with pytest.raises(Isol8Error) as refused:
            await call
        assert str(refused.value) == "File operations require a sessionId (persistent mode)"


async def test_session_state_files_and_lifecycle(server: ServerProcess) -> None:
    async with RemoteIsol8(server.url, MASTER_KEY) as admin:
        async with RemoteIsol8(server.url, MASTER_KEY, session_id="remote-s") as remote:
            with pytest.raises(SessionNotFound) as early:  # file routes need a session an execute created
                await remote.put_file("/sandbox/data/in.bin", b"")
            assert str(early.value) == "File upload failed: Session not found"
            await remote.execute(ExecutionRequest(code="pass"))
            await remote.put_file("/sandbox/data/in.bin", b"\x00\x01\xfe\xff")
            first = await remote.execute(
                ExecutionRequest(code="x = open('/sandbox/data/in.bin','rb').read(); print(list(x))")
            )
            assert first.stdout == "[0, 1, 254, 255]\n"
            with pytest.raises(FileNotFound):  # the class the server's engine raised, through the wire
                await remote.get_file("/sandbox/data/absent.bin")
            events = await collect(
                remote.execute_stream(ExecutionRequest(cmd="echo streamed > /sandbox/out.txt; cat /sandbox/out.txt"))
            )
            assert events == [("stdout", "streamed\n"), ("exit", "0")]
            assert await remote.get_file("/sandbox/out.txt") == b"streamed\n"
            listed = {s.id: s for s in await admin.list_sessions()}
            assert listed["remote-s"].runtime == "python"
            assert listed["remote-s"].container_id == first.container_id
            with pytest.raises(Isol8Error) as missing:
                await remote.get_file("/sandbox/nope")
            assert (
                str(missing.value)
                == "File download failed: Cannot read /sandbox/nope from the sandbox: No such file or directory"
            )
        # stop() deleted the session and its container
        assert "remote-s" not in {s.id for s in await admin.list_sessions()}
        assert first.container_id not in managed_ids()
        await admin.delete_session("never-existed")  # idempotent


async def test_falls_back_to_sse_when_websockets_are_unavailable(docker_client: Any) -> None:
    app = create_app(ServerSettings(Isol8Config(), MASTER_KEY))
    with in_process(app, ws="none") as url:
        async with RemoteIsol8(url, MASTER_KEY) as remote:
            request = ExecutionRequest(cmd="echo a; sleep 0.1; echo b")
            assert await collect(remote.execute_stream(request)) == [
                ("stdout", "a\n"),
                ("stdout", "b\n"),
                ("exit", "0"),
            ]
            assert remote._ws_available is False
            assert await collect(remote.execute_stream(request)) == [
                ("stdout", "a\n"),
                ("stdout", "b\n"),
                ("exit", "0"),
            ]
        async with RemoteIsol8(url, "wrong") as stranger:
            with pytest.raises(Isol8Error) as denied:
                await collect(stranger.execute_stream(ExecutionRequest(code="1")))
            assert str(denied.value) == "Stream failed: Invalid API key"


async def test_a_stream_reply_that_is_not_a_stream() -> None:
    plain = FastAPI()

    @plain.post("/execute/stream")
    async def not_a_stream() -> JSONResponse:
        return JSONResponse({"stdout": "buffered"})

    with in_process(plain, ws="none") as url:
        remote = RemoteIsol8(url, MASTER_KEY)
        with pytest.raises(Isol8Error) as nobody:
            await collect(remote.execute_stream(ExecutionRequest(code="1")))
        assert str(nobody.value) == "No response body for streaming"
        await remote.stop()


async def test_tenants_do_not_see_each_others_sessions(tmp_path: Path) -> None:
    with serve(tmp_path, {}, "--auth-db", str(tmp_path / "keys.db")) as srv, srv.client() as master:
        alice = master.post("/auth/keys", json={"name": "alice", "tenantId": "a"}).json()["key"]
        bob = master.post("/auth/keys", json={"name": "bob", "tenantId": "b"}).json()["key"]
        async with RemoteIsol8(srv.url, alice, session_id="shared-name") as a_side:
            await a_side.execute(ExecutionRequest(cmd="echo alice > /sandbox/secret"))
            async with RemoteIsol8(srv.url, bob, session_id="shared-name") as b_side:
                assert [s.id for s in await b_side.list_sessions()] == []
                with pytest.raises(SessionNotFound) as hidden:
                    await b_side.get_file("/sandbox/secret")
                assert str(hidden.value) == "File download failed: Session not found"
                result = await b_side.execute(ExecutionRequest(cmd="cat /sandbox/secret 2>&1 || true"))
                assert "alice" not in result.stdout  # same id, another tenant: another container
            assert await a_side.get_file("/sandbox/secret") == b"alice\n"


# --- the CLI ------------------------------------------------------------------------------------------
def _remote(server: ServerProcess, *args: str, input: str | None = None) -> Any:
    return run_cli("run", "--host", server.url, "--key", server.key, *args, input=input)


@pytest.mark.parametrize(
    "args",
    [
        ("-e", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"),
        ("--cmd", "echo a; echo b >&2; exit 0"),
        ("-r", "node", "-e", "console.log(6 * 7); process.exit(9)"),
        ("--no-stream", "-e", "print('buffered')"),
        ("--timeout", "500", "-e", "while True: pass"),
    ],
)
def test_run_remote_matches_a_local_run(server: ServerProcess, args: tuple[str, ...]) -> None:
    local = run_cli("run", *args)
    remote = _remote(server, *args)
    assert (remote.stdout, remote.stderr, remote.returncode) == (local.stdout, local.stderr, local.returncode)


def test_run_remote_reads_stdin_and_files(server: ServerProcess, tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("echo from-file $1\n")
    assert _remote(server, str(script)).stdout == "from-file\n"
    assert _remote(server, "-r", "python", input="print(2 + 2)").stdout == "4\n"


def test_run_remote_errors(server: ServerProcess) -> None:
    refused = _remote(server, "--net", "host", "-e", "print(1)")
    assert refused.returncode == 1
    assert refused.stderr == '[ERR] Stream failed: network "host" is not allowed by this server (allowed: none)\n'
    port = _remote(server, "--allow-port", "22", "-e", "print(1)")  # sent, and held to the server's policy
    assert port.stderr.startswith("[ERR] Stream failed: networkFilter.ports entry 22 is not allowed by this server")
    no_stream = _remote(server, "--no-stream", "--memory", "9g", "-e", "print(1)")
    assert no_stream.stderr == "[ERR] Execution failed: memoryLimit 9g is above this server's maximum (2g)\n"
    wrong = run_cli("run", "--host", server.url, "--key", "nope", "-e", "1")
    assert (wrong.returncode, wrong.stderr) == (1, "[ERR] Stream failed: Invalid API key\n")
    lonely = run_cli("run", "--session-id", "x", "-e", "1")
    assert (lonely.returncode, lonely.stderr) == (
        1,
        "[ERR] --session-id and --key need --host URL (the isol8 server to run on).\n",
    )


KEYLESS = "[ERR] API key required. Use --key, set ISOL8_API_KEY, or run `isol8 login --host URL --key MASTER`.\n"


def test_run_remote_without_a_key(server: ServerProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ISOL8_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no `isol8 login` credentials either
    result = run_cli("run", "--host", server.url, "-e", "1")
    assert (result.returncode, result.stderr) == (1, KEYLESS)
    monkeypatch.setenv("ISOL8_API_KEY", server.key)
    assert run_cli("run", "--host", server.url, "-e", "print(5)").stdout == "5\n"


def test_session_id_keeps_state_between_commands_and_session_commands(server: ServerProcess) -> None:
    sid = f"cli-{time.time_ns()}"
    first = _remote(server, "--session-id", sid, "-e", "open('/sandbox/n', 'w').write('41')")
    assert first.returncode == 0, first.stderr
    second = _remote(server, "--session-id", sid, "-e", "print(int(open('/sandbox/n').read()) + 1)")
    assert second.stdout == "42\n"

    listed = run_cli("session", "list", "--host", server.url, "--key", server.key)
    assert listed.returncode == 0
    assert "active session(s):" in listed.stdout
    line = next(line for line in listed.stdout.splitlines() if sid in line)
    assert line.startswith(f"  {sid}  [idle]  python  last accessed: ")

    deleted = run_cli("session", "delete", sid, "--host", server.url, "--key", server.key)
    assert (deleted.returncode, deleted.stdout) == (0, f'[OK] Session "{sid}" destroyed.\n')
    after = run_cli("session", "list", "--host", server.url, "--key", server.key, "--json")
    assert sid not in after.stdout


def test_persistent_without_an_id_is_a_session_for_one_command(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("open('/sandbox/shared', 'w').write('from a')\n")
    (tmp_path / "b.py").write_text("print(open('/sandbox/shared').read())\n")
    result = _remote(server, "--persistent", str(tmp_path / "a.py"), str(tmp_path / "b.py"))
    assert (result.stdout, result.returncode) == ("from a\n", 0), result.stderr
    listed = run_cli("session", "list", "--host", server.url, "--key", server.key, "--json")
    assert '"id": "cli-' not in listed.stdout  # deleted when the command ended


def test_session_commands_errors(server: ServerProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ISOL8_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no `isol8 login` credentials either
    keyless = run_cli("session", "list", "--host", server.url)
    assert (keyless.returncode, keyless.stderr) == (1, KEYLESS)
    wrong = run_cli("session", "list", "--host", server.url, "--key", "nope")
    assert (wrong.returncode, wrong.stderr) == (1, "[ERR] Failed to list sessions: Invalid API key\n")
    down = run_cli("session", "delete", "x", "--host", f"http://127.0.0.1:{free_port()}", "--key", "k")
    assert down.returncode == 1
    assert down.stderr.startswith("[ERR] Remote server health check failed: ")
