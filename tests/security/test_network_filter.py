"""The filtered network's policy proxy under attack: every spelling of a host, every framing trick
and every malformed request the sandbox can send it, through real sandboxes on a Docker network
of the test's own. The sandbox code talks to the proxy (127.0.0.1:8118) with raw sockets, so no
client library normalises the attack away. One test server answers under several names (Docker
network aliases), serves every request it gets on a connection (as a shared virtual host would,
even after `Connection: close`) and echoes the request line, Host headers and body it received."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container
from helpers import run_cli

from engine.docker import DockerClient
from engine.engine import DockerIsol8
from engine.models import ExecutionRequest, ExecutionResult, NetworkFilter

pytestmark = pytest.mark.docker

SERVER = r"""
import json, socket, socketserver, sys, threading
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        conn, buffer = self.request, b""
        conn.settimeout(1.0)  # closes after a second without a request
        def more():
            nonlocal buffer
            data = conn.recv(65536)
            if not data:
                raise EOFError
            buffer += data
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    more()
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                line, *fields = head.decode("latin-1").split("\r\n")
                values = lambda name: [f.split(":", 1)[1].strip() for f in fields if f.split(":", 1)[0].strip().lower() == name]
                body = b""
                if any("chunked" in v.lower() for v in values("transfer-encoding")):
                    while True:
                        while b"\r\n" not in buffer:
                            more()
                        size_line, buffer = buffer.split(b"\r\n", 1)
                        size = int(size_line.split(b";")[0], 16)
                        while len(buffer) < size + 2:
                            more()
                        body, buffer = body + buffer[:size], buffer[size + 2:]
                        if not size:
                            break
                elif values("content-length"):
                    size = int(values("content-length")[0])
                    while len(buffer) < size:
                        more()
                    body, buffer = buffer[:size], buffer[size:]
                print(line, values("host"), flush=True)
                echo = json.dumps({"line": line, "host": values("host"), "body": body.decode("latin-1")}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(echo) + echo)
        except (EOFError, OSError, ValueError):
            pass
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = daemon_threads = True
for port in (8080, 8443, 2222):
    threading.Thread(target=Server(("0.0.0.0", port), Echo).serve_forever, daemon=True).start()
threading.Event().wait()
"""

CLIENT = r"""
import json, select, socket
from concurrent.futures import ThreadPoolExecutor
def exchange(item):
    data, pace = bytes.fromhex(item[0]), item[1]
    conn = socket.create_connection(("127.0.0.1", 8118), timeout=60)
    sent = 0
    try:
        if pace:  # one byte per `pace` seconds, until the proxy answers
            while sent < len(data) and not select.select([conn], [], [], pace)[0]:
                sent += conn.send(data[sent:sent + 1])
        else:
            conn.sendall(data)
            sent = len(data)
    except OSError:
        pass
    reply = b""
    try:
        while chunk := conn.recv(65536):
            reply += chunk
    except OSError:
        pass
    return {"sent": sent, "raw": reply.decode("latin-1")}
with ThreadPoolExecutor(16) as pool:
    print(json.dumps(list(pool.map(exchange, REQUESTS))))
