"""`isol8 serve` over the wire: raw HTTP (httpx), the WebSocket, the real Docker daemon.

One server per module (a real `isol8 serve` subprocess on a free loopback port); tests that need
other settings start their own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server_support import (
    MASTER_KEY,
    ServerProcess,
    managed_ids,
    running_container,
    serve,
    sse_events,
    wait_until,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from engine import __version__

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_client")]

PROTECTED = [
    ("POST", "/execute", {"request": {"code": "print(1)"}}),
    ("POST", "/execute/stream", {"request": {"code": "print(1)"}}),
    ("POST", "/file", {"sessionId": "s", "path": "/sandbox/a", "content": ""}),
    ("GET", "/file?sessionId=s&path=/sandbox/a", None),
    ("GET", "/sessions", None),
    ("DELETE", "/session/s", None),
    ("POST", "/session/s/reset", None),
    ("POST", "/cleanup", None),
    ("POST", "/auth/keys", {"name": "k"}),
    ("GET", "/auth/keys", None),
    ("DELETE", "/auth/keys/x", None),
    ("POST", "/auth/login", None),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[ServerProcess]:
    with serve(tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def execute(http: httpx.Client, request: dict[str, Any], **body: Any) -> httpx.Response:
    return http.post("/execute", json={"request": request, **body})


# --- health, OpenAPI, auth ----------------------------------------------------------------------------
def test_health_needs_no_auth_and_shows_the_pool_only_to_a_key(server: ServerProcess) -> None:
    for headers in ({}, {"Authorization": "Bearer not-the-key"}):  # the reference's exact reply
        reply = httpx.get(f"{server.url}/health", headers=headers)
        assert (reply.status_code, reply.json()) == (200, {"status": "ok", "version": __version__})
    body = httpx.get(f"{server.url}/health", headers=server.headers).json()
    assert (body["status"], body["version"]) == ("ok", __version__)
    assert isinstance(body["pool"], list)
    assert isinstance(body["sessions"], int)


def test_openapi_document_lists_the_routes(server: ServerProcess) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    paths = set(document["paths"])
    assert {
        "/health",
        "/execute",
        "/execute/stream",
        "/file",
        "/sessions",
        "/session/{session_id}",
        "/session/{session_id}/reset",
        "/cleanup",
        "/auth/keys",
        "/auth/keys/{key_id}",
        "/auth/login",
    } <= paths
    assert "ExecutionRequest" in document["components"]["schemas"]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_missing_header_is_401_and_wrong_key_403(server: ServerProcess, method: str, path: str, body: Any) -> None:
    with httpx.Client(base_url=server.url) as client:
        missing = client.request(method, path, json=body)
        assert (missing.status_code, missing.json()) == (401, {"error": "Missing Authorization header"})
        wrong = client.request(method, path, json=body, headers={"Authorization": "Bearer not-the-key"})
        assert (wrong.status_code, wrong.json()) == (403, {"error": "Invalid API key"})


def test_bare_token_without_bearer_is_refused(server: ServerProcess) -> None:
    reply = httpx.get(f"{server.url}/sessions", headers={"Authorization": MASTER_KEY})
    assert reply.status_code == 401
    assert reply.json() == {"error": 'Authorization header must be "Bearer <key>"'}
    scheme_case = httpx.get(f"{server.url}/sessions", headers={"Authorization": f"bearer {MASTER_KEY}"})
    assert scheme_case.status_code == 200


async def test_websocket_auth_is_refused_before_the_upgrade(server: ServerProcess) -> None:
    for headers, status, error in (
        ({}, 401, "Missing Authorization header"),
        ({"Authorization": "Bearer nope"}, 403, "Invalid API key"),
    ):
        with pytest.raises(InvalidStatus) as refused:
            await connect(server.ws_url, additional_headers=headers)
        assert refused.value.response.status_code == status
        assert json.loads(refused.value.response.body or b"") == {"error": error}


def test_unknown_route_is_404_json(http: httpx.Client) -> None:
    reply = http.get("/nope")
    assert (reply.status_code, reply.json()) == (404, {"error": "Not Found"})


# --- execute ------------------------------------------------------------------------------------------
def test_execute_returns_the_result_in_camel_case(http: httpx.Client) -> None:
    reply = execute(http, {"code": "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)"})
    assert reply.status_code == 200
    body = reply.json()
    assert (body["stdout"], body["stderr"], body["exitCode"]) == ("out\n", "err\n", 3)
    assert body["runtime"] == "python"
    assert {"durationMs", "executionId", "timestamp", "containerId", "timedOut", "truncated"} <= set(body)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("not json", "Invalid JSON body"),
        ("{}", "request: Field required"),
        (
            '{"request": {"code": "1", "runtime": "cobol"}}',
            'Unknown runtime: "cobol". Available: python, node, bun, deno, bash',
        ),
        (
            '{"request": {"code": "1", "cmd": "ls"}}',
            "ExecutionRequest.code, ExecutionRequest.codeUrl, and ExecutionRequest.cmd are mutually exclusive — "
            "provide exactly one.",
        ),
        (
            '{"request": {"code": "1"}, "sessionId": "a/b"}',
            "sessionId: String should match pattern '^[A-Za-z0-9_.:@+=~-]{1,128}$'",
        ),
        (
            '{"request": {"code": "1"}, "options": {"memoryLimit": "lots"}}',
            'Invalid memory limit format: "lots". Use e.g. "512m", "1g".',
        ),
    ],
)
def test_bad_bodies_are_400_with_one_line(http: httpx.Client, raw: str, error: str) -> None:
    reply = http.post("/execute", content=raw, headers={"Content-Type": "application/json"})
    assert (reply.status_code, reply.json()) == (400, {"error": error})


def test_engine_errors_are_400(http: httpx.Client) -> None:
    reply = execute(http, {"code": "1", "setupScript": "echo broken >&2; exit 4"})
    assert reply.status_code == 400
    assert reply.json() == {"error": "Setup script failed (exit code 4): broken"}


def test_32_concurrent_clients_each_get_their_own_result(server: ServerProcess) -> None:
    programs = {
        "python": "import os; print('py', {n} * 3, os.environ['TAG'])",
        "node": "console.log('js', {n} * 3, process.env.TAG)",
        "bash": "echo sh $(({n} * 3)) $TAG",
    }

    async def one(client: httpx.AsyncClient, n: int) -> tuple[int, dict[str, Any]]:
        runtime = list(programs)[n % 3]
        request = {"code": programs[runtime].format(n=n), "runtime": runtime, "env": {"TAG": f"t{n}"}}
        reply = await client.post("/execute", json={"request": request})
        return n, reply.json() | {"status": reply.status_code}

    async def all_of_them() -> list[tuple[int, dict[str, Any]]]:
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=300) as client:
            return await asyncio.gather(*(one(client, n) for n in range(32)))

    results = asyncio.run(all_of_them())
    assert len(results) == 32
    prefixes = {"python": "py", "node": "js", "bash": "sh"}
    for n, body in results:
        assert body["status"] == 200, body
        assert body["stdout"] == f"{prefixes[list(programs)[n % 3]]} {n * 3} t{n}\n", (n, body)
        assert body["exitCode"] == 0
    assert len({body["executionId"] for _, body in results}) == 32


# --- streaming ----------------------------------------------------------------------------------------
def test_sse_streams_events_in_order_and_ends_with_exit(http: httpx.Client) -> None:
    request = {"cmd": "for i in 1 2 3; do echo $i; sleep 0.1; done; echo oops >&2; exit 5"}
    with http.stream("POST", "/execute/stream", json={"request": request}) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        assert reply.headers["cache-control"] == "no-cache"
        raw = reply.read().decode()
    events = sse_events(raw)
    assert [(e["type"], e["data"]) for e in events] == [
        ("stdout", "1\n"),
        ("stdout", "2\n"),
        ("stdout", "3\n"),
        ("stderr", "oops\n"),
        ("exit", "5"),
    ]


def test_sse_refusals_come_as_http_errors_before_the_stream(http: httpx.Client) -> None:
    reply = http.post("/execute/stream", json={"request": {"code": "1"}, "options": {"network": "host"}})
    assert reply.status_code == 403
    assert reply.json() == {"error": 'network "host" is not allowed by this server (allowed: none)'}


def test_sse_timeout_sends_error_then_exit_137(http: httpx.Client) -> None:
    reply = http.post("/execute/stream", json={"request": {"code": "import time; time.sleep(30)", "timeoutMs": 500}})
    events = sse_events(reply.text)
    assert [(e["type"], e["data"]) for e in events[-2:]] == [("error", "EXECUTION TIMED OUT"), ("exit", "137")]


async def test_websocket_streams_in_order_ends_with_exit_and_closes_1000(server: ServerProcess) -> None:
    async with connect(server.ws_url, additional_headers=server.headers) as ws:
        request = {"cmd": "for i in a b c; do echo $i; sleep 0.1; done"}
        await ws.send(json.dumps({"type": "execute", "request": request}))
        events = [json.loads(message) async for message in ws]
        assert (ws.close_code, ws.close_reason) == (1000, "Execution complete")
    assert [(e["type"], e["data"]) for e in events] == [
        ("stdout", "a\n"),
        ("stdout", "b\n"),
        ("stdout", "c\n"),
        ("exit", "0"),
    ]


async def test_websocket_invalid_json_closes_1003(server: ServerProcess) -> None:
    async with connect(server.ws_url, additional_headers=server.headers) as ws:
        await ws.send("{not json")
        assert json.loads(await ws.recv()) == {"type": "error", "data": "Invalid JSON message"}
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert (ws.close_code, ws.close_reason) == (1003, "Invalid JSON")


async def test_websocket_unknown_type_keeps_the_socket_open(server: ServerProcess) -> None:
    async with connect(server.ws_url, additional_headers=server.headers) as ws:
        await ws.send(json.dumps({"type": "launch"}))
        assert json.loads(await ws.recv()) == {"type": "error", "data": "Unknown message type: launch"}
        await ws.send(json.dumps({"type": "stdin", "data": "ignored"}))  # reserved: no reply
        await ws.send(json.dumps({"type": "execute", "request": {"cmd": "echo 7"}}))  # one write
        events = [json.loads(message) async for message in ws]
    assert [(e["type"], e["data"]) for e in events] == [("stdout", "7\n"), ("exit", "0")]


async def test_websocket_refusal_is_an_error_event_then_close(server: ServerProcess) -> None:
    async with connect(server.ws_url, additional_headers=server.headers) as ws:
        request = {"code": "1"}
        await ws.send(
            json.dumps({"type": "execute", "request": request, "options": {"security": {"seccomp": "unconfined"}}})
        )
        events = [json.loads(message) async for message in ws]
        assert ws.close_code == 1000
    assert events == [
        {"type": "error", "data": 'security.seccomp "unconfined" is not allowed by this server (allowed: strict)'}
    ]


# --- disconnects --------------------------------------------------------------------------------------
def test_sse_disconnect_mid_stream_kills_the_run(server: ServerProcess) -> None:
    marker = "sleep 3601.25"
    with (
        httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client,
        client.stream("POST", "/execute/stream", json={"request": {"cmd": f"echo started; {marker}"}}) as reply,
    ):
        lines = reply.iter_lines()  # kept referenced: a dropped iterator would close the connection
        first = next(lines)
        assert json.loads(first.removeprefix("data: "))["data"] == "started\n"
        container = running_container(marker)
    # The connection is closed; the program printed nothing more, yet its container must go.
    wait_until(lambda: container not in managed_ids(), what="the run's container to be removed")
    pool = httpx.get(f"{server.url}/health", headers=server.headers).json()["pool"]
    assert pool and all(state["busy"] == 0 for state in pool), pool


async def test_websocket_disconnect_mid_stream_kills_the_run(server: ServerProcess) -> None:
    marker = "sleep 3602.25"
    async with connect(server.ws_url, additional_headers=server.headers) as ws:
        await ws.send(json.dumps({"type": "execute", "request": {"cmd": f"echo started; {marker}"}}))
        assert json.loads(await ws.recv())["data"] == "started\n"
        container = await asyncio.to_thread(running_container, marker)
    await asyncio.to_thread(wait_until, lambda: container not in managed_ids(), 15.0, "the container to go")


def test_execute_client_gone_kills_the_run(server: ServerProcess) -> None:
    marker = "sleep 3603.25"

    def call() -> None:
        with server.client() as client, pytest.raises(httpx.HTTPError):
            client.post("/execute", json={"request": {"cmd": marker}}, timeout=3)

    caller = threading.Thread(target=call)
    caller.start()
    container = running_container(marker)
    caller.join()  # the client gave up after 3 s and closed its connection
    wait_until(lambda: container not in managed_ids(), what="the abandoned run's container to go")


# --- sessions and files -------------------------------------------------------------------------------
def test_session_state_and_files_survive_across_requests(http: httpx.Client) -> None:
    sid = "state-1"
    first = execute(
        http, {"code": "open('/sandbox/counter', 'w').write('1')\nimport os; os.makedirs('/tmp/d')"}, sessionId=sid
    )
    assert first.status_code == 200, first.text
    second = execute(
        http,
        {"code": "import os\nn = int(open('/sandbox/counter').read()) + 1\nprint(n, os.path.isdir('/tmp/d'))"},
        sessionId=sid,
    )
    assert second.json()["stdout"] == "2 True\n"
    assert second.json()["containerId"] == first.json()["containerId"]

    blob = bytes(range(256)) * 4
    upload = http.post(
        "/file", json={"sessionId": sid, "path": "/sandbox/in/blob.bin", "content": base64.b64encode(blob).decode()}
    )
    assert (upload.status_code, upload.json()) == (200, {"ok": True})
    check = execute(http, {"code": "print(len(open('/sandbox/in/blob.bin', 'rb').read()))"}, sessionId=sid)
    assert check.json()["stdout"] == "1024\n"
    execute(http, {"cmd": "printf 'made\\n' > /sandbox/out.txt"}, sessionId=sid)
    download = http.get("/file", params={"sessionId": sid, "path": "/sandbox/out.txt"})
    assert download.json() == {"content": base64.b64encode(b"made\n").decode()}
    again = http.get("/file", params={"sessionId": sid, "path": "/sandbox/in/blob.bin"})
    assert base64.b64decode(again.json()["content"]) == blob

    listed = {s["id"]: s for s in http.get("/sessions").json()["sessions"]}
    assert listed[sid]["runtime"] == "python"
    assert listed[sid]["isActive"] is False
    assert listed[sid]["lastAccessedAt"].endswith("Z")
    container = listed[sid]["containerId"]
    assert container in managed_ids()

    assert http.delete(f"/session/{sid}").json() == {"ok": True}
    assert http.delete(f"/session/{sid}").json() == {"ok": True}  # idempotent
    assert container not in managed_ids()
    gone = http.get("/file", params={"sessionId": sid, "path": "/sandbox/out.txt"})
    assert (gone.status_code, gone.json()) == (404, {"error": "Session not found"})


def test_streams_run_in_the_session_too(http: httpx.Client, server: ServerProcess) -> None:
    sid = "stream-session"
    sse = http.post("/execute/stream", json={"request": {"cmd": "echo via-sse > /sandbox/s.txt"}, "sessionId": sid})
    assert sse_events(sse.text)[-1]["type"] == "exit"

    async def over_ws() -> list[dict[str, Any]]:
        async with connect(server.ws_url, additional_headers=server.headers) as ws:
            # The reference client left sessionId out over WebSocket; it is honoured here.
            message = {
                "type": "execute",
                "request": {"cmd": "cat /sandbox/s.txt; echo via-ws > /sandbox/w.txt"},
                "sessionId": sid,
            }
            await ws.send(json.dumps(message))
            return [json.loads(m) async for m in ws]

    events = asyncio.run(over_ws())
    assert [(e["type"], e["data"]) for e in events] == [("stdout", "via-sse\n"), ("exit", "0")]
    content = http.get("/file", params={"sessionId": sid, "path": "/sandbox/w.txt"}).json()["content"]
    assert base64.b64decode(content) == b"via-ws\n"
    http.delete(f"/session/{sid}")


@pytest.mark.parametrize(
    ("params", "status", "error"),
    [
        ({"sessionId": "nobody", "path": "/sandbox/a"}, 404, "Session not found"),
        ({"path": "/sandbox/a"}, 400, "Missing sessionId or path"),
        ({"sessionId": "nobody"}, 400, "Missing sessionId or path"),
    ],
)
def test_file_download_errors(http: httpx.Client, params: dict[str, str], status: int, error: str) -> None:
    reply = http.get("/file", params=params)
    assert (reply.status_code, reply.json()) == (status, {"error": error})


def test_file_errors_in_a_session(http: httpx.Client) -> None:
    upload = http.post("/file", json={"sessionId": "nobody", "path": "/sandbox/a", "content": "aGk="})
    assert (upload.status_code, upload.json()) == (404, {"error": "Session not found"})
    sid = "file-errors"
    execute(http, {"code": "1"}, sessionId=sid)
    missing = http.get("/file", params={"sessionId": sid, "path": "/sandbox/none"})
    assert missing.status_code == 404
    assert missing.json() == {"error": "Cannot read /sandbox/none from the sandbox: No such file or directory"}
    outside = http.post("/file", json={"sessionId": sid, "path": "/etc/passwd", "content": "aGk="})
    assert outside.status_code == 400
    assert outside.json() == {"error": 'File path must be a file inside /sandbox or /tmp, without "..": "/etc/passwd"'}
    bad = http.post("/file", json={"sessionId": sid, "path": "/sandbox/a", "content": "!!"})
    assert bad.status_code == 400
    assert http.delete(f"/session/{sid}").status_code == 200


def test_a_session_keeps_its_runtime(http: httpx.Client) -> None:
    sid = "one-runtime"
    assert execute(http, {"code": "print(1)"}, sessionId=sid).status_code == 200
    switched = execute(http, {"code": "console.log(1)", "runtime": "node"}, sessionId=sid)
    assert switched.status_code == 400
    assert switched.json()["error"].startswith('Cannot switch runtime from "python" to "node".')
    http.delete(f"/session/{sid}")


# --- policy -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "request_extra", "error"),
    [
        ({"network": "host"}, {}, 'network "host" is not allowed by this server (allowed: none)'),
        ({"network": "filtered"}, {}, 'network "filtered" is not allowed by this server (allowed: none)'),
        (
            {"security": {"seccomp": "unconfined"}},
            {},
            'security.seccomp "unconfined" is not allowed by this server (allowed: strict)',
        ),
        (
            {"security": {"customProfilePath": "/tmp/mine.json"}},
            {},
            "security.customProfilePath cannot be set by clients (the operator's config sets it)",
        ),
        (
            {"security": {"runtime": "runc"}},
            {},
            'security.runtime "runc" is not allowed by this server (allowed: none)',
        ),
        ({"image": "alpine:latest"}, {}, 'image "alpine:latest" is not allowed by this server (allowed: none)'),
        ({"memoryLimit": "3g"}, {}, "memoryLimit 3g is above this server's maximum (2g)"),
        ({}, {"memoryLimit": "3g"}, "memoryLimit 3g is above this server's maximum (2g)"),
        ({"timeoutMs": 300001}, {}, "timeoutMs 300001 is above this server's maximum (300000)"),
        ({"cpuLimit": 4}, {}, "cpuLimit 4.0 is above this server's maximum (2.0)"),
        ({"pidsLimit": 5000}, {}, "pidsLimit 5000 is above this server's maximum (256)"),
        ({"readonlyRootFs": False}, {}, "readonlyRootFs false is not allowed: the root filesystem is always read-only"),
        ({"persist": True}, {}, "persist is not allowed on a server: it would leave containers running"),
    ],
)
def test_policy_refuses_what_the_operator_did_not_allow(
    http: httpx.Client, options: dict[str, Any], request_extra: dict[str, Any], error: str
) -> None:
    reply = execute(http, {"code": "print(1)", **request_extra}, options=options)
    assert (reply.status_code, reply.json()) == (403, {"error": error})


def test_allowed_options_and_ignored_reference_options_run(http: httpx.Client) -> None:
    options = {
        "network": "none",
        "memoryLimit": "256m",
        "timeoutMs": 10000,
        "security": {"seccomp": "strict"},
        "readonlyRootFs": True,
        "poolStrategy": "fast",
        "poolSize": {"clean": 1, "dirty": 1},
        "mode": "ephemeral",
        "secrets": {"TOKEN": "s3cr3t-value"},
    }
    reply = execute(http, {"code": "import os; print(os.environ['TOKEN'])"}, options=options)
    assert reply.status_code == 200, reply.text
    assert reply.json()["stdout"] == "***\n"  # an options secret is masked like a request secret


def test_host_network_only_where_the_config_allows_it(tmp_path: Path, server: ServerProcess) -> None:
    probe = {"code": "import socket; print(sorted(n for _, n in socket.if_nameindex()))"}
    with server.client() as client:
        assert execute(client, probe).json()["stdout"] == "['lo']\n"
    config = {"server": {"allowedNetworks": ["none", "host"]}}
    with serve(tmp_path, config) as open_server, open_server.client() as client:
        reply = execute(client, probe, options={"network": "host"})
        assert reply.status_code == 200, reply.text
        assert "docker0" in reply.json()["stdout"] or "eth0" in reply.json()["stdout"]
        assert execute(client, probe).json()["stdout"] == "['lo']\n"  # the default stays closed
        refused = execute(client, probe, options={"network": "filtered"})
        assert refused.json() == {"error": 'network "filtered" is not allowed by this server (allowed: host, none)'}


# --- cleanup, prune, shutdown -------------------------------------------------------------------------
def test_cleanup_needs_the_master_key_and_keeps_images(tmp_path: Path) -> None:
    with serve(tmp_path / "srv", {}, "--auth-db", str(tmp_path / "keys.db")) as srv, srv.client() as master:
        user_key = master.post("/auth/keys", json={"name": "user"}).json()["key"]
        with srv.client(key=user_key) as user:
            assert user.post("/cleanup").json() == {"error": "Master key required for this operation"}
        execute(master, {"code": "1"}, sessionId="c1")
        container = master.get("/sessions").json()["sessions"][0]["containerId"]
        images = master.post("/cleanup", json={"images": True})
        assert images.status_code == 400
        reply = master.post("/cleanup")
        assert reply.status_code == 200
        body = reply.json()
        assert body["ok"] is True
        assert body["sessions"] == {"removed": 1, "failed": 0, "errors": []}
        assert container not in managed_ids()
        assert master.get("/sessions").json() == {"sessions": []}
        assert execute(master, {"code": "print(2)"}).json()["stdout"] == "2\n"  # still serving


def test_idle_sessions_are_pruned_but_never_while_running(tmp_path: Path) -> None:
    config = {"cleanup": {"autoPrune": True, "maxContainerAgeMs": 1500}}
    with serve(tmp_path, config) as srv, srv.client() as client:
        execute(client, {"code": "1"}, sessionId="idle")

        def ids() -> set[str]:
            return {s["id"] for s in client.get("/sessions").json()["sessions"]}

        with srv.client() as other:
            busy: dict[str, Any] = {}
            runner = threading.Thread(
                target=lambda: busy.update(
                    execute(other, {"code": "import time; time.sleep(4); print('done')"}, sessionId="busy").json()
                )
            )
            runner.start()
            wait_until(lambda: "busy" in ids(), what="the busy session")
            wait_until(lambda: "idle" not in ids(), timeout=10, what="the idle session to be pruned")
            assert "busy" in ids()  # idle limit long passed, but it is running
            runner.join()
        assert busy["stdout"] == "done\n"
        wait_until(lambda: "busy" not in ids(), timeout=10, what="the finished session to be pruned")
        missing = client.get("/file", params={"sessionId": "idle", "path": "/sandbox/x"})
        assert (missing.status_code, missing.json()) == (404, {"error": "Session not found"})


def test_shutdown_stops_its_containers_and_keeps_the_images(tmp_path: Path) -> None:
    with serve(tmp_path, {}) as srv:
        with srv.client() as client:
            execute(client, {"code": "1"}, sessionId="a")
            execute(client, {"code": "1", "runtime": "bash"}, sessionId="b")
            sessions = client.get("/sessions").json()["sessions"]
        containers = {s["containerId"] for s in sessions}
        assert containers <= managed_ids()
        assert srv.stop() == 0
        log = srv.stderr()
    assert "[INFO] Shutting down isol8 server..." in log
    assert log.rstrip().endswith("[INFO] Server cleanup complete")
    assert not containers & managed_ids()
    inspect = subprocess.run(["docker", "image", "inspect", "isol8:python", "isol8:bash"], capture_output=True)
    assert inspect.returncode == 0


# --- `isol8 serve` flags ------------------------------------------------------------------------------
def test_banner_names_the_port_from_the_environment(tmp_path: Path) -> None:
    from test_server_support import free_port

    port = free_port()
    with serve(tmp_path / "a", {}, port=port, env={"ISOL8_PORT": "1", "PORT": "2"}) as srv:
        assert srv.url.endswith(f":{port}")  # --port wins over both variables
        assert f"[INFO] isol8 server v{__version__} listening on http://127.0.0.1:{port}\n" in srv.stderr()
        assert "       Auth: Bearer token required\n" in srv.stderr()


def test_port_in_use_without_a_terminal_falls_back_with_a_warning(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        workdir = tmp_path / "w"
        workdir.mkdir()
        (workdir / "isol8.config.json").write_text("{}")
        err = workdir / "err"
        with err.open("w") as stderr:
            proc = subprocess.Popen(
                [_isol8(), "serve", "--key", "k"],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=_env(ISOL8_PORT=str(port)),
            )
        try:
            wait_until(lambda: "listening on" in err.read_text(), timeout=120, what="the banner")
            text = err.read_text()
            line = next(line for line in text.splitlines() if line.startswith("[WARN]"))
            fallback = int(
                line.removeprefix(f"[WARN] Port {port} is in use. Falling back to available port ").rstrip(".")
            )
            assert fallback != port
            assert f"listening on http://127.0.0.1:{fallback}" in text
            wait_until(lambda: _healthy(f"http://127.0.0.1:{fallback}"), timeout=60, what="health")
        finally:
            proc.terminate()
            assert proc.wait(60) == 0


def _isol8() -> str:
    from helpers import ISOL8

    return ISOL8


def _env(**extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("ISOL8_API_KEY", "ISOL8_PORT", "PORT")}
    return {**env, **extra}


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        ((), {}, 1, "[ERR] API key required. Use --key or set ISOL8_API_KEY.\n"),
        (("--key", "k", "--port", "0"), {}, 1, "[ERR] Invalid port from --port: 0. Expected 1-65535.\n"),
        (("--key", "k", "--port", "http"), {}, 1, "[ERR] Invalid port from --port: http. Expected 1-65535.\n"),
        (("--key", "k"), {"ISOL8_PORT": "70000"}, 1, "[ERR] Invalid port from ISOL8_PORT: 70000. Expected 1-65535.\n"),
        (("--key", "k"), {"ISOL8_PORT": "", "PORT": "x1"}, 1, "[ERR] Invalid port from PORT: x1. Expected 1-65535.\n"),
    ],
)
def test_serve_usage_errors(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], code: int, message: str
) -> None:
    result = subprocess.run(
        [_isol8(), "serve", *args], capture_output=True, text=True, env=_env(**env), cwd=tmp_path, timeout=60
    )
    assert (result.returncode, result.stderr) == (code, message)


def test_serve_unknown_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [_isol8(), "serve", "--key", "k", "--prot", "1"], capture_output=True, text=True, env=_env(), cwd=tmp_path
    )
    assert result.returncode == 2
    assert "Error: No such option '--prot'. Did you mean '--port'?" in result.stderr
    assert result.stderr.startswith("Usage: isol8 serve [OPTIONS]")


def test_port_in_use_on_a_terminal_prompts(tmp_path: Path) -> None:
    import os
    import pty

    (tmp_path / "isol8.config.json").write_text("{}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        pid, fd = pty.fork()
        if pid == 0:  # the child: `isol8 serve` on a terminal
            os.chdir(tmp_path)
            os.execve(_isol8(), [_isol8(), "serve", "--key", "k", "--port", str(port)], _env())
        output = b""

        def read_until(text: bytes) -> None:
            nonlocal output
            while text not in output:
                chunk = os.read(fd, 1024)
                assert chunk, output
                output += chunk

        read_until(b"(default: 2): ")
        os.write(fd, b"9\n")
        read_until(b"Invalid selection. Enter 1, 2, or 3.")
        read_until(b"(default: 2): ")
        os.write(fd, b"1\n")
        read_until(b"Enter port (1-65535): ")
        os.write(fd, b"99999\n")
        read_until(b"[ERR] Invalid port: 99999. Expected 1-65535.")
        read_until(b"Enter port (1-65535): ")
        os.write(fd, f"{port}\n".encode())
        read_until(f"[WARN] Port {port} is already in use.".encode())
        read_until(b"Enter port (1-65535): ")
        os.write(fd, b"\x04")  # end of input: give up
        read_until(b"[ERR] Server startup cancelled.")
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 1
    assert f"[WARN] Port {port} is already in use.".encode() in output


# --- API keys -----------------------------------------------------------------------------------------
def test_api_keys_need_a_database(http: httpx.Client) -> None:
    for method, path in (
        ("POST", "/auth/keys"),
        ("GET", "/auth/keys"),
        ("DELETE", "/auth/keys/x"),
        ("POST", "/auth/login"),
    ):
        reply = http.request(method, path, json={"name": "k"} if method == "POST" else None)
        assert (reply.status_code, reply.json()) == (400, {"error": "DB-backed auth is not enabled"})


def test_api_keys_over_http(tmp_path: Path) -> None:
    db = tmp_path / "auth" / "keys.db"
    with serve(tmp_path / "srv", {}, "--auth-db", str(db)) as srv, srv.client() as master:
        assert f"       Auth DB: {db}\n" in srv.stderr()
        nameless = master.post("/auth/keys", json={"tenantId": "t"})
        assert (nameless.status_code, nameless.json()) == (400, {"error": "name is required"})
        created = master.post("/auth/keys", json={"name": "ci", "tenantId": "team", "ttlMs": 60000})
        assert created.status_code == 201
        key = created.json()
        assert set(key) == {"id", "key", "name", "keyPrefix", "tenantId", "expiresAt"}
        assert key["key"].startswith("isol8_") and key["keyPrefix"] == key["key"][:10] + "..."
        login = master.post("/auth/login", json={"ttlMs": 60000})
        assert login.status_code == 200
        assert set(login.json()) == {"token", "expiresAt", "keyId"}

        listed = master.get("/auth/keys").json()["keys"]
        assert [k["id"] for k in listed] == [login.json()["keyId"], key["id"]]  # newest first
        assert all("key" not in k and "keyHash" not in k for k in listed)
        assert [k["name"] for k in master.get("/auth/keys", params={"tenantId": "team"}).json()["keys"]] == ["ci"]

        with srv.client(key=key["key"]) as user:
            assert user.post("/execute", json={"request": {"code": "print(3)"}}).json()["stdout"] == "3\n"
            for method, path in (("GET", "/auth/keys"), ("POST", "/auth/login"), ("DELETE", f"/auth/keys/{key['id']}")):
                refused = user.request(method, path)
                assert (refused.status_code, refused.json()) == (
                    403,
                    {"error": "Master key required for this operation"},
                )
            assert master.delete(f"/auth/keys/{key['id']}").json() == {"ok": True, "id": key["id"]}
            revoked = user.get("/sessions")
            assert (revoked.status_code, revoked.json()) == (403, {"error": "Invalid API key"})
        missing = master.delete("/auth/keys/no-such-key")
        assert (missing.status_code, missing.json()) == (404, {"error": "Key not found"})
        with srv.client(key=login.json()["token"]) as logged_in:
            assert logged_in.get("/sessions").status_code == 200
        expiring = master.post("/auth/keys", json={"name": "brief", "ttlMs": 1}).json()["key"]
        with srv.client(key=expiring) as late:
            assert late.get("/sessions").json() == {"error": "Invalid API key"}
    assert key["key"].encode() not in db.read_bytes()
