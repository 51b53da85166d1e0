"""The MCP server, driven by the SDK's own client: `isol8 mcp` over stdio (a subprocess) and `/mcp` in a
real `isol8 serve` over streamable HTTP, both on the real Docker daemon.

Most tests run once per transport (`connect` is parametrized). The config of both servers lets
clients pick `filtered` (never `host`), caps timeouts and memory, and keeps the MCP output and read
caps small so the tests can pass them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import httpx2
import pytest
from helpers import ISOL8
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, ImageContent, TextContent
from test_server_support import PNG, PNG_CELL, ServerProcess, managed_ids, running_container, serve, wait_until

from engine.config import MCP_TOOLS

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_client")]

Connect = Callable[..., contextlib.AbstractAsyncContextManager[ClientSession]]

ALLOWED = r"^allowed\.invalid$"


def config_for(network: str, **mcp: Any) -> dict[str, Any]:
    return {
        "defaults": {"timeoutMs": 15000, "memoryLimit": "256m", "dockerNetwork": network},
        "network": {"whitelist": [ALLOWED]},
        "server": {"allowedNetworks": ["none", "filtered"], "maxTimeoutMs": 20000, "maxMemoryLimit": "256m"},
        "mcp": {"memoryLimit": "256m", "timeoutMs": 15000, "maxOutputSize": 4096, "maxReadBytes": 64, **mcp},
    }


@pytest.fixture(scope="module")
def network() -> Iterator[str]:
    """A Docker network of the tests' own for filtered sandboxes (the default bridge may be absent)."""
    client = docker.from_env()
    created = client.networks.create(f"isol8-mcp-{uuid.uuid4().hex[:8]}", driver="bridge")
    try:
        yield str(created.name)
    finally:
        created.remove()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, network: str) -> Path:
    """The stdio server's working directory: its ./isol8.config.json is the config it reads."""
    path = tmp_path_factory.mktemp("mcp-stdio")
    (path / "isol8.config.json").write_text(json.dumps(config_for(network)))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, network: str) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("mcp-http")
    with serve(workdir, config_for(network), "--auth-db", str(workdir / "keys.db")) as running:
        yield running


@contextlib.asynccontextmanager
async def over_stdio(workdir: Path, errlog_path: Path | None = None) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=ISOL8, args=["mcp"], cwd=workdir, env=dict(os.environ))
    with (errlog_path or workdir / "mcp.err").open("a") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session