"""

NAMES = ("allowed.test", "denied.test", "xn--bcher-kva.test", "xn--mnchen-3ya.test")  # bücher, münchen


@dataclass
class Upstream:
    network: str
    address: str  # the test server's, on `network`; private, like every container's

    @property
    def gateway(self) -> str:  # the Docker host on that network
        return self.address.rsplit(".", 1)[0] + ".1"


@dataclass
class Reply:
    sent: int
    raw: str

    @property
    def status(self) -> int | None:
        match = re.match(r"HTTP/1\.[01] (\d{3}) ", self.raw)
        return int(match[1]) if match else None

    @property
    def body(self) -> str:
        return self.raw.partition("\r\n\r\n")[2]

    @property
    def echo(self) -> dict:
        """What the test server received (the reply must be exactly one of its responses)."""
        assert self.raw.count("HTTP/1.1 200 OK") == 1, self.raw
        return json.loads(self.body)


def _start_server(client: docker.DockerClient, network: str, aliases: tuple[str, ...] = ()) -> Container:
    """The echo server on `network`, also known there by `aliases`; removed again if it cannot start."""
    container = client.containers.create(
        "isol8:python", entrypoint=["python3", "-c", SERVER], name=f"isol8-filter-{uuid.uuid4().hex[:8]}",
        user="0:0", network=network,
    )  # fmt: skip
    try:
        if aliases:
            client.networks.get(network).disconnect(container)
            client.networks.get(network).connect(container, aliases=list(aliases))
        container.start()
        probe = "import socket; socket.create_connection(('127.0.0.1', 2222), 1)"
        for _ in range(100):
            if container.exec_run(["python3", "-c", probe]).exit_code == 0:
                break
            time.sleep(0.1)
        container.reload()
    except Exception:
        container.remove(force=True)
        raise
    return container


@pytest.fixture(scope="module")
def upstream(docker_client: DockerClient) -> Iterator[Upstream]:
    client = docker.from_env()
    network = client.networks.create(f"isol8-filter-{uuid.uuid4().hex[:8]}", driver="bridge")
    container = None
    try:
        container = _start_server(client, network.name, NAMES)
        yield Upstream(network.name, container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"])
    finally:
        if container is not None:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        network.remove()


async def exchange(
    upstream: Upstream, requests: list[bytes | tuple[bytes, float]], timeout_ms: int = 60_000, **policy: object
) -> tuple[list[Reply], ExecutionResult]:
    """Send each raw request to the proxy on its own connection (all at once) from one sandbox."""
    items = [(r.hex(), 0) if isinstance(r, bytes) else (r[0].hex(), r[1]) for r in requests]
    engine = DockerIsol8(
        network="filtered", docker_network=upstream.network, network_filter=NetworkFilter(**policy), log_network=True
    )
    async with engine:
        result = await engine.execute(ExecutionRequest(code=f"REQUESTS = {items!r}\n{CLIENT}", timeout_ms=timeout_ms))
    assert result.exit_code == 0, result.stderr
    return [Reply(**item) for item in json.loads(result.stdout)], result


def get(host: str, host_header: str | None = None, port: int = 8080) -> bytes:
    head = f"GET http://{host}:{port}/ HTTP/1.1\r\n" + (f"Host: {host_header}\r\n" if host_header else "")
    return (head + "\r\n").encode()


def connect(authority: str, then: bytes = b"") -> bytes:
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode() + then


def spellings(address: str) -> list[str]:
    """Every other way the C resolver reads `address` (decimal, hex, octal, short forms, IPv4-mapped)."""
    a, b, c, d = (int(part) for part in address.split("."))
    number = int(ipaddress.IPv4Address(address))
    return [
        str(number),
        hex(number),
        hex(number).upper().replace("X", "x", 1),
        ".".join(hex(part) for part in (a, b, c, d)),
        ".".join(f"0{part:o}" for part in (a, b, c, d)),
        f"{a}.{b}.{(c << 8) | d}",
        f"{a}.{(b << 16) | (c << 8) | d}",
        f"0x{a:x}.{b}.0{c:o}.{d}",
        f"[::ffff:{address}]",
        f"[::FFFF:{(a << 8) | b:x}:{(c << 8) | d:x}]",
    ]


# --- 1. host names: one canonical spelling -------------------------------------------------------


async def test_no_spelling_of_a_blacklisted_name_gets_through(upstream: Upstream) -> None:
    names = [
        "denied.test.", "DENIED.TEST", "Denied.Test.", "denied\u3002test", "\uff44\uff45\uff4e\uff49\uff45\uff44.test",
        "den\u00adied.test",  # a soft hyphen, which IDNA maps to nothing
        "xn--bcher-kva.test", "b\u00fccher.test", "B\u00dcCHER.TEST.",  # Unicode pattern, punycode or Unicode name
        "m\u00fcnchen.test", "M\u00dcNCHEN.test",  # punycode pattern, Unicode name
    ]  # fmt: skip
    canonical = {"denied.test", "xn--bcher-kva.test", "xn--mnchen-3ya.test"}
    requests = [get(name, port=8080) for name in names] + [connect(f"{name}:8443") for name in names]
    replies, result = await exchange(
        upstream,
        [*requests, get("allowed.test", "allowed.test:8080")],
        whitelist=[".*"],
        blacklist=[r"denied\.test", "b\u00fccher\\.test", r"xn--mnchen-3ya\.test"],
        ports=[8443],
    )
    *blocked, allowed = replies
    for name, reply in zip(names + names, blocked, strict=True):
        assert reply.status == 403, (name, reply.raw)
        host = re.search(r"isol8: request to (\S+) blocked by network filter \(blacklist:", reply.body)
        assert host and host[1] in canonical, (name, reply.body)
    assert {e.host for e in result.network_logs if e.action == "BLOCK"} == canonical
    assert allowed.echo["host"] == ["allowed.test:8080"]  # the server answers the names it has


async def test_malformed_host_names_are_refused(upstream: Upstream) -> None:
    authorities = [
        "evil@allowed.test:8080", "allowed.test:8080@denied.test", "allowed%2etest:8080", "allowed.test%00:8080",
        "allowed..test:8080", "allowed.test..:8080", ".allowed.test:8080", "allowed.test\\@denied.test:8080",
        "[::ffff:127.0.0.1:8080", "[fe80::1%25eth0]:8080", ":8080", "allowed_test\u00ff\u200f:8080",
    ]  # fmt: skip
    requests = [f"GET http://{a}/ HTTP/1.1\r\n\r\n".encode() for a in authorities]
    requests += [f"CONNECT {a} HTTP/1.1\r\n\r\n".encode() for a in authorities]
    requests += [f"GET / HTTP/1.1\r\nHost: {a}\r\n\r\n".encode() for a in authorities]
    replies, _ = await exchange(upstream, requests, whitelist=[".*"], ports=[8080])
    for request, reply in zip(requests, replies, strict=True):
        assert reply.status == 400 and reply.body.startswith("isol8: "), (request, reply.raw)


# --- 2. IP literals: the dotted quad --------------------------------------------------------------


async def test_no_spelling_of_a_blacklisted_address_gets_through(upstream: Upstream) -> None:
    # `.*` names every host explicitly, so private addresses are reachable: only the blacklist decides.
    forms = spellings(upstream.address)
    requests = [get(form) for form in forms] + [connect(f"{form}:8443") for form in forms]
    replies, result = await exchange(
        upstream,
        [*requests, get("allowed.test", "allowed.test:8080")],
        whitelist=[".*"],
        blacklist=[re.escape(upstream.address)],
        ports=[8443],
    )
    *blocked, allowed = replies
    expected = (
        f"isol8: request to {upstream.address} blocked by network filter (blacklist:{re.escape(upstream.address)})\n"
    )
    for form, reply in zip(forms + forms, blocked, strict=True):
        assert (reply.status, reply.body) == (403, expected), (form, reply.raw)
    assert {e.host for e in result.network_logs if e.action == "BLOCK"} == {upstream.address}
    assert allowed.echo["host"] == ["allowed.test:8080"]  # the server answers under its name


async def test_every_spelling_of_a_whitelisted_address_is_that_address(upstream: Upstream) -> None:
    forms = spellings(upstream.address)
    replies, result = await exchange(upstream, [get(form) for form in forms], whitelist=[re.escape(upstream.address)])
    for form, reply in zip(forms, replies, strict=True):
        assert reply.echo["host"] == [f"{upstream.address}:8080"], (form, reply.raw)  # forwarded canonically
    assert {(e.host, e.action) for e in result.network_logs} == {(upstream.address, "ALLOW")}


# --- 3. plain HTTP: the Host header and the body framing ------------------------------------------


async def test_host_header_must_name_the_decided_host(upstream: Upstream) -> None:
    refused = [
        get("allowed.test", "denied.test:8080"),
        get("allowed.test", "denied.test"),
        get("allowed.test", "allowed.test:9999"),
        get("allowed.test", "allowed.test"),  # port 80, not 8080
        get("allowed.test", "allowed.test:8080@denied.test"),
        b"GET http://allowed.test:8080/ HTTP/1.1\r\nHost: allowed.test:8080\r\nHost: denied.test:8080\r\n\r\n",
        b"GET http://allowed.test:8080/ HTTP/1.1\r\nHost: allowed.test:8080\r\nhost: allowed.test:8080\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: allowed.test:8080\r\nHost: denied.test:8080\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # origin form without a Host: no host at all
    ]
    accepted = [
        get("allowed.test", "ALLOWED.test.:8080"),
        get("allowed.test"),  # no Host header: the proxy adds it
        b"GET http://allowed.test:8080/x HTTP/1.0\r\n\r\n",
        b"GET /y HTTP/1.1\r\nHost: Allowed.Test:8080\r\n\r\n",
    ]
    replies, _ = await exchange(upstream, refused + accepted, whitelist=[r"allowed\.test"])
    for request, reply in zip(refused, replies[: len(refused)], strict=True):
        assert reply.status == 400 and reply.body.startswith("isol8: "), (request, reply.raw)
    for request, reply in zip(accepted, replies[len(refused) :], strict=True):
        assert reply.echo["host"] == ["allowed.test:8080"], (request, reply.raw)


async def test_nothing_after_the_body_reaches_the_server(upstream: Upstream) -> None:
    second = b"GET http://allowed.test:8080/second HTTP/1.1\r\nHost: denied.test:8080\r\n\r\n"
    smuggled = b"GET /third HTTP/1.1\r\nHost: denied.test\r\n\r\n"
    requests = [
        get("allowed.test") + second,  # a pipelined second request
        get("allowed.test") + smuggled,
        b"POST http://allowed.test:8080/ HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello" + smuggled,
        b"POST http://allowed.test:8080/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=x\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n" + smuggled,
        b"POST http://allowed.test:8080/ HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello" + second,
    ]
    replies, _ = await exchange(upstream, requests, whitelist=[r"allowed\.test"])
    bodies = ["", "", "hello", "hello world", "hello"]
    for request, reply, body in zip(requests, replies, bodies, strict=True):
        echo = reply.echo  # exactly one response: the server saw one request
        assert (echo["line"].split(" ")[1], echo["host"], echo["body"]) == ("/", ["allowed.test:8080"], body), request
        assert "denied" not in reply.raw, (request, reply.raw)


async def test_ambiguous_body_framing_is_refused(upstream: Upstream) -> None:
    smuggled = b"GET /x HTTP/1.1\r\nHost: denied.test\r\n\r\n"
    post = b"POST http://allowed.test:8080/ HTTP/1.1\r\n"
    requests = [
        post + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled,
        post + b"Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n" + smuggled,
        post + b"Content-Length: 5\r\nContent-Length: 44\r\n\r\nhello" + smuggled,
        post + b"Content-Length: 5, 6\r\n\r\nhello!",
        post + b"Content-Length: -5\r\n\r\n",
        post + b"Content-Length: 0x5\r\n\r\nhello",
        post + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        post + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        post + b"Transfer-Encoding: chunked\r\n\r\n-1\r\n\r\n",
        post + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        post + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        post + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    ]
    replies, _ = await exchange(upstream, requests, whitelist=[r"allowed\.test"])
    for request, reply in zip(requests, replies, strict=True):
        assert reply.status == 400 and reply.body.startswith("isol8: "), (request, reply.raw)


# --- 4. CONNECT ports ------------------------------------------------------------------------------


async def test_connect_reaches_only_443_and_the_allowed_ports(upstream: Upstream) -> None:
    inner = b"GET / HTTP/1.1\r\nHost: allowed.test:8443\r\n\r\n"
    blocked = ["allowed.test:2222", "allowed.test:8080", "allowed.test:22", f"{upstream.address}:2222"]
    requests = [connect(a) for a in blocked] + [connect("allowed.test:8443", inner), get("allowed.test", port=2222)]
    replies, result = await exchange(upstream, requests, whitelist=[".*"], ports=[8443])
    *refused, tunnel, plain = replies
    for authority, reply in zip(blocked, refused, strict=True):
        port = authority.rsplit(":", 1)[1]
        assert reply.status == 403, (authority, reply.raw)
        assert reply.body == (
            f"isol8: CONNECT to {authority} blocked by network filter (port {port} not allowed; allowed: 443, 8443)\n"
        )
    assert tunnel.raw.startswith("HTTP/1.1 200 Connection Established\r\n\r\nHTTP/1.1 200 OK")
    assert plain.echo["host"] == ["allowed.test:2222"]  # plain HTTP keeps any port
    rules = {(e.port, e.rule) for e in result.network_logs if e.method == "CONNECT"}
    assert rules == {(2222, "port 2222 not allowed"), (8080, "port 8080 not allowed"), (22, "port 22 not allowed"),
                     (8443, "whitelist:.*")}  # fmt: skip


@pytest.fixture
def bridge_server(docker_client: DockerClient) -> Iterator[str]:
    """A test server on Docker's default bridge, where `isol8 run` puts its containers."""
    client = docker.from_env()
    container = _start_server(client, "bridge")
    try:
        yield container.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    finally:
        container.remove(force=True)


