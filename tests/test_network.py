"""Network modes on the real daemon. The only servers reached are the test's own (on a Docker
network it creates) and, for one install, the real package registry the machine is allowed to use."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from helpers import run_cli

from engine.docker import DockerClient
from engine.engine import DockerIsol8
from engine.errors import Isol8Error
from engine.models import ExecutionRequest, NetworkFilter

pytestmark = pytest.mark.docker

SERVER = """
import http.server, ssl, threading
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello {self.path}".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
plain = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H)
tls = http.server.ThreadingHTTPServer(("0.0.0.0", 8443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain("/tmp/cert.pem", "/tmp/key.pem")
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
threading.Thread(target=tls.serve_forever, daemon=True).start()
plain.serve_forever()
"""


@dataclass
class Web:
    network: str
    name: str  # resolvable by Docker's DNS on `network`
    other: str  # a second server nobody whitelists
    address: str


def _server(client: docker.DockerClient, network: str, name: str, certs: Path) -> str:
    container = client.containers.run(
        "isol8:python",
        entrypoint=["python3", "-c", SERVER],
        name=name,
        network=network,
        detach=True,
        user="0:0",
        volumes={str(certs): {"bind": "/tmp", "mode": "ro"}},
    )
    for _ in range(100):
        container.reload()
        logs_ok = container.status == "running"
        if (
            logs_ok
            and container.exec_run(
                ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 8443), 1)"]
            ).exit_code
            == 0
        ):
            break
        time.sleep(0.1)
    return container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]


@pytest.fixture(scope="module")
def web(docker_client: DockerClient) -> Iterator[Web]:
    client = docker.from_env()
    suffix = uuid.uuid4().hex[:8]
    network = client.networks.create(f"isol8-test-{suffix}", driver="bridge")
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=web",
             "-keyout", str(certs / "key.pem"), "-out", str(certs / "cert.pem")],
            check=True, capture_output=True,
        )  # fmt: skip
        certs.chmod(0o755)
        for pem in certs.iterdir():
            pem.chmod(0o644)
        names = [f"web-{suffix}", f"other-{suffix}"]
        try:
            address = _server(client, network.name, names[0], certs)
            _server(client, network.name, names[1], certs)
            yield Web(network.name, names[0], names[1], address)
        finally:
            for name in names:
                with contextlib.suppress(docker.errors.NotFound):
                    client.containers.get(name).remove(force=True)
            network.remove()


def filtered(
    web: Web, whitelist: list[str] | None = None, blacklist: list[str] | None = None, **kw: object
) -> DockerIsol8:
    return DockerIsol8(
        network="filtered",
        docker_network=web.network,
        # The test servers' TLS port: CONNECT reaches 443 and the filter's ports only.
        network_filter=NetworkFilter(whitelist=whitelist or [], blacklist=blacklist or [], ports=[8443]),
        **kw,
    )


FETCH = (
    "import ssl, urllib.request, urllib.error, sys\nctx = ssl._create_unverified_context()\n"
    "for url in sys.argv[1:] or URLS:\n"
    "    try:\n        r = urllib.request.urlopen(url, timeout=10, context=ctx)\n"
    "        print(r.status, (r.read().decode().splitlines() or [''])[0])\n"
    "    except urllib.error.HTTPError as e:\n        print(e.code, e.read().decode().strip())\n"
    "    except OSError as e:\n        print('error', e)\n"
)


def fetch_code(*urls: str) -> str:
    return f"URLS = {list(urls)!r}\n" + FETCH


async def test_allowed_host_over_http_and_https(web: Web) -> None:
    async with filtered(web, [web.name]) as engine:
        result = await engine.execute(
            ExecutionRequest(code=fetch_code(f"http://{web.name}:8080/a", f"https://{web.name}:8443/b"))
        )
    assert result.stdout == "200 hello /a\n200 hello /b\n", result.stderr


async def test_not_whitelisted_host_is_403_over_http_and_https(web: Web) -> None:
    async with filtered(web, [web.name]) as engine:
        result = await engine.execute(
            ExecutionRequest(code=fetch_code(f"http://{web.other}:8080/", f"https://{web.other}:8443/"))
        )
    lines = result.stdout.splitlines()
    assert lines[0] == f"403 isol8: request to {web.other} blocked by network filter (not in whitelist)"
    assert lines[1].startswith("error") and "403" in lines[1]  # urllib reports a refused CONNECT as an error


async def test_blacklist_wins_and_matches_the_whole_name(web: Web) -> None:
    async with filtered(web, [r".*"], [web.other, "web"]) as engine:
        result = await engine.execute(
            ExecutionRequest(code=fetch_code(f"http://{web.other}:8080/", f"http://{web.name}:8080/"))
        )
    assert result.stdout.splitlines()[0].startswith(
        f"403 isol8: request to {web.other} blocked by network filter (blacklist:"
    )
    # "web" does not match "web-xxxx" as a whole name, and ".*" names it explicitly: allowed
    assert result.stdout.splitlines()[1] == "200 hello /"


async def test_private_addresses_need_an_explicit_whitelist(web: Web) -> None:
    async with filtered(web) as engine:  # empty whitelist: the internet, but not private addresses
        result = await engine.execute(
            ExecutionRequest(code=fetch_code(f"http://{web.name}:8080/", "http://169.254.169.254/latest/meta-data/"))
        )
    first, second = result.stdout.splitlines()
    assert first.startswith(f"403 isol8: request to {web.name} blocked:") and "not a public address" in first
    assert second.startswith("403 isol8: request to 169.254.169.254 blocked:")


RAW_PY = """
import socket
def attempt(name, fn):
    try:
        fn(); print(name, 'open')
    except OSError as e:
        print(name, 'blocked')
attempt('tcp', lambda: socket.create_connection((ADDRESS, 8080), timeout=3))
attempt('udp', lambda: (s := socket.socket(socket.AF_INET, socket.SOCK_DGRAM), s.settimeout(3), s.sendto(b'x', ('8.8.8.8', 53)), s.recvfrom(1)))
attempt('dns', lambda: socket.getaddrinfo('pypi.org', 443))
attempt('ipv6', lambda: socket.create_connection(('2606:4700:4700::1111', 443), timeout=3))
attempt('gateway', lambda: socket.create_connection((GATEWAY, 2375), timeout=3))
"""

RAW_NODE = """
import net from 'node:net'; import dgram from 'node:dgram'; import dns from 'node:dns/promises';
const tcp = (host, port) => new Promise(r => { const s = net.connect({host, port, timeout: 3000}, () => { s.destroy(); r('open') }); s.on('error', () => r('blocked')); s.on('timeout', () => { s.destroy(); r('blocked') }) });
console.log('tcp', await tcp(ADDRESS, 8080));
console.log('udp', await new Promise(r => { const s = dgram.createSocket('udp4'); s.on('error', () => { s.close(); r('blocked') }); s.on('message', () => r('open')); s.send('x', 53, '8.8.8.8'); setTimeout(() => { s.close(); r('blocked') }, 3000) }));
console.log('dns', await dns.lookup('pypi.org').then(() => 'open', () => 'blocked'));
console.log('ipv6', await tcp('2606:4700:4700::1111', 443));
console.log('gateway', await tcp(GATEWAY, 2375));
"""


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_nothing_bypasses_the_proxy(web: Web, runtime: str) -> None:
    gateway = web.address.rsplit(".", 1)[0] + ".1"
    code = (
        (RAW_PY if runtime == "python" else RAW_NODE)
        .replace("ADDRESS", repr(web.address))
        .replace("GATEWAY", repr(gateway))
    )
    started = time.monotonic()
    async with filtered(web, [r".*"]) as engine:
        result = await engine.execute(ExecutionRequest(code=code, runtime=runtime, timeout_ms=30_000))
    assert result.stdout == "tcp blocked\nudp blocked\ndns blocked\nipv6 blocked\ngateway blocked\n", result.stderr
    assert time.monotonic() - started < 15  # refused fast, nothing hangs on a dropped packet


@pytest.mark.parametrize(
    ("runtime", "code"),
    [
        ("node", "const r = await fetch(URL); console.log(r.status, await r.text())"),
        (
            "node",
            "import http from 'node:http'; http.get(URL, r => { let b=''; r.on('data', d => b += d); r.on('end', () => console.log(r.statusCode, b)) })",
        ),
        ("bash", 'curl -sS -w " %{http_code}" "$URL" | awk \'{print $3, $1, $2}\''),
        ("bun", "const r = await fetch(URL); console.log(r.status, await r.text())"),
        ("deno", "const r = await fetch(URL); console.log(r.status, await r.text())"),
    ],
)
async def test_clients_use_the_proxy_without_code_changes(web: Web, runtime: str, code: str) -> None:
    url = f"http://{web.name}:8080/x"
    async with filtered(web, [web.name]) as engine:
        source = code.replace("URL", repr(url)) if runtime != "bash" else code
        result = await engine.execute(ExecutionRequest(code=source, runtime=runtime, env={"URL": url}))
    assert result.stdout == "200 hello /x\n", result.stderr


async def test_logs_list_exactly_their_own_execution(web: Web) -> None:
    async with filtered(web, [web.name], log_network=True, mode="persistent") as engine:
        first = await engine.execute(
            ExecutionRequest(code=fetch_code(f"http://{web.name}:8080/one", f"https://{web.other}:8443/"))
        )
        second = await engine.execute(ExecutionRequest(code=fetch_code(f"https://{web.name}:8443/two")))
    assert [(e.method, e.host, e.path, e.action) for e in first.network_logs] == [
        ("GET", web.name, "/one", "ALLOW"),
        ("CONNECT", web.other, None, "BLOCK"),
    ]
    allowed, blocked = first.network_logs
    assert (allowed.port, allowed.status, allowed.rule) == (8080, 200, f"whitelist:{web.name}")
    assert allowed.bytes_in > 0 and allowed.bytes_out > 0 and allowed.duration_ms > 0
    assert (blocked.port, blocked.status, blocked.rule) == (8443, 403, "not in whitelist")
    assert [e.type for e in first.security_events] == ["network_blocked"]
    assert [(e.method, e.host, e.port, e.status) for e in second.network_logs] == [("CONNECT", web.name, 8443, 200)]
    assert second.network_logs[0].bytes_in > 0 and second.network_logs[0].duration_ms > 0
    assert second.security_events is None


async def test_plain_http_requests_are_logged_with_their_headers_and_credentials_masked(web: Web) -> None:
    code = f"""
import urllib.request
request = urllib.request.Request("http://{web.name}:8080/h", headers={{
    "Authorization": "Bearer abc", "X-Api-Key": "k1", "Cookie": "s=1", "X-Trace": "t-42",
    "X-Note": "SECRET-VALUE"}})
print(urllib.request.urlopen(request).status)
"""
    async with filtered(web, [web.name], log_network=True) as engine:
        result = await engine.execute(ExecutionRequest(code=code, secrets={"NOTE": "SECRET-VALUE"}))
    assert result.stdout == "200\n", result.stderr
    (entry,) = result.network_logs
    headers = dict(entry.headers or [])
    assert headers["Authorization"] == headers["X-Api-Key"] == headers["Cookie"] == "[masked]"
    assert headers["X-Trace"] == "t-42" and headers["X-Note"] == "***"  # the run's secrets too
    assert "abc" not in result.model_dump_json() and "SECRET-VALUE" not in result.model_dump_json()


async def test_node_plain_http_fetch_is_logged_as_the_request_it_is(web: Web) -> None:
    code = (
        f"const r = await fetch('http://{web.name}:8080/n', {{headers: {{'x-from': 'node'}}}}); console.log(r.status)"
    )
    async with filtered(web, [web.name], log_network=True) as engine:
        result = await engine.execute(ExecutionRequest(code=code, runtime="node", file_extension=".mjs"))
    assert result.stdout == "200\n", result.stderr
    assert [(e.method, e.path) for e in result.network_logs] == [("GET", "/n")]
    assert ["x-from", "node"] in [list(pair) for pair in result.network_logs[0].headers or []]


async def test_stream_carries_network_events_as_they_happen(web: Web) -> None:
    async with filtered(web, [web.name], log_network=True) as engine:
        code = fetch_code(f"http://{web.name}:8080/live", f"http://{web.other}:8080/")
        events = [e async for e in engine.execute_stream(ExecutionRequest(code=code))]
    network = [e.entry for e in events if e.type == "network"]
    assert [(n.host, n.action) for n in network] == [(web.name, "ALLOW"), (web.other, "BLOCK")]
    assert events[-1].type == "exit"


async def test_without_log_network_there_are_no_logs(web: Web) -> None:
    async with filtered(web, [web.name]) as engine:
        result = await engine.execute(ExecutionRequest(code=fetch_code(f"http://{web.name}:8080/")))
        events = [
            e.type async for e in engine.execute_stream(ExecutionRequest(code=fetch_code(f"http://{web.name}:8080/")))
        ]
    assert result.network_logs is None and "network" not in events


async def test_pip_install_through_the_filtered_network(docker_client: DockerClient) -> None:
    hosts = NetworkFilter(whitelist=[r"pypi\.org", r"files\.pythonhosted\.org"])
    async with DockerIsol8(network="filtered", network_filter=hosts, log_network=True) as engine:
        result = await engine.execute(
            ExecutionRequest(code="import six; print(six.__name__)", install_packages=["six"], timeout_ms=120_000)
        )
    assert result.stdout == "six\n", result.stderr


@pytest.fixture(scope="module")
def broken_images(docker_client: DockerClient) -> Iterator[dict[str, str]]:
    client = docker.from_env()
    tags = {
        "iptables": ("isol8-test-broken-iptables", "RUN ln -sf /bin/false /usr/sbin/iptables"),
        "proxy": ("isol8-test-broken-proxy", "RUN printf 'import time\\ntime.sleep(60)\\n' > /opt/isol8/proxy.py"),
    }
    for tag, step in tags.values():
        client.images.build(
            fileobj=__import__("io").BytesIO(f"FROM isol8:python\nUSER root\n{step}\n".encode()), tag=tag, rm=True
        )
    yield {key: tag for key, (tag, _) in tags.items()}
    for tag, _ in tags.values():
        client.images.remove(tag, force=True)


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("iptables", r"^Failed to set up iptables rules \(exit code 1\)"),
        ("proxy", r"^Proxy failed to start within timeout$"),
    ],
)
async def test_network_setup_failure_stops_the_run(broken_images: dict[str, str], which: str, message: str) -> None:
    async with DockerIsol8(network="filtered", image=broken_images[which]) as engine:
        with pytest.raises(Isol8Error, match=message):
            await engine.execute(ExecutionRequest(code="print('must not run')"))


def test_cli_filtered_flags_and_log_table(web: Web) -> None:
    # The CLI cannot join the test's Docker network, so it checks the registry it may use.
    result = run_cli(
        "run", "--net", "filtered", "--allow", r"pypi\.org", "--deny", r"files\..*", "--log-network",
        "-e", fetch_code("https://pypi.org/simple/six/", "https://files.pythonhosted.org/"),
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[0].startswith("200 ") and lines[1].startswith("error")
    assert "Network log" in result.stderr and "pypi.org:443" in result.stderr and "blacklist:files" in result.stderr


def test_cli_config_network_defaults_apply(tmp_path: Path) -> None:
    (tmp_path / "isol8.config.json").write_text(
        '{"defaults": {"network": "filtered"}, "network": {"whitelist": ["pypi\\\\.org"]}}'
    )
    result = run_cli(
        "run", "-e", fetch_code("https://pypi.org/simple/six/", "https://registry.npmjs.org/"), cwd=tmp_path
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("200 ") and lines[1].startswith("error"), result.stderr


def test_cli_host_mode_warns_once() -> None:
    result = run_cli("run", "--net", "host", "-e", "print(1)")
    assert result.stdout == "1\n" and result.stderr.count("[WARN]") == 1 and "host" in result.stderr


async def test_a_live_session_allows_a_host_without_a_restart(web: Web) -> None:
    """The inspector's "allow this host": the session's proxy takes the new list at once, even in
    the middle of a run; the container (and its files) stay."""
    code = """
import sys, time, urllib.request, urllib.error
for attempt in range(100):
    try:
        print(urllib.request.urlopen(sys.argv[1] if len(sys.argv) > 1 else URL).status, attempt > 0, flush=True)
        break
    except urllib.error.HTTPError as e:
        if attempt == 0:
            print("blocked", e.code, flush=True)
        time.sleep(0.1)
""".replace("URL", repr(f"http://{web.other}:8080/x"))
    async with filtered(web, [web.name], mode="persistent", log_network=True) as session:
        await session.execute(ExecutionRequest(code="open('/sandbox/kept', 'w').write('1')"))
        before = await session.execute(ExecutionRequest(code=fetch_code(f"http://{web.other}:8080/x")))
        assert before.stdout.startswith("403"), before.stdout
        stream = session.execute_stream(ExecutionRequest(code=code))
        seen = ""
        async for event in stream:
            seen += event.data if event.type == "stdout" else ""
            if "blocked 403" in seen and "True" not in seen:
                await session.set_network_filter(NetworkFilter(whitelist=[web.name, web.other], ports=[8443]))
        assert "blocked 403" in seen and "200 True" in seen, seen
        after = await session.execute(ExecutionRequest(code="print(open('/sandbox/kept').read())"))
        assert after.stdout == "1\n"
        await session.set_network_filter(NetworkFilter(whitelist=[web.name], ports=[8443]))
        again = await session.execute(ExecutionRequest(code=fetch_code(f"http://{web.other}:8080/x")))
        assert again.stdout.startswith("403"), again.stdout
    async with DockerIsol8(network="none") as offline:
        with pytest.raises(Isol8Error, match='apply to network "filtered" only'):
            await offline.set_network_filter(NetworkFilter(whitelist=["x"]))
