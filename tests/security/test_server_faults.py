"""Server faults, against a real `isol8 serve` on a loopback port and the real Docker daemon.

Clients that leave mid-stream (SSE, WebSocket, also without a closing handshake) leave no running
container; 200 concurrent requests with random cancellations each get exactly one correct result
unless cancelled, leave nothing behind, and the server stays healthy; malformed JSON, oversized
bodies, invalid base64, lone surrogates and a wrong type on every field get a 4xx with a one-line
JSON error, never a 500. Other suites may share the daemon, so containers are told apart by the
server's unusual default pids limit, and runs by markers in their command lines.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server_support import ServerProcess, running_container, serve, sse_events, wait_until
from websockets.asyncio.client import connect

from engine.docker import DockerClient

pytestmark = pytest.mark.docker

PIDS_MARK = 59
"""The server's default pids limit: no other suite uses it, so its containers can be told apart."""
BODY_LIMIT = 1 << 20
CONFIG = {
    "defaults": {"pidsLimit": PIDS_MARK, "timeoutMs": 30_000},
    "server": {"maxBodyBytes": BODY_LIMIT, "maxSessions": 8},
}
"""The default (`secure`) pool: a container serves one run, so "its container is gone" is checkable."""
CONCURRENT = 200
CANCEL_SHARE = 0.3


def marked_containers(docker: DockerClient) -> set[str]:
    """The containers of this file's servers (any state)."""
    found = set()
    for container in docker.managed_containers():
        with contextlib.suppress(Exception):  # removed between the listing and the inspection
            if docker.api.inspect_container(container["Id"])["HostConfig"]["PidsLimit"] == PIDS_MARK:
                found.add(container["Id"])
    return found


def runs_with(docker: DockerClient, prefix: str) -> list[str]:
    """Command lines containing `prefix` in any managed container (each run's marker)."""
    found = []
    for container in docker.managed_containers():
        with contextlib.suppress(Exception):
            for process in docker.api.top(container["Id"]).get("Processes") or []:
                line = " ".join(process)
                if prefix in line:
                    found.append(line)
    return found


def pool(server: ServerProcess) -> list[dict[str, Any]]:
    reply = httpx.get(f"{server.url}/health", headers=server.headers, timeout=10)
    assert reply.status_code == 200, reply.text
    pools: list[dict[str, Any]] = reply.json()["pool"]
    return pools


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, docker_client: DockerClient) -> Iterator[ServerProcess]:
    """One server for the file, with a key store so `/auth/keys` bodies are read too."""
    workdir = tmp_path_factory.mktemp("faults")
    with serve(workdir, CONFIG, "--auth-db", str(workdir / "keys.db")) as running:
        yield running
        log = running.stderr()
    # A 500 that hid a crash would have logged its traceback.
    assert "Traceback" not in log and "[ERR]" not in log, log
    wait_until(lambda: not marked_containers(docker_client), what="the server's containers to go")


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


# --- clients leaving mid-stream ------------------------------------------------------------------------
def test_sse_client_leaving_mid_stream_frees_its_container(server: ServerProcess) -> None:
    marker = "sleep 3701.5"
    with (
        httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client,
        client.stream("POST", "/execute/stream", json={"request": {"cmd": f"echo up; {marker}"}}) as reply,
    ):
        lines = reply.iter_lines()
        assert json.loads(next(lines).removeprefix("data: "))["data"] == "up\n"
        container = running_container(marker)
    # The program printed nothing more after "up", so only the server's own watch can notice.
    wait_until(lambda: container not in marked_containers(DockerClient()), what="the run's container to go")
    wait_until(lambda: all(p["busy"] == 0 for p in pool(server)), what="the pool to have nothing busy")


@pytest.mark.parametrize("goodbye", ["close", "abort"])
async def test_websocket_client_leaving_mid_stream_frees_its_container(server: ServerProcess, goodbye: str) -> None:
    marker = f"sleep 3702.{1 if goodbye == 'close' else 2}"
    ws = await connect(server.ws_url, additional_headers=server.headers)
    await ws.send(json.dumps({"type": "execute", "request": {"cmd": f"echo up; {marker}"}}))
    assert json.loads(await ws.recv())["data"] == "up\n"
    container = await asyncio.to_thread(running_container, marker)
    if goodbye == "close":
        await ws.close()
    else:  # the TCP connection just drops: no close frame, as when a client process dies
        ws.transport.abort()
    gone = lambda: container not in marked_containers(DockerClient())  # noqa: E731
    await asyncio.to_thread(wait_until, gone, 15.0, "the run's container to go")
    await asyncio.to_thread(wait_until, lambda: all(p["busy"] == 0 for p in pool(server)), 15.0, "nothing busy")