def test_cli_allow_port_adds_to_the_config_ports(bridge_server: str, tmp_path: Path) -> None:
    (tmp_path / "isol8.config.json").write_text(json.dumps({"network": {"ports": [2222]}}))
    items = [(connect(f"{bridge_server}:{port}").hex(), 0) for port in (2222, 8443, 8080)]
    result = run_cli(
        "run", "--net", "filtered", "--allow", re.escape(bridge_server), "--allow-port", "8443",
        "-e", f"REQUESTS = {items!r}\n{CLIENT}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    replies = [Reply(**item) for item in json.loads(result.stdout)]
    assert [reply.status for reply in replies] == [200, 200, 403], result.stdout
    assert "(port 8080 not allowed; allowed: 443, 2222, 8443)" in replies[2].body


# --- 5. whitelistReachesPrivate -------------------------------------------------------------------


async def test_no_whitelist_reaches_private_addresses_when_turned_off(upstream: Upstream) -> None:
    targets = ["allowed.test", upstream.address, spellings(upstream.address)[0], upstream.gateway, "169.254.169.254"]
    requests = [get(t) for t in targets] + [connect(f"{t}:443") for t in targets]
    whitelists = [[".*"], [r"allowed\.test", re.escape(upstream.address), re.escape(upstream.gateway), r"169\..*"]]
    for whitelist in whitelists:
        replies, _ = await exchange(upstream, requests, whitelist=whitelist, whitelist_reaches_private=False)
        for request, reply in zip(requests, replies, strict=True):
            assert reply.status == 403 and "is not a public address" in reply.body, (request, reply.raw)
    replies, _ = await exchange(upstream, [get("allowed.test")], whitelist=[r"allowed\.test"])
    assert replies[0].echo["host"] == ["allowed.test:8080"]  # the default (true) still lets it through


# --- 6. malformed requests and slow clients ---------------------------------------------------------


async def test_malformed_requests_get_a_400_and_the_proxy_keeps_serving(upstream: Upstream) -> None:
    bad = [
        *(connect(f"allowed.test:{port}") for port in ("abc", "0", "99999", "-1", "", "+443", "44 3", "0x1bb")),
        b"CONNECT allowed.test HTTP/1.1\r\n\r\n",
        *(f"GET http://allowed.test:{port}/ HTTP/1.1\r\n\r\n".encode() for port in ("abc", "0", "99999", "-1", "")),
        b"GET\r\n\r\n",
        b"GET http://allowed.test:8080/ HTTP/1.1 extra\r\n\r\n",
        b"GET  http://allowed.test:8080/ HTTP/1.1\r\n\r\n",
        b"GET http://allowed.test:8080/ HTTP/2.0\r\n\r\n",
        b"GET http://allowed.test:8080/\x01 HTTP/1.1\r\n\r\n",
        b"G(E)T http://allowed.test:8080/ HTTP/1.1\r\n\r\n",
        b"GET https://allowed.test:8080/ HTTP/1.1\r\n\r\n",
        b"GET ftp://allowed.test/ HTTP/1.1\r\n\r\n",
        b"\r\nGET http://allowed.test:8080/ HTTP/1.1\r\n\r\n",
        b"GET http://allowed.test:8080/\xff HTTP/1.1\r\n\r\n",
        b"GET http://allowed.test:8080/\xc3\xa9 HTTP/1.1\r\n\r\n",
        b"GET http://allowed.test:8080/ HTTP/1.1\r\nX-Name: \xe9\r\n\r\n",
        b"GET http://allowed.test:8080/ HTTP/1.1\r\nX-Name: \xc3\xa9\r\n\r\n",
        b"GET http://allowed.test:8080/ HTTP/1.1\r\nX-\xc3\xa9: 1\r\n\r\n",
        b"GET http://allowed.test:8080/ HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET http://allowed.test:8080/ HTTP/1.1\r\nX-Name : 1\r\n\r\n",
        b"GET http://allowed.test:8080/ HTTP/1.1\r\nX-Name: 1\r\n folded\r\n\r\n",
        b"GET http://allowed.test:8080/ HTTP/1.1\r\nX-Name: 1\nHost: denied.test\r\n\r\n",
        b"GET http://allowed.test:8080/ HTTP/1.1\r\nX-Name: 1\rHost: denied.test\r\n\r\n",
        b"GET http://allowed.test:8080/ HTTP/1.1\r\nX-Name: \x00\r\n\r\n",
    ]
    huge = b"GET http://allowed.test:8080/ HTTP/1.1\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n"
    replies, _ = await exchange(upstream, [*bad, huge, get("allowed.test")], whitelist=[".*"], ports=[8443])
    *refused, too_big, still_fine = replies
    for request, reply in zip(bad, refused, strict=True):
        assert reply.status == 400 and reply.body.startswith("isol8: "), (request, reply.raw)
    assert too_big.status == 431, too_big.raw
    assert still_fine.echo["host"] == ["allowed.test:8080"]


async def test_a_slow_request_head_is_cut_off(upstream: Upstream) -> None:
    head = get("allowed.test", "allowed.test:8080")[:-2] + b"X-Padding: " + b"p" * 40 + b"\r\n\r\n"
    requests = [
        (head, 1.0),  # one byte a second: a deadline per read would never fire
        (head, 0.2),
        (b"", 1.0),  # nothing at all
    ]
    replies, result = await exchange(upstream, requests, timeout_ms=150_000, whitelist=[".*"])
    for (data, _), reply in zip(requests, replies, strict=True):
        assert reply.status == 408, reply.raw
        assert reply.sent < len(data) or not data, reply.sent  # cut off before the head was complete
    assert [e.status for e in result.network_logs] == [408, 408, 408]
