"""Attacks on the policy of `isol8 serve`, against a real server subprocess and the real Docker daemon.

- Private destinations: the operator allows every public host (an empty `network.whitelist`), so
  a client may send any whitelist; one naming the Docker bridge's gateway, another container on
  the bridge, 169.254.169.254, the bridge's subnet or everything must still be refused by the
  sandbox's proxy ("not a public address"), unless the operator set
  `server.clientWhitelistReachesPrivate`.
- Client filters wider than the operator's: CONNECT ports beyond `network.ports` and
  `server.allowedPorts`, and `whitelistReachesPrivate: true`, are refused with 403 naming the option,
  over every transport; an allowed port really opens in the proxy.
- Sessions are capped per tenant as well as overall: a tenant at its cap gets 429 while another
  still creates sessions, and concurrent creations never overshoot a cap.
- Authentication comes first: without a valid key, every route, method and unknown path answers
  401/403 whatever the body (bad JSON, an oversized declared length) or query, also for WebSockets;
  `/health` shows its pool and sessions to a key holder only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from test_server_support import ServerProcess, serve, wait_until
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from engine import __version__
from engine.docker import DockerClient

pytestmark = pytest.mark.docker

BODY_LIMIT = 1 << 20
MAX_SESSIONS, PER_TENANT = 7, 3
CONFIG = {
    "server": {
        "allowedNetworks": ["none", "filtered"],
        "maxSessions": MAX_SESSIONS,
        "maxSessionsPerTenant": PER_TENANT,
        "maxBodyBytes": BODY_LIMIT,
    }
}
"""The operator's whitelist is empty (every public host), so clients may send any whitelist."""
WEB = """
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from the bridge"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""


@dataclass
class Bridge:
    web: str  # a container on Docker's default `bridge` network, serving HTTP on 8080
    gateway: str  # the bridge's gateway: the Docker host itself


@pytest.fixture(scope="module")
def bridge(docker_client: DockerClient) -> Iterator[Bridge]:
    client = docker.from_env()
    container = client.containers.run(
        "isol8:python",
        entrypoint=["python3", "-c", WEB],
        name=f"isol8-attack-web-{uuid.uuid4().hex[:8]}",
        network="bridge",
        detach=True,
    )
    try:
        container.reload()
        settings = container.attrs["NetworkSettings"]["Networks"]["bridge"]
        found = Bridge(web=settings["IPAddress"], gateway=settings["Gateway"])

        def answers() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"http://{found.web}:8080/", timeout=1).text == "hello from the bridge"
            return False

        wait_until(answers, timeout=30, what="the bridge's web server")
        yield found
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, docker_client: DockerClient) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("attacks")
    with serve(workdir, CONFIG, "--auth-db", str(workdir / "keys.db")) as running:
        yield running
        log = running.stderr()
    assert "Traceback" not in log and "[ERR]" not in log, log


def execute(client: httpx.Client, code: str, options: dict[str, Any]) -> httpx.Response:
    return client.post("/execute", json={"request": {"code": code}, "options": options})


FETCH = (
    "import urllib.request, urllib.error\n"
    "for url in URLS:\n"
    "    try:\n"
    "        r = urllib.request.urlopen(url, timeout=20)\n"
    "        print(r.status, r.read().decode().strip())\n"
    "    except urllib.error.HTTPError as e:\n"
    "        print(e.code, e.read().decode().strip())\n"
    "    except OSError as e:\n"
    "        print('error', e)\n"
)


def fetch(*urls: str) -> str:
    """Sandbox code that GETs each URL through the proxy and prints `status body`."""
    return f"URLS = {list(urls)!r}\n" + FETCH


TUNNEL = """
import socket
s = socket.create_connection(("127.0.0.1", 8118), timeout=20)
s.sendall(f"CONNECT {TARGET} HTTP/1.1\\r\\nHost: {TARGET}\\r\\n\\r\\n".encode())
head = b""
while b"\\r\\n\\r\\n" not in head and (chunk := s.recv(65536)):
    head += chunk
status, _, rest = head.partition(b"\\r\\n\\r\\n")
if status.split()[1] != b"200":
    while chunk := s.recv(65536):
        rest += chunk
    print(status.split(b"\\r\\n")[0].decode(), rest.decode().strip())