def test_client_leaving_a_session_stream_keeps_the_session(http: httpx.Client, server: ServerProcess) -> None:
    """The run dies with its client; the session (its container and files) lives on."""
    sid = "leaver"
    assert (
        http.post("/execute", json={"request": {"cmd": "echo kept > /sandbox/k"}, "sessionId": sid}).status_code == 200
    )
    marker = "sleep 3703.5"
    body = {"request": {"cmd": f"echo up; {marker}"}, "sessionId": sid}
    with server.client() as client, client.stream("POST", "/execute/stream", json=body) as reply:
        lines = reply.iter_lines()
        assert json.loads(next(lines).removeprefix("data: "))["data"] == "up\n"
        running_container(marker)
    wait_until(lambda: not runs_with(DockerClient(), marker), what="the session's run to be killed")
    after = http.post("/execute", json={"request": {"cmd": "cat /sandbox/k"}, "sessionId": sid})
    assert after.json()["stdout"] == "kept\n"
    assert http.delete(f"/session/{sid}").status_code == 200


# --- 200 concurrent requests, some cancelled -----------------------------------------------------------
@dataclass
class Outcome:
    index: int
    kind: str
    expected: str
    cancelled: bool = False
    status: int | None = None
    stdout: str = ""
    exit_code: str | None = None
    exits: int = 0
    execution_id: str | None = None
    problems: list[str] = field(default_factory=list)


PROGRAMS = {
    "python": "import subprocess; subprocess.run(['sleep {delay} #{nonce}'], shell=True); print({nonce!r})",
    "bash": "sleep {delay} #{nonce}\necho {nonce}",
    "node": "import {{ execSync }} from 'node:child_process'; execSync('sleep {delay} #{nonce}'); console.log({nonce!r})",
}
"""Each prints its nonce after a pause spent in a process whose command line names it, so a run
still going anywhere after the storm can be found."""


async def _one(server: ServerProcess, client: httpx.AsyncClient, outcome: Outcome, request: dict[str, Any]) -> None:
    if outcome.kind == "execute":
        reply = await client.post("/execute", json={"request": request})
        outcome.status = reply.status_code
        body = reply.json()
        outcome.stdout, outcome.exit_code = body.get("stdout", ""), str(body.get("exitCode"))
        outcome.execution_id, outcome.exits = body.get("executionId"), 1
        return
    if outcome.kind == "sse":
        async with client.stream("POST", "/execute/stream", json={"request": request}) as reply:
            outcome.status = reply.status_code
            events = sse_events((await reply.aread()).decode())
    else:
        async with connect(server.ws_url, additional_headers=server.headers) as ws:
            await ws.send(json.dumps({"type": "execute", "request": request}))
            events = [json.loads(message) async for message in ws]
            outcome.status = 200 if ws.close_code == 1000 else ws.close_code
    outcome.stdout = "".join(e["data"] for e in events if e["type"] == "stdout")
    outcome.exits = sum(e["type"] == "exit" for e in events)
    outcome.exit_code = events[-1]["data"] if events and events[-1]["type"] == "exit" else None