@contextlib.asynccontextmanager
async def over_http(
    server: ServerProcess, key: str | None = None, statuses: list[int] | None = None
) -> AsyncIterator[ClientSession]:
    """An SDK client session on `/mcp` (key "" sends none); `statuses` collects every reply's HTTP status."""
    headers = {} if key == "" else {"Authorization": f"Bearer {key or server.key}"}

    async def record(response: httpx2.Response) -> None:
        if statuses is not None:
            statuses.append(response.status_code)

    client = httpx2.AsyncClient(
        headers=headers, timeout=httpx2.Timeout(30, read=300), event_hooks={"response": [record]}
    )
    async with (
        client,
        streamable_http_client(f"{server.url}/mcp", http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


@pytest.fixture(params=["stdio", "http"])
def connect(request: pytest.FixtureRequest) -> Connect:
    if request.param == "stdio":
        workdir: Path = request.getfixturevalue("workdir")
        return lambda: over_stdio(workdir)
    server: ServerProcess = request.getfixturevalue("server")
    return lambda key=None: over_http(server, key)


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    """The structured result of a call that must succeed."""
    result = await session.call_tool(tool, arguments)
    assert isinstance(result, CallToolResult)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def refused(session: ClientSession, tool: str, **arguments: Any) -> str:
    """The one-line message of a call that must fail as a tool error."""
    result = await session.call_tool(tool, arguments)
    assert isinstance(result, CallToolResult)
    assert result.is_error, result.structured_content
    [content] = result.content
    assert isinstance(content, TextContent)
    assert "\n" not in content.text.strip(), content.text
    return content.text


# --- the tools ---------------------------------------------------------------------------------------
async def test_tools_have_schemas_structured_output_and_honest_annotations(connect: Connect) -> None:
    async with connect() as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert sorted(tools) == sorted(MCP_TOOLS)
    for tool in tools.values():
        assert tool.input_schema["type"] == "object" and tool.output_schema is not None, tool.name
        assert tool.annotations is not None and tool.description, tool.name
    for name in ("list_sessions", "read_file", "list_files", "network_log"):
        assert tools[name].annotations.read_only_hint is True, name
        assert tools[name].annotations.open_world_hint is False, name
    run = tools["run_code"].annotations
    # Runs change a session's files, and this policy allows a filtered network: the outside world.
    assert (run.read_only_hint, run.destructive_hint, run.idempotent_hint, run.open_world_hint) == (
        False,
        True,
        False,
        True,
    )
    assert tools["close_session"].annotations.idempotent_hint is True
    assert {
        "code",
        "runtime",
        "session_id",
        "timeout_ms",
        "packages",
        "network",
        "allow",
        "deny",
        "stdin",
        "env",
    } <= set(tools["run_code"].input_schema["properties"])
    assert tools["run_code"].input_schema["required"] == ["code"]


async def test_run_code_streams_progress_and_returns_structured_output(connect: Connect) -> None:
    progress: list[tuple[float, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, message))

    code = "import sys, time\nprint('first', flush=True)\ntime.sleep(0.5)\nprint(sys.stdin.read(), 'second')"
    async with connect() as session:
        result = await session.call_tool(
            "run_code", {"code": code, "stdin": "in", "env": {"A": "1"}}, progress_callback=on_progress
        )
        command = await call(session, "run_command", command='echo "$A"; echo oops >&2; exit 3', env={"A": "a"})
    assert isinstance(result, CallToolResult) and not result.is_error
    out = result.structured_content
    assert out is not None
    assert (out["stdout"], out["exitCode"], out["timedOut"], out["oomKilled"]) == (
        "first\nin second\n",
        0,
        False,
        False,
    )
    assert out["truncated"] is False and out["durationMs"] > 0 and out["network"] is None
    assert any(message and "first" in message for _, message in progress), progress
    assert [value for value, _ in progress] == sorted(value for value, _ in progress)  # progress only grows
    assert (command["stdout"], command["stderr"], command["exitCode"]) == ("a\n", "oops\n", 3)


HTML_CELL = "class Table:\n    def _repr_html_(self):\n        return '<table><tr><td>1</td></tr></table>'\n"


async def test_a_stateful_session_keeps_variables_returns_images_and_html_and_resets(connect: Connect) -> None:
    async with connect() as session:
        created = await call(session, "create_session", runtime="python", stateful=True)
        sid = created["sessionId"]
        assert created["stateful"] is True
        first = await call(session, "run_code", code="x = 41", session_id=sid)
        assert (first["state"], first["results"]) == ("fresh", [])
        code = PNG_CELL + HTML_CELL + "\ndisplay(Dot())\ndisplay(Table())\nx + 1"
        result = await session.call_tool("run_code", {"code": code, "session_id": sid})
        assert isinstance(result, CallToolResult) and not result.is_error, result.content
        images = [block for block in result.content if isinstance(block, ImageContent)]
        assert [(base64.b64decode(image.data), image.mime_type) for image in images] == [(PNG, "image/png")]
        texts = [block.text for block in result.content if isinstance(block, TextContent)]
        assert texts[1:] == ["<table><tr><td>1</td></tr></table>", "42"]  # after the run's own JSON
        assert "iVBOR" not in texts[0]  # the image is not repeated as base64 text for the model
        out = result.structured_content
        assert out is not None and out["state"] == "kept"
        assert [(r["isMainResult"], sorted(r["data"])) for r in out["results"]] == [
            (False, ["image/png", "text/plain"]),
            (False, ["text/html", "text/plain"]),
            (True, ["text/plain"]),
        ]
        assert base64.b64decode(out["results"][0]["data"]["image/png"]) == PNG
        assert await call(session, "reset_session", session_id=sid) == {"sessionId": sid, "reset": True}
        after = await call(session, "run_code", code="x", session_id=sid)
        assert "NameError" in after["stderr"] and after["state"] == "fresh"
        plain = (await call(session, "create_session"))["sessionId"]
        assert (await refused(session, "reset_session", session_id=plain)).startswith("This session is not stateful")
        assert (await call(session, "run_code", code="1", session_id=plain))["results"] is None
        assert "not found" in await refused(session, "reset_session", session_id="no-such-session")
        assert "deno" in await refused(session, "create_session", runtime="deno", stateful=True)
        for closing in (sid, plain):
            await call(session, "close_session", session_id=closing)


async def test_a_session_keeps_state_and_files_across_calls(connect: Connect) -> None:
    async with connect() as session:
        created = await call(session, "create_session", runtime="python")
        sid = created["sessionId"]
        assert (created["runtime"], created["network"]) == ("python", "none") and len(sid) >= 16
        first = await call(session, "run_code", code="open('/sandbox/a.txt', 'w').write('kept')", session_id=sid)
        assert first["sessionId"] == sid and first["exitCode"] == 0
        second = await call(session, "run_code", code="print(open('/sandbox/a.txt').read())", session_id=sid)
        assert second["stdout"] == "kept\n"
        assert await call(session, "write_file", session_id=sid, path="/sandbox/dir/t.txt", content="héllo") == {
            "path": "/sandbox/dir/t.txt",
            "bytes": 6,
        }
        blob = bytes(range(255, -1, -1))  # not UTF-8 from its first byte
        await call(
            session,
            "write_file",
            session_id=sid,
            path="/sandbox/b.bin",
            content=base64.b64encode(blob).decode(),
            encoding="base64",
        )
        text = await call(session, "read_file", session_id=sid, path="/sandbox/dir/t.txt")
        assert (text["content"], text["bytes"], text["truncated"]) == ("héllo", 6, False)
        binary = await call(session, "read_file", session_id=sid, path="/sandbox/b.bin", encoding="base64")
        # Over mcp.maxReadBytes (64): the start of the file, and it says so.
        assert (base64.b64decode(binary["content"]), binary["truncated"]) == (blob[:64], True)
        assert "not UTF-8 text" in await refused(session, "read_file", session_id=sid, path="/sandbox/b.bin")
        for outside in ("/etc/passwd", "/sandbox/../etc/passwd", "sandbox/a.txt"):
            assert (await refused(session, "read_file", session_id=sid, path=outside)).startswith(
                "File path must be a file inside /sandbox or /tmp"
            )
            assert (await refused(session, "write_file", session_id=sid, path=outside, content="x")).startswith(
                "File path must be a file inside /sandbox or /tmp"
            )
        listing = await call(session, "list_files", session_id=sid)
        entries = {entry["path"]: (entry["type"], entry["size"]) for entry in listing["entries"]}
        assert entries["/sandbox/a.txt"] == ("file", 4) and entries["/sandbox/dir"][0] == "directory"
        assert entries["/sandbox/dir/t.txt"] == ("file", 6) and listing["truncated"] is False
        inner = await call(session, "list_files", session_id=sid, path="/sandbox/dir")
        assert [entry["path"] for entry in inner["entries"]] == ["/sandbox/dir/t.txt"]
        assert "list_files lists /sandbox" in await refused(session, "list_files", session_id=sid, path="/etc")
        assert "without" in await refused(session, "list_files", session_id=sid, path="/sandbox/../etc")
        listed = await call(session, "list_sessions")
        assert sid in [item["id"] for item in listed["sessions"]]
        assert await call(session, "close_session", session_id=sid) == {"sessionId": sid, "closed": True}
        assert await call(session, "close_session", session_id=sid) == {"sessionId": sid, "closed": False}
        gone = await refused(session, "run_code", code="print(1)", session_id=sid)
        assert gone.startswith(f'Session "{sid}" not found') and "create_session" in gone
        assert sid not in [item["id"] for item in (await call(session, "list_sessions"))["sessions"]]


async def test_a_filtered_sessions_blocked_request_shows_in_network_log(connect: Connect) -> None:
    code = (
        "import urllib.request\n"
        "try:\n"
        "    urllib.request.urlopen('http://blocked.invalid/secret', timeout=10)\n"
        "except Exception as exc:\n"
        "    print('refused', getattr(exc, 'code', exc))\n"
    )
    async with connect() as session:
        sid = (await call(session, "create_session", network="filtered", allow=[ALLOWED]))["sessionId"]
        assert (await call(session, "network_log", session_id=sid))["entries"] == []
        result = await call(session, "run_code", code=code, session_id=sid)
        assert result["stdout"] == "refused 403\n", result["stderr"]
        assert result["network"] == {"requests": 1, "allowed": 0, "blocked": 1, "blockedHosts": ["blocked.invalid"]}
        log = await call(session, "network_log", session_id=sid)
        [entry] = log["entries"]
        assert (entry["action"], entry["host"], entry["method"], entry["path"]) == (
            "BLOCK",
            "blocked.invalid",
            "GET",
            "/secret",
        )
        assert entry["rule"] == "not in whitelist"
        plain = (await call(session, "create_session"))["sessionId"]
        assert "only a filtered session logs requests" in await refused(session, "network_log", session_id=plain)
        for each in (sid, plain):
            await call(session, "close_session", session_id=each)


async def test_timeout_out_of_memory_and_output_over_the_cap(connect: Connect) -> None:
    async with connect() as session:
        slow = await call(session, "run_code", code="while True: pass", timeout_ms=1500)
        assert (slow["timedOut"], slow["exitCode"], slow["oomKilled"]) == (True, 137, False)
        assert "EXECUTION TIMED OUT" in slow["stderr"]
        big = await call(session, "run_code", code="x = bytearray(400 * 1024 * 1024)", memory_limit="64m")
        assert (big["oomKilled"], big["exitCode"], big["timedOut"]) == (True, 137, False)
        loud = await call(session, "run_code", code="print('x' * 100000)")
        assert loud["truncated"] is True and loud["exitCode"] == 0
        assert len(loud["stdout"]) <= 4096 + 200  # mcp.maxOutputSize, plus the truncation marker


async def test_bad_arguments_are_one_line_tool_errors_and_the_server_lives_on(connect: Connect) -> None:
    async with connect() as session:
        assert await refused(session, "run_code", code="1", runtime="cobol") == (
            "runtime: Input should be 'python', 'node', 'bun', 'deno' or 'bash'"
        )
        assert "code" in await refused(session, "run_code")
        assert "timeout_ms" in await refused(session, "run_code", code="1", timeout_ms=-5)
        assert "session_id" in await refused(session, "run_code", code="1", session_id="../etc")
        assert "is not a valid regular expression" in await refused(
            session, "run_code", code="1", network="filtered", allow=["("]
        )
        assert 'allow and deny lists need network "filtered"' in await refused(
            session, "run_code", code="1", allow=[ALLOWED]
        )
        assert "not valid base64" in await refused(
            session, "write_file", session_id="nope", path="/sandbox/x", content="%%", encoding="base64"
        )
        assert "not found" in await refused(session, "read_file", session_id="nope", path="/sandbox/x")
        assert await refused(session, "no_such_tool") == "Unknown tool: no_such_tool"
        assert (await call(session, "run_code", code="print('alive')"))["stdout"] == "alive\n"


# --- the operator's policy ------------------------------------------------------------------------------
async def test_tool_arguments_cannot_loosen_the_operator_policy(connect: Connect) -> None:
    async with connect() as session:
        for tool, extra in (("run_code", {"code": "print(1)"}), ("run_command", {"command": "true"})):
            assert await refused(session, tool, network="host", **extra) == (
                'network "host" is not allowed by this server (allowed: filtered, none)'
            )
            assert await refused(session, tool, timeout_ms=999_999, **extra) == (
                "timeoutMs 999999 is above this server's maximum (20000)"
            )
            assert await refused(session, tool, memory_limit="1g", **extra) == (
                "memoryLimit 1g is above this server's maximum (256m)"
            )
            assert await refused(session, tool, network="filtered", allow=[r"^evil\.example$"], **extra) == (
                r'networkFilter.whitelist entry "^evil\.example$" is not allowed by this server '
                r"(allowed: ^allowed\.invalid$)"
            )
        assert "is not allowed" in await refused(session, "create_session", network="host")
        assert "above this server's maximum" in await refused(session, "create_session", memory_limit="2g")
        assert "is not allowed" in await refused(session, "create_session", network="filtered", allow=[".*"])
        sid = (await call(session, "create_session"))["sessionId"]
        # A session's network and memory are its creation's: a later call cannot change them.
        for loosen in ({"network": "host"}, {"network": "filtered"}, {"allow": [".*"]}, {"memory_limit": "256m"}):
            message = await refused(session, "run_code", code="print(1)", session_id=sid, **loosen)
            assert "fixed when a session is created" in message
        assert "above this server's maximum" in await refused(
            session, "run_code", code="print(1)", session_id=sid, timeout_ms=999_999
        )
        await call(session, "close_session", session_id=sid)


# --- HTTP: keys and tenants -----------------------------------------------------------------------------
def test_http_without_a_key_is_401_and_with_a_wrong_key_403(server: ServerProcess) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    accept = {"Accept": "application/json, text/event-stream"}
    missing = httpx.post(f"{server.url}/mcp", json=body, headers=accept)
    assert (missing.status_code, missing.json()) == (401, {"error": "Missing Authorization header"})
    wrong = httpx.post(f"{server.url}/mcp", json=body, headers={**accept, "Authorization": "Bearer isol8_wrong"})
    assert (wrong.status_code, wrong.json()) == (403, {"error": "Invalid API key"})
    bare = httpx.post(f"{server.url}/mcp", json=body, headers={**accept, "Authorization": server.key})
    assert bare.status_code == 401


@pytest.mark.parametrize(("key", "status"), [("isol8_" + "0" * 64, 403), ("", 401)])
async def test_the_sdk_client_with_a_wrong_or_no_key_gets_nothing(server: ServerProcess, key: str, status: int) -> None:
    statuses: list[int] = []
    with pytest.raises(ExceptionGroup) as caught:
        async with over_http(server, key=key, statuses=statuses) as session:
            await session.list_tools()
    assert caught.group_contains(MCPError)  # the handshake fails: no tool is ever listed or called
    assert statuses and set(statuses) == {status}


def _key(server: ServerProcess, tenant: str) -> str:
    with server.client() as client:
        reply = client.post("/auth/keys", json={"name": tenant, "tenantId": tenant})
    assert reply.status_code == 201, reply.text
    return str(reply.json()["key"])


async def test_a_tenant_cannot_use_another_tenants_session(server: ServerProcess) -> None:
    alice, bob = _key(server, "alice"), _key(server, "bob")
    async with over_http(server, alice) as a, over_http(server, bob) as b:
        sid = (await call(a, "create_session"))["sessionId"]
        await call(a, "write_file", session_id=sid, path="/sandbox/secret.txt", content="alice's")
        assert "not found" in await refused(
            b, "run_code", code="print(open('/sandbox/secret.txt').read())", session_id=sid
        )
        assert "not found" in await refused(b, "read_file", session_id=sid, path="/sandbox/secret.txt")
        assert "not found" in await refused(
            b, "write_file", session_id=sid, path="/sandbox/secret.txt", content="bob's"
        )
        assert "not found" in await refused(b, "list_files", session_id=sid)
        assert "not found" in await refused(b, "network_log", session_id=sid)
        assert (await call(b, "list_sessions"))["sessions"] == []
        assert (await call(b, "close_session", session_id=sid))["closed"] is False
        # A REST call with bob's key does not reach it either.
        with server.client(bob) as client:
            assert client.get("/file", params={"sessionId": sid, "path": "/sandbox/secret.txt"}).status_code == 404
        assert (await call(a, "read_file", session_id=sid, path="/sandbox/secret.txt"))["content"] == "alice's"
        assert [s["id"] for s in (await call(a, "list_sessions"))["sessions"]] == [sid]
        await call(a, "close_session", session_id=sid)


async def test_a_tenant_cannot_reset_another_tenants_stateful_session(server: ServerProcess) -> None:
    carol, dave = _key(server, "carol"), _key(server, "dave")
    async with over_http(server, carol) as c, over_http(server, dave) as d:
        sid = (await call(c, "create_session", stateful=True))["sessionId"]
        await call(c, "run_code", code="secret = 'carol'", session_id=sid)
        assert "not found" in await refused(d, "reset_session", session_id=sid)
        assert "not found" in await refused(d, "run_code", code="secret", session_id=sid)
        with server.client(dave) as client:
            assert client.post(f"/session/{sid}/reset").status_code == 404
        kept = await call(c, "run_code", code="secret", session_id=sid)
        assert (kept["state"], [r["data"]["text/plain"] for r in kept["results"]]) == ("kept", ["'carol'"])
        await call(c, "close_session", session_id=sid)


# --- clients that go away ---------------------------------------------------------------------------------
def test_an_http_client_that_disconnects_mid_run_has_its_run_killed(server: ServerProcess) -> None:
    marker = "sleep 3611.25"
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "run_command", "arguments": {"command": f"echo started; {marker}"}},
    }
    headers = {**server.headers, "Accept": "application/json, text/event-stream"}
    with (
        httpx.Client(base_url=server.url, headers=headers, timeout=60) as client,
        client.stream("POST", "/mcp", json=body) as reply,
    ):
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        container = running_container(marker)
    # The connection is closed mid-run: the container must go although the program prints nothing.
    wait_until(lambda: container not in managed_ids(), timeout=30, what="the abandoned run's container to go")