else:
    s.sendall(b"GET / HTTP/1.0\\r\\nHost: web\\r\\n\\r\\n")
    data = rest
    while chunk := s.recv(65536):
        data += chunk
    print("tunnel:", data.partition(b"\\r\\n\\r\\n")[2].decode())
"""
"""Sandbox code: CONNECT to TARGET through the proxy (a plain HTTP server behind it) and GET /."""


def tunnel(target: str) -> str:
    return f"TARGET = {target!r}\n" + TUNNEL


def not_public(host: str) -> str:
    return f"403 isol8: request to {host} blocked: {host} is not a public address"


# --- private destinations -------------------------------------------------------------------------------
PRIVATE = {
    # variant: (whitelist, URL), from the bridge's addresses
    "docker host": (lambda b: [re.escape(b.gateway)], lambda b: f"http://{b.gateway}:9/"),
    "another container": (lambda b: [re.escape(b.web)], lambda b: f"http://{b.web}:8080/"),
    "metadata address": (lambda b: [r"169\.254\.169\.254"], lambda b: "http://169.254.169.254/latest/meta-data/"),
    "bridge subnet": (lambda b: [re.escape(b.web.rsplit(".", 2)[0]) + r"\..*"], lambda b: f"http://{b.web}:8080/"),
    "everything": (lambda b: [".*"], lambda b: f"http://{b.web}:8080/"),
}


@pytest.mark.parametrize("variant", PRIVATE)
def test_a_client_whitelist_does_not_reach_private_addresses(
    server: ServerProcess, bridge: Bridge, variant: str
) -> None:
    whitelist, url = (make(bridge) for make in PRIVATE[variant])
    with server.client() as client:
        reply = execute(client, fetch(url), {"network": "filtered", "networkFilter": {"whitelist": whitelist}})
    assert reply.status_code == 200, reply.text
    host = httpx.URL(url).host
    assert reply.json()["stdout"] == not_public(host) + "\n", reply.json()


def test_the_operator_may_let_client_whitelists_reach_private_addresses(tmp_path: Path, bridge: Bridge) -> None:
    """The one positive case, and ports end to end: a CONNECT port opens only when the client asks
    for one the operator allows."""
    config = {
        "server": {"allowedNetworks": ["filtered"], "clientWhitelistReachesPrivate": True, "allowedPorts": [8080]}
    }
    web = re.escape(bridge.web)
    with serve(tmp_path, config) as srv, srv.client() as client:
        reply = execute(
            client, fetch(f"http://{bridge.web}:8080/"), {"network": "filtered", "networkFilter": {"whitelist": [web]}}
        )
        assert reply.json()["stdout"] == "200 hello from the bridge\n", reply.text
        closed = execute(client, fetch(f"http://{bridge.web}:8080/"), {"network": "filtered"})
        assert closed.json()["stdout"] == not_public(bridge.web) + "\n", closed.text  # no whitelist of its own

        target = f"{bridge.web}:8080"
        options: dict[str, Any] = {"network": "filtered", "networkFilter": {"whitelist": [web], "ports": [8080]}}
        opened = execute(client, tunnel(target), options)
        assert opened.json()["stdout"] == "tunnel: hello from the bridge\n", opened.text
        default = execute(client, tunnel(target), {"network": "filtered", "networkFilter": {"whitelist": [web]}})
        assert default.json()["stdout"].startswith("HTTP/1.1 403 "), default.text
        assert "port 8080 not allowed" in default.json()["stdout"], default.text


# --- filters wider than the operator's -----------------------------------------------------------------
PORTS_ERROR = (
    "networkFilter.ports entry {port} is not allowed by this server "
    "(allowed: 443; an operator adds ports with server.allowedPorts)"
)
PRIVATE_ERROR = (
    "networkFilter.whitelistReachesPrivate true is not allowed by this server "
    "({option} is false): a whitelist may not reach private, loopback or link-local addresses"
)
WIDER = [
    pytest.param({"ports": [22]}, PORTS_ERROR.format(port=22), id="ssh port"),
    pytest.param({"ports": [443, 2375]}, PORTS_ERROR.format(port=2375), id="docker api port"),
    pytest.param({"whitelist": [".*"], "ports": [8080]}, PORTS_ERROR.format(port=8080), id="port with a whitelist"),
    pytest.param(
        {"whitelist": [r"169\.254\.169\.254"], "whitelistReachesPrivate": True},
        PRIVATE_ERROR.format(option="server.clientWhitelistReachesPrivate"),
        id="metadata, reaching private",
    ),
    pytest.param(
        {"whitelist": [".*"], "whitelistReachesPrivate": True},
        PRIVATE_ERROR.format(option="server.clientWhitelistReachesPrivate"),
        id="everything, reaching private",
    ),
]


@pytest.mark.parametrize(("network_filter", "error"), WIDER)
async def test_a_filter_wider_than_the_operators_is_403(
    server: ServerProcess, network_filter: dict[str, Any], error: str
) -> None:
    """Over /execute, SSE and the WebSocket (where the refusal is the only event)."""
    body = {"request": {"code": "print(1)"}, "options": {"network": "filtered", "networkFilter": network_filter}}
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=60) as client:
        for route in ("/execute", "/execute/stream"):
            reply = await client.post(route, json=body)
            assert (route, reply.status_code, reply.json()) == (route, 403, {"error": error})
    async with connect(server.ws_url, additional_headers=server.headers) as ws:
        await ws.send(json.dumps({"type": "execute", **body}))
        assert [json.loads(message) async for message in ws] == [{"type": "error", "data": error}]


def test_the_operators_own_private_setting_is_not_lifted_by_a_client(tmp_path: Path) -> None:
    config = {"network": {"whitelistReachesPrivate": False}, "server": {"allowedNetworks": ["filtered"]}}
    with serve(tmp_path, config) as srv, srv.client() as client:
        reply = execute(client, "1", {"network": "filtered", "networkFilter": {"whitelistReachesPrivate": True}})
    assert (reply.status_code, reply.json()) == (
        403,
        {"error": PRIVATE_ERROR.format(option="network.whitelistReachesPrivate")},
    )


# --- sessions per tenant -------------------------------------------------------------------------------
def _tenant_key(server: ServerProcess, tenant: str) -> str:
    with server.client() as master:
        reply = master.post("/auth/keys", json={"name": f"key-{tenant}", "tenantId": tenant})
    assert reply.status_code == 201, reply.text
    key: str = reply.json()["key"]
    return key


def _create(client: httpx.Client, session_id: str) -> httpx.Response:
    return client.post("/execute", json={"request": {"cmd": "true"}, "sessionId": session_id})


def _tenant_full(tenant: str) -> str:
    return (
        f'Too many sessions: tenant "{tenant}" may keep at most {PER_TENANT} (server.maxSessionsPerTenant); '
        "delete one with DELETE /session/{id}"
    )


SERVER_FULL = (
    f"Too many sessions: this server keeps at most {MAX_SESSIONS} (server.maxSessions); "
    "delete one with DELETE /session/{id}"
)


@contextlib.contextmanager
def _sessions_removed(server: ServerProcess, *keys: str) -> Iterator[None]:
    try:
        yield
    finally:
        for key in keys:
            with server.client(key=key) as client:
                for session in client.get("/sessions").json()["sessions"]:
                    client.delete(f"/session/{session['id']}")


async def test_a_tenant_at_its_cap_gets_429_and_others_still_create(server: ServerProcess) -> None:
    alice, bob, carol = (_tenant_key(server, tenant) for tenant in ("alice", "bob", "carol"))
    with _sessions_removed(server, alice, bob, carol), server.client(key=alice) as a, server.client(key=bob) as b:
        for index in range(PER_TENANT):
            assert _create(a, f"a{index}").status_code == 200
        over = _create(a, "a-over")
        assert (over.status_code, over.json()) == (429, {"error": _tenant_full("alice")})
        stream = a.post("/execute/stream", json={"request": {"cmd": "true"}, "sessionId": "a-over"})
        assert (stream.status_code, stream.json()) == (429, {"error": _tenant_full("alice")})
        async with connect(server.ws_url, additional_headers={"Authorization": f"Bearer {alice}"}) as ws:
            await ws.send(json.dumps({"type": "execute", "request": {"cmd": "true"}, "sessionId": "a-over"}))
            assert [json.loads(m) async for m in ws] == [{"type": "error", "data": _tenant_full("alice")}]
        assert _create(a, "a0").status_code == 200  # its existing sessions still serve it
        for index in range(PER_TENANT):  # alice is full; bob is not
            assert _create(b, f"b{index}").status_code == 200
        assert a.delete("/session/a0").status_code == 200
        assert _create(a, "a-again").status_code == 200  # room again after a delete
        with server.client(key=carol) as c:
            assert _create(c, "c0").status_code == 200  # 7: the server's own cap
            full = _create(c, "c1")
        assert (full.status_code, full.json()) == (429, {"error": SERVER_FULL})
        assert {s["id"] for s in a.get("/sessions").json()["sessions"]} == {"a1", "a2", "a-again"}


async def test_concurrent_creations_do_not_overshoot_the_tenant_cap(server: ServerProcess) -> None:
    """Two tenants race 12 creations each at once: each ends with exactly its cap, every other
    attempt is its tenant's 429, and no container is left for a refused one."""
    keys = {tenant: _tenant_key(server, tenant) for tenant in ("dave", "erin")}
    with _sessions_removed(server, *keys.values()):

        async def race(tenant: str) -> list[httpx.Response]:
            headers = {"Authorization": f"Bearer {keys[tenant]}"}
            async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=120) as client:
                body = {"request": {"cmd": "true"}}
                return await asyncio.gather(
                    *(client.post("/execute", json={**body, "sessionId": f"{tenant}{i}"}) for i in range(12))
                )

        async def both() -> dict[str, list[httpx.Response]]:
            dave, erin = await asyncio.gather(race("dave"), race("erin"))
            return {"dave": dave, "erin": erin}

        for tenant, replies in (await both()).items():
            statuses = sorted(reply.status_code for reply in replies)
            assert statuses == [200] * PER_TENANT + [429] * (12 - PER_TENANT), (tenant, statuses)
            assert {reply.json()["error"] for reply in replies if reply.status_code == 429} == {_tenant_full(tenant)}
            with server.client(key=keys[tenant]) as client:
                sessions = client.get("/sessions").json()["sessions"]
            won = {f"{tenant}{i}" for i, reply in enumerate(replies) if reply.status_code == 200}
            assert {s["id"] for s in sessions} == won
        with server.client() as master:
            assert httpx.get(f"{server.url}/health", headers=server.headers).json()["sessions"] == 2 * PER_TENANT
            assert master.get("/sessions").json() == {"sessions": []}  # another tenant's, not the master's