async def _storm(server: ServerProcess, rng: random.Random, run_id: str) -> list[Outcome]:
    """CONCURRENT requests at once over /execute, SSE and the WebSocket; CANCEL_SHARE of them are
    cancelled at a random moment (queued, starting or running), which closes their connection.
    Bounded: every request and the whole storm have a timeout."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=120, limits=limits) as client:
        outcomes, tasks = [], []
        loop = asyncio.get_running_loop()
        for index in range(CONCURRENT):
            runtime = rng.choice(["python", "python", "bash", "bash", "node"])
            nonce = f"{run_id}-{index:03d}"
            delay = rng.choice([0, 0.1, 0.3, 0.6])
            request = {"code": PROGRAMS[runtime].format(delay=delay, nonce=nonce), "runtime": runtime}
            outcome = Outcome(index, rng.choice(["execute", "sse", "ws"]), f"{nonce}\n")
            task = asyncio.create_task(_one(server, client, outcome, request))
            if rng.random() < CANCEL_SHARE:
                loop.call_later(rng.uniform(0.0, 2.0), task.cancel)
            outcomes.append(outcome)
            tasks.append(task)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=240)
    for outcome, result in zip(outcomes, results, strict=True):
        if isinstance(result, asyncio.CancelledError):
            outcome.cancelled = True
        elif isinstance(result, BaseException):
            outcome.problems.append(f"{type(result).__name__}: {result}")
    return outcomes


def test_200_concurrent_requests_with_random_cancellations(server: ServerProcess) -> None:
    run_id = f"storm{random.randrange(16**6):06x}"
    outcomes = asyncio.run(_storm(server, random.Random(200), run_id))
    cancelled = [o for o in outcomes if o.cancelled]
    answered = [o for o in outcomes if not o.cancelled]
    assert len(cancelled) > 20 and len(answered) > 100, (len(cancelled), len(answered))  # both really happened
    wrong = [
        o
        for o in answered
        if o.problems or o.status != 200 or o.stdout != o.expected or o.exits != 1 or o.exit_code != "0"
    ]
    assert not wrong, wrong[:5]
    ids = [o.execution_id for o in answered if o.kind == "execute"]
    assert len(set(ids)) == len(ids)  # one result per request, none delivered twice
    # Nothing the storm started still runs anywhere, nothing is busy, and the server's only containers
    # are the idle ones its pool keeps.
    docker = DockerClient()
    wait_until(lambda: not runs_with(docker, run_id), timeout=30, what="every storm run to end")
    wait_until(lambda: all(p["busy"] == 0 for p in pool(server)), timeout=30, what="nothing busy")

    def only_the_pool() -> bool:
        idle = sum(p["ready"] + p["starting"] for p in pool(server))
        return len(marked_containers(docker)) <= idle

    wait_until(only_the_pool, timeout=30, what="no container beyond the idle pool")
    with server.client() as client:  # still healthy: a new request is answered correctly
        reply = client.post("/execute", json={"request": {"code": "print('after the storm')"}})
        assert (reply.status_code, reply.json()["stdout"]) == (200, "after the storm\n")


# --- bodies the server must refuse ---------------------------------------------------------------------
def _refused(reply: httpx.Response, status: int = 400) -> str:
    """The one-line JSON error of a 4xx reply."""
    assert reply.status_code == status, (reply.status_code, reply.text)
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    body = reply.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    assert "\n" not in body["error"], body
    return str(body["error"])


BODY_ROUTES = ["/execute", "/execute/stream", "/file", "/auth/keys"]


@pytest.mark.parametrize("route", BODY_ROUTES)
@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("{", "Invalid JSON body"),
        ('{"request": ', "Invalid JSON body"),
        ("{} trailing", "Invalid JSON body"),
        ("{'single': 'quotes'}", "Invalid JSON body"),
        ("\xff\xfe", "Invalid JSON body"),
        ("[]", "The body must be a JSON object (Content-Type: application/json)"),
        ('"text"', "The body must be a JSON object (Content-Type: application/json)"),
        ("42", "The body must be a JSON object (Content-Type: application/json)"),
    ],
)
def test_malformed_json_is_400(http: httpx.Client, route: str, raw: str, error: str) -> None:
    reply = http.post(route, content=raw.encode("latin-1"), headers={"Content-Type": "application/json"})
    assert _refused(reply) == error


@pytest.mark.parametrize("route", ["/execute", "/execute/stream"])
def test_a_body_that_is_not_json_is_400(http: httpx.Client, route: str) -> None:
    reply = http.post(route, content=b'{"request": {"code": "1"}}', headers={"Content-Type": "text/plain"})
    assert _refused(reply) == "The body must be a JSON object (Content-Type: application/json)"
    assert _refused(http.post(route)) == "Missing JSON body"


def _wrong_values(schema: dict[str, Any]) -> list[Any]:
    """JSON values of a type the property's schema does not allow."""

    def types(node: dict[str, Any]) -> set[str | None]:
        if "anyOf" in node:
            return set().union(*(types(v) for v in node["anyOf"]))
        return {"object"} if "$ref" in node else {node.get("type")}

    allowed = types(schema)
    if "number" in allowed:
        allowed.add("integer")
    candidates = {
        "string": "not-a-number",
        "integer": 7,
        "boolean": True,
        "array": [1],
        "object": {"x": 1},
        "null": None,
    }
    if "string" in allowed:  # a number where text belongs
        candidates.pop("integer")
    return [value for kind, value in candidates.items() if kind not in allowed and kind != "null"]