async def test_an_sdk_client_that_gives_up_mid_run_has_its_run_killed(connect: Connect) -> None:
    marker = "sleep 3612.25"
    async with connect() as session:
        task = asyncio.create_task(session.call_tool("run_command", {"command": marker}))
        container = await asyncio.to_thread(running_container, marker, 30.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.to_thread(
            wait_until, lambda: container not in managed_ids(), 30.0, "the cancelled run's container"
        )
        assert (await call(session, "run_code", code="print('next')"))["stdout"] == "next\n"


async def test_a_stdio_client_that_goes_away_mid_run_leaves_no_container(workdir: Path, tmp_path: Path) -> None:
    marker = "sleep 3613.25"
    errlog = tmp_path / "gone.err"
    started = asyncio.Event()
    containers: list[str] = []

    async def client() -> None:
        async with over_stdio(workdir, errlog) as session:
            sid = (await call(session, "create_session"))["sessionId"]
            await call(session, "run_code", code="print(1)", session_id=sid)  # the session's container exists
            [listed] = (await call(session, "list_sessions"))["sessions"]
            containers.append(listed["containerId"])
            run = asyncio.create_task(session.call_tool("run_command", {"command": marker}))
            containers.append(await asyncio.to_thread(running_container, marker, 30.0))
            started.set()
            await run

    task = asyncio.create_task(client())
    await started.wait()
    assert set(containers) <= managed_ids()
    task.cancel()  # the client leaves: stdin closes, and the server must clean up and exit
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # The client's transport waits for the process: by now the server cleaned up and exited on its own.
    assert errlog.read_text().splitlines()[-1] == "[INFO] isol8 MCP server stopped; its containers are removed"
    assert not set(containers) & managed_ids()


# --- idle sessions and exposed tools ----------------------------------------------------------------------
async def test_idle_sessions_are_closed_and_only_configured_tools_exist(tmp_path: Path, network: str) -> None:
    config = config_for(network, tools=["run_code", "create_session", "list_sessions"])
    config["cleanup"] = {"maxContainerAgeMs": 3000}
    config["server"]["maxSessionsPerTenant"] = 1
    (tmp_path / "isol8.config.json").write_text(json.dumps(config))
    async with over_stdio(tmp_path) as session:
        names = sorted(tool.name for tool in (await session.list_tools()).tools)
        assert names == ["create_session", "list_sessions", "run_code"]
        result = await session.call_tool("write_file", {"session_id": "x", "path": "/sandbox/x", "content": ""})
        assert isinstance(result, CallToolResult) and result.is_error
        sid = (await call(session, "create_session"))["sessionId"]
        await call(session, "run_code", code="print(1)", session_id=sid)
        assert await refused(session, "create_session") == (
            "Too many sessions: this server keeps at most 100 (server.maxSessions), 1 per tenant "
            "(server.maxSessionsPerTenant); close one with close_session"
        )
        for _ in range(300):
            if not (await call(session, "list_sessions"))["sessions"]:
                break
            await asyncio.sleep(0.1)
        assert (await call(session, "list_sessions"))["sessions"] == []
        message = await refused(session, "run_code", code="print(1)", session_id=sid)
        assert message == (
            f'Session "{sid}" not found (closed, or idle for over 3 s): create one with create_session and use its id'
        )
        await call(session, "create_session")  # the idle one's slot is free again