# --- authentication first ------------------------------------------------------------------------------
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD")
UNKNOWN_PATHS = (
    "/execute/ws",  # a WebSocket route (not in the document), asked over plain HTTP
    "/nope",
    "/execute/",
    "/sessions/x",
    "/session",
    "/auth",
    "/health/x",
    "/docs/oauth2-redirect",
    "/redoc",
    "/%2e%2e/etc/passwd",
)
PUBLIC = {("GET", "/health"), ("GET", "/openapi.json"), ("GET", "/docs")}
CREDENTIALS = [
    ({}, 401, "Missing Authorization header"),
    ({"Authorization": "Bearer not-the-key"}, 403, "Invalid API key"),
    ({"Authorization": "Bearer isol8_" + "0" * 64}, 403, "Invalid API key"),  # shaped like a key: the store is asked
    ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, 'Authorization header must be "Bearer <key>"'),
]


def _targets(server: ServerProcess) -> list[tuple[str, str]]:
    """Every method on every documented path (path parameters filled in) and on other paths."""
    document = httpx.get(f"{server.url}/openapi.json").json()
    paths = [re.sub(r"\{[^}]+\}", "x", path) for path in document["paths"]]
    assert {"/execute", "/file", "/session/x", "/auth/keys/x", "/cleanup"} <= set(paths)
    return [(m, p) for p in (*paths, *UNKNOWN_PATHS) for m in METHODS if (m, p) not in PUBLIC]