def _wrong_type_cases() -> list[Any]:
    """(route, body, field) for every field of every body the server takes, each with wrong types.
    Built from the models' own schemas, so a field added later is covered too."""
    from engine.models import ExecutionRequest
    from engine.server.policy import ClientOptions
    from engine.server.wire import FileUpload, NewKey

    cases = []
    base = {"request": {"code": "print(1)"}}
    for field_name, prop in ExecutionRequest.model_json_schema(by_alias=True)["properties"].items():
        for value in _wrong_values(prop):
            cases.append(("/execute", {"request": {"code": "print(1)", field_name: value}}, f"request.{field_name}"))
    for field_name, prop in ClientOptions.model_json_schema(by_alias=True)["properties"].items():
        if not prop.get("anyOf") and "type" not in prop:
            continue  # accepted whatever it is, and ignored (`poolSize`)
        for value in _wrong_values(prop):
            cases.append(("/execute", {**base, "options": {field_name: value}}, f"options.{field_name}"))
    for value in (7, ["s"], True):
        cases.append(("/execute", {**base, "sessionId": value}, "sessionId"))
        cases.append(("/execute", {"request": value}, "request"))
        cases.append(("/execute", {**base, "options": value}, "options"))
    upload = {"sessionId": "s", "path": "/sandbox/a", "content": "aGk="}
    for field_name, prop in FileUpload.model_json_schema(by_alias=True)["properties"].items():
        for value in _wrong_values(prop):
            cases.append(("/file", {**upload, field_name: value}, field_name))
    for field_name, prop in NewKey.model_json_schema(by_alias=True)["properties"].items():
        for value in _wrong_values(prop):
            cases.append(("/auth/keys", {"name": "k", field_name: value}, field_name))
    return [
        pytest.param(route, body, where, id=f"{route}:{where}={json.dumps(body)[:40]}") for route, body, where in cases
    ]


@pytest.mark.parametrize(("route", "body", "where"), _wrong_type_cases())
def test_a_wrong_type_on_any_field_is_400_naming_it(http: httpx.Client, route: str, body: Any, where: str) -> None:
    assert _refused(http.post(route, json=body)).startswith(f"{where}: ")


@pytest.mark.parametrize(
    "content",
    ["!!", "aGk", "a===", "aGk=aGk=", "aGk=\n", "é", "data:text/plain;base64,aGk=", " aGk="],
)
def test_invalid_base64_upload_is_400_and_the_session_is_unharmed(http: httpx.Client, content: str) -> None:
    sid = "b64"
    assert http.post("/execute", json={"request": {"cmd": "echo a > /sandbox/a"}, "sessionId": sid}).status_code == 200
    error = _refused(http.post("/file", json={"sessionId": sid, "path": "/sandbox/a", "content": content}))
    assert error.startswith("content: not valid base64 (") and error.endswith("send the bytes base64-encoded"), error
    kept = http.get("/file", params={"sessionId": sid, "path": "/sandbox/a"})
    assert base64.b64decode(kept.json()["content"]) == b"a\n"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ('{"request": {"code": "print(1)", "stdin": "\\ud800"}}', "request.stdin"),
        ('{"request": {"code": "\\udfff"}}', "request.code"),
        ('{"request": {"code": "1", "env": {"\\ud800": "x"}}}', "request.env.\\ud800"),
        ('{"request": {"code": "1"}, "options": {"secrets": {"A": "\\udc80"}}}', "options.secrets.A"),
    ],
)
def test_lone_surrogates_are_400(http: httpx.Client, body: str, where: str) -> None:
    """JSON can spell text no encoder takes; it used to reach the engine and come back as a 500."""
    reply = http.post("/execute", content=body, headers={"Content-Type": "application/json"})
    assert _refused(reply) == f"{where}: not valid Unicode (a lone surrogate); send UTF-8 text, binary data as base64"


def test_limits_a_sandbox_cannot_start_with_are_400(http: httpx.Client) -> None:
    """They used to be a 500 ("stopped unexpectedly") or, for a CPU share rounding to 0, no limit at all."""
    for field_name, value, minimum in (("pidsLimit", 1, "4"), ("memoryLimit", "6m", "16m"), ("cpuLimit", 1e-12, "0.1")):
        for body in (
            {"request": {"code": "1", field_name: value}},
            {"request": {"code": "1"}, "options": {field_name: value}},
        ):
            error = _refused(http.post("/execute", json=body))
            assert error == f"{field_name} {value} is below the smallest a sandbox can start with ({minimum})", error


def test_unknown_query_parameters_are_400(http: httpx.Client) -> None:
    error = _refused(http.get("/sessions", params={"tenant": "x"}))
    assert error == 'Unknown query parameter "tenant" (this route takes: none)'
    error = _refused(http.get("/file", params={"sessionId": "s", "path": "/sandbox/a", "sessionid": "t"}))
    assert error == 'Unknown query parameter "sessionid" (this route takes: sessionId, path)'