def _mismatch(method: str, path: str, status: int, body: bytes, expected: tuple[int, str]) -> str | None:
    wanted_status, wanted_error = expected
    if status != wanted_status:
        return f"{method} {path}: {status} {body[:100]!r}"
    if method != "HEAD" and json.loads(body) != {"error": wanted_error}:
        return f"{method} {path}: {body[:100]!r}"
    return None


@pytest.mark.parametrize(
    "variant",
    ["no body", "bad JSON", "not an object", "unknown query parameter", "missing query parameters", "huge query"],
)
def test_without_a_valid_key_every_request_is_401_or_403(server: ServerProcess, variant: str) -> None:
    kwargs: dict[str, Any] = {
        "no body": {},
        "bad JSON": {"content": b'{"request": ', "headers": {"Content-Type": "application/json"}},
        "not an object": {"content": b"[1, 2]", "headers": {"Content-Type": "application/json"}},
        "unknown query parameter": {"params": {"tenant": "other", "sessionId": "s", "path": "/sandbox/a"}},
        "missing query parameters": {"params": {"sessionId": ""}},
        "huge query": {"params": {"x": "y" * 6000}},
    }[variant]
    wrong = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for method, path in _targets(server):
            for headers, status, error in CREDENTIALS:
                reply = client.request(method, path, **{**kwargs, "headers": {**kwargs.get("headers", {}), **headers}})
                found = _mismatch(method, path, reply.status_code, reply.content, (status, error))
                if found:
                    wrong.append(f"{found} with {headers}")
    assert not wrong, f"{len(wrong)} requests answered before authentication, e.g. {wrong[:8]}"