# --- oversized bodies ----------------------------------------------------------------------------------
def _raw(server: ServerProcess, head: str, body_chunks: list[bytes] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send a request over a bare socket (httpx would refuse to lie about Content-Length); the reply."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        with contextlib.suppress(OSError):  # the server may answer and close before all of it is sent
            for chunk in body_chunks or []:
                sock.sendall(chunk)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


TOO_LARGE = (
    "Request body too large: this server accepts at most {size} per request (server.maxBodyBytes); "
    "split big inputs over several requests, e.g. one POST /file per file"
)


def test_declared_oversized_body_is_413_before_it_is_read(server: ServerProcess) -> None:
    started = time.monotonic()
    head = (
        f"POST /execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {100 * BODY_LIMIT}\r\n\r\n"
    )
    status, headers, body = _raw(server, head)  # not one byte of the 100 MiB is sent
    assert status == 413 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": TOO_LARGE.format(size="1 MiB")}
    assert headers.get("connection") == "close"
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("route", ["/execute", "/execute/stream", "/file", "/auth/keys", "/auth/login", "/cleanup"])
def test_chunked_oversized_body_is_cut_off_at_the_limit(server: ServerProcess, http: httpx.Client, route: str) -> None:
    """No Content-Length to check: the body is counted as it arrives. Just past the limit the client
    stops sending (so the reply is not lost to a reset) and waits for the 413."""
    sid = "survives-" + route.strip("/").replace("/", "-")
    assert http.post("/execute", json={"request": {"cmd": "true"}, "sessionId": sid}).status_code == 200
    head = (
        f"POST {route} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.key}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    prefix = b'{"request": {"code": "1", "stdin": "'
    piece = 65536
    rest = BODY_LIMIT + 1 - len(prefix)  # one byte over: all of it must be read to know, none is left unread
    chunks = [prefix] + [b"x" * min(piece, rest - start) for start in range(0, rest, piece)]
    status, headers, body = _raw(server, head, [f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks])
    assert (status, json.loads(body)) == (413, {"error": TOO_LARGE.format(size="1 MiB")})
    assert headers["content-type"] == "application/json"
    # Nothing ran: `/cleanup` in particular did not stop the session.
    assert sid in {s["id"] for s in http.get("/sessions").json()["sessions"]}
    assert http.delete(f"/session/{sid}").status_code == 200


@pytest.mark.parametrize("route", ["/execute/stream", "/file", "/auth/keys", "/auth/login", "/cleanup", "/sessions"])
def test_every_route_refuses_a_declared_oversized_body(server: ServerProcess, route: str) -> None:
    """From a caller with a key; one without gets 401 (tests/security/test_server_attacks.py)."""
    head = (
        f"POST {route} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.key}\r\n"
        f"Content-Length: {BODY_LIMIT + 1}\r\n\r\n"
    )
    status, _, body = _raw(server, head)
    assert (status, json.loads(body)) == (413, {"error": TOO_LARGE.format(size="1 MiB")})


def test_a_body_under_the_limit_is_served(http: httpx.Client) -> None:
    data = "y" * (BODY_LIMIT - 4096)
    reply = http.post("/execute", json={"request": {"code": "import sys; print(len(sys.stdin.read()))", "stdin": data}})
    assert (reply.status_code, reply.json()["stdout"]) == (200, f"{len(data)}\n")


def test_default_limit_is_256_mib(tmp_path: Path, docker_client: DockerClient) -> None:
    with serve(tmp_path, {}) as fresh:
        head = (
            f"POST /execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {fresh.key}\r\n"
            f"Content-Length: {(256 << 20) + 1}\r\n\r\n"
        )
        status, _, body = _raw(fresh, head)
    assert status == 413 and json.loads(body) == {"error": TOO_LARGE.format(size="256 MiB")}


# --- known agent bugs, found by the fuzzer (engine/agent/agent.py `send_file`, not the server's) -------
@pytest.mark.parametrize("make", ["mkdir /sandbox/thing", "mkfifo /sandbox/thing"])
def test_reading_a_non_regular_file_is_4xx_and_the_session_survives(http: httpx.Client, make: str) -> None:
    sid = "nonregular-" + make.split()[0]
    assert http.post("/execute", json={"request": {"cmd": make}, "sessionId": sid}).status_code == 200
    try:
        reply = http.get("/file", params={"sessionId": sid, "path": "/sandbox/thing"}, timeout=5)
        assert 400 <= reply.status_code < 500, reply.text
        after = http.post("/execute", json={"request": {"cmd": "echo alive"}, "sessionId": sid}, timeout=5)
        assert after.json()["stdout"] == "alive\n"
    finally:
        http.delete(f"/session/{sid}")