def _raw(server: ServerProcess, head: str) -> tuple[int, bytes]:
    """Send a request head over a bare socket (httpx will not declare a body it does not send) and
    read one reply, without waiting for the connection to close: (status, body)."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
        reply_head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = reply_head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        length = 0 if head.startswith("HEAD ") else int(headers.get("content-length", "0"))
        while len(body) < length and (chunk := sock.recv(65536)):
            body += chunk
    return int(status_line.split()[1]), body


@pytest.mark.parametrize("framing", ["declared", "chunked"])
def test_an_oversized_body_without_a_valid_key_is_401_or_403_before_it_is_sent(
    server: ServerProcess, framing: str
) -> None:
    """The body (declared 100 times the limit, or chunked) is never sent: the refusal must come
    without waiting for it, and must not be the 413 that a key holder gets."""
    length = f"Content-Length: {100 * BODY_LIMIT}" if framing == "declared" else "Transfer-Encoding: chunked"
    wrong = []
    for method, path in _targets(server):
        for headers, status, error in CREDENTIALS[:2]:
            auth = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n{length}\r\n\r\n"
            got, body = _raw(server, head)  # a reply that waited for the body would time out here
            found = _mismatch(method, path, got, body, (status, error))
            if found:
                wrong.append(f"{found} with {headers}")
    assert not wrong, f"{len(wrong)} oversized requests answered before authentication, e.g. {wrong[:8]}"


def test_a_key_holder_still_gets_the_parse_and_routing_errors(server: ServerProcess) -> None:
    """The refusals above are authentication, not a server that stopped parsing or routing."""
    with server.client() as client:
        assert client.post("/execute", content=b"{", headers={"Content-Type": "application/json"}).json() == {
            "error": "Invalid JSON body"
        }
        assert client.get("/sessions", params={"tenant": "x"}).status_code == 400
        assert client.get("/nope").status_code == 404
        assert client.put("/execute").status_code == 405
    status, _ = _raw(
        server,
        f"POST /execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.key}\r\nContent-Length: {BODY_LIMIT + 1}\r\n\r\n",
    )
    assert status == 413


@pytest.mark.parametrize("path", ["/execute/ws", "/execute/ws?tenant=x", "/nope", "/execute", "/health"])
async def test_websockets_without_a_valid_key_are_refused_before_the_upgrade(server: ServerProcess, path: str) -> None:
    url = server.url.replace("http://", "ws://") + path
    for headers, status, error in CREDENTIALS:
        with pytest.raises(InvalidStatus) as refused:
            await connect(url, additional_headers=headers)
        response = refused.value.response
        assert (path, response.status_code, json.loads(response.body or b"")) == (path, status, {"error": error})


def test_health_shows_the_pool_and_sessions_to_a_key_holder_only(server: ServerProcess) -> None:
    for headers, _, _ in CREDENTIALS:
        reply = httpx.get(f"{server.url}/health", headers=headers)
        assert (reply.status_code, reply.json()) == (200, {"status": "ok", "version": __version__}), headers
    full = httpx.get(f"{server.url}/health", headers=server.headers).json()
    assert set(full) == {"status", "version", "pool", "sessions"}
    assert isinstance(full["pool"], list) and isinstance(full["sessions"], int)
    document = httpx.get(f"{server.url}/openapi.json").json()
    health = document["components"]["schemas"]["Health"]
    assert set(health["required"]) == {"version"} and {"pool", "sessions"} <= set(health["properties"])
