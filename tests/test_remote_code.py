"""`codeUrl`: the remote-code policy's checks, against the tests' own loopback HTTP server.

The fetcher refuses loopback addresses (there is no switch to allow them), so the tests that fetch
for real replace `is_public_address` with one that also admits 127.0.0.1, and only in this process;
every refusal test runs against the real predicate.
"""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli
from test_server_support import serve

from engine import remote_code
from engine.engine import DockerIsol8
from engine.errors import FetchFailed, Isol8Error, PolicyRefused
from engine.models import ExecutionRequest, Isol8Options, RemoteCodePolicy
from engine.remote_code import canonical_host, fetch_code
from isol8_tui.commands import run as run_command

CODE = b'print("fetched")\n'
LOOPBACK = ipaddress.ip_address("127.0.0.1")
PUBLIC = ipaddress.ip_address("93.184.215.14")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # a body without Content-Length runs to the end of the connection

    def do_GET(self) -> None:
        path = self.path
        if path == "/code.py":
            self._send(200, CODE)
        elif path == "/host":
            self._send(200, f"print({self.headers['Host']!r})".encode())
        elif path.startswith("/redirect?to="):
            self._send(302, b"", location=path.removeprefix("/redirect?to="))
        elif path == "/loop":
            self._send(302, b"", location="/loop")
        elif path == "/declared-big":
            self._send(200, b"x" * 5000)
        elif path == "/streamed-big":
            self._send(200, b"x" * 5000, length=False)
        elif path == "/nul":
            self._send(200, b"print(1)\0")
        elif path == "/latin1":
            self._send(200, b"print('\xe9')")
        elif path == "/slow":
            time.sleep(1.5)
            self._send(200, CODE)
        else:
            self._send(404, b"no such file")

    def _send(self, status: int, body: bytes, location: str | None = None, length: bool = True) -> None:
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stops reading (an oversize body, a timeout) is what the tests do


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def loopback_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """127.0.0.1 (the test server) passes the address check; every other address as usual."""
    real = remote_code.is_public_address
    monkeypatch.setattr(remote_code, "is_public_address", lambda address: address == LOOPBACK or real(address))


def resolve_to(monkeypatch: pytest.MonkeyPatch, *addresses: Any) -> list[str]:
    """Every name resolves to `addresses`; the names looked up, in order."""
    lookups: list[str] = []

    async def resolve(host: str, _port: int) -> list[Any]:
        lookups.append(host)
        return list(addresses)

    monkeypatch.setattr(remote_code, "resolve", resolve)
    return lookups


def policy(**changes: Any) -> RemoteCodePolicy:
    """Enabled, http allowed, and (unless given) no blocked names: the address checks stand alone."""
    values: dict[str, Any] = {"enabled": True, "allowed_schemes": ["http", "https"], "blocked_hosts": []}
    return RemoteCodePolicy(**{**values, **changes})


def request(url: str, **fields: Any) -> ExecutionRequest:
    return ExecutionRequest(code_url=url, allow_insecure_code_url=True, **fields)


async def fetched(url: str, rules: RemoteCodePolicy | None = None, **fields: Any) -> str:
    return await fetch_code(request(url, **fields), rules or policy())


# --- allowed ------------------------------------------------------------------------------------
@pytest.mark.usefixtures("loopback_is_public")
async def test_allowed_url_is_fetched(port: int) -> None:
    assert await fetched(f"http://127.0.0.1:{port}/code.py") == CODE.decode()


@pytest.mark.usefixtures("loopback_is_public")
async def test_the_connection_goes_to_the_checked_address_with_the_name_as_host(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name is resolved once; the connection uses that address (no second lookup a rebinding DNS
    server could answer differently), and the Host header still names the host."""
    lookups = resolve_to(monkeypatch, LOOPBACK)
    code = await fetched(f"http://Code.Example.:{port}/host")
    assert code == f"print('code.example:{port}')"
    assert lookups == ["code.example"]


@pytest.mark.usefixtures("loopback_is_public")
async def test_a_redirect_to_an_allowed_url_is_followed(port: int) -> None:
    assert await fetched(f"http://127.0.0.1:{port}/redirect?to=/code.py") == CODE.decode()


@pytest.mark.usefixtures("loopback_is_public")
@pytest.mark.parametrize("case", [str.lower, str.upper])
async def test_hash_match_in_any_case(port: int, case: Any) -> None:
    digest = case(hashlib.sha256(CODE).hexdigest())
    assert await fetched(f"http://127.0.0.1:{port}/code.py", code_hash=digest) == CODE.decode()


# --- refused by the policy ----------------------------------------------------------------------
async def test_disabled_by_default() -> None:
    with pytest.raises(PolicyRefused, match=r"^Remote code fetching is disabled\. Set remoteCode\.enabled=true"):
        await fetch_code(request("https://example.com/a.py"), RemoteCodePolicy())


async def test_http_needs_allow_insecure() -> None:
    with pytest.raises(PolicyRefused, match=r"^Insecure code URL blocked\. Use allowInsecureCodeUrl=true"):
        await fetch_code(ExecutionRequest(code_url="http://example.com/a.py"), policy())


@pytest.mark.parametrize(
    ("url", "schemes"),
    [("http://example.com/a.py", ["https"]), ("ftp://example.com/a.py", ["ftp"]), ("file:///etc/passwd", ["file"])],
)
async def test_scheme_must_be_allowed_and_fetchable(url: str, schemes: list[str]) -> None:
    with pytest.raises(PolicyRefused, match=r"^URL scheme not allowed: (http|ftp|file)$"):
        await fetched(url, policy(allowed_schemes=schemes))


@pytest.mark.parametrize(
    ("url", "rules"),
    [
        ("https://localhost/a.py", RemoteCodePolicy(enabled=True)),
        ("https://LOCALHOST./a.py", RemoteCodePolicy(enabled=True)),
        ("https://metadata.google.internal/a.py", RemoteCodePolicy(enabled=True)),
        ("https://evil.example/a.py", policy(allowed_hosts=[r"^raw\.githubusercontent\.com$"])),
        ("https://evil.example/a.py", policy(blocked_hosts=[r"EVIL"])),
    ],
)
async def test_blocked_host_by_name(url: str, rules: RemoteCodePolicy) -> None:
    with pytest.raises(PolicyRefused, match=r"^Blocked code URL host: "):
        await fetched(url, rules)


PRIVATE_SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "2130706433",  # decimal
    "0x7f000001",  # hex integer
    "0x7f.1",
    "0177.0.0.1",  # octal
    "0",
    "0.0.0.0",
    "[::1]",
    "[0:0:0:0:0:0:0:1]",
    "[::]",
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[::ffff:7f00:1]",
    "[::ffff:169.254.169.254]",
    "[64:ff9b::7f00:1]",  # NAT64
    "[2002:7f00:1::]",  # 6to4
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "[fd00:ec2::254]",  # AWS metadata over IPv6
    "100.64.0.1",  # CGNAT
    "100.100.100.200",  # Alibaba metadata, inside CGNAT
    "192.0.0.192",  # Oracle metadata
    "[fe80::1]",
    "224.0.0.1",
    "[ff02::1]",
    "255.255.255.255",
]


@pytest.mark.parametrize("blocked", ["default names", "no names"])
@pytest.mark.parametrize("host", PRIVATE_SPELLINGS)
async def test_private_addresses_are_refused_in_every_spelling(host: str, blocked: str, port: int) -> None:
    """With the default name patterns and without any: the address check alone refuses them all."""
    rules = policy(blocked_hosts=RemoteCodePolicy().blocked_hosts) if blocked == "default names" else policy()
    for scheme in ("http", "https"):
        with pytest.raises(PolicyRefused, match=r"^Blocked code URL host: "):
            await fetched(f"{scheme}://{host}:{port}/code.py", rules)


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("LocalHost.", "localhost")],
)
def test_ip_spellings_meet_the_name_patterns_as_dotted_quads(spelling: str, canonical: str) -> None:
    assert canonical_host(spelling) == canonical


async def test_a_name_that_resolves_to_a_private_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    resolve_to(monkeypatch, PUBLIC, LOOPBACK)  # any private address among the records refuses the host
    with pytest.raises(PolicyRefused, match=r"^Blocked code URL host: code\.example \(it resolves to 127\.0\.0\.1"):
        await fetched("https://code.example/a.py")


@pytest.mark.usefixtures("loopback_is_public")
@pytest.mark.parametrize(
    "target", ["http://10.0.0.1/a.py", "http://169.254.169.254/latest/meta-data/", "http://[::1]/"]
)
async def test_a_redirect_to_a_private_address_is_refused(port: int, target: str) -> None:
    with pytest.raises(PolicyRefused, match=r"^Blocked code URL host: "):
        await fetched(f"http://127.0.0.1:{port}/redirect?to={target}")


@pytest.mark.usefixtures("loopback_is_public")
async def test_a_redirect_is_checked_like_the_first_url(port: int) -> None:
    with pytest.raises(PolicyRefused, match=r"^Insecure code URL blocked"):
        await fetch_code(
            ExecutionRequest(
                code_url=f"http://127.0.0.1:{port}/redirect?to=http://example.com/", allow_insecure_code_url=False
            ),
            policy(),
        )
    with pytest.raises(PolicyRefused, match=r"^Blocked code URL host: evil\.example$"):
        await fetched(f"http://127.0.0.1:{port}/redirect?to=http://evil.example/", policy(blocked_hosts=["evil"]))


@pytest.mark.usefixtures("loopback_is_public")
async def test_redirects_are_bounded(port: int) -> None:
    with pytest.raises(FetchFailed, match=r"^Failed to fetch remote code: more than 5 redirects$"):
        await fetched(f"http://127.0.0.1:{port}/loop")


async def test_require_hash_needs_a_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    resolve_to(monkeypatch, PUBLIC)
    with pytest.raises(
        PolicyRefused, match=r"^Hash verification required: provide codeHash for remote code execution\.$"
    ):
        await fetched("https://code.example/a.py", policy(require_hash=True))


# --- fetched, then refused ----------------------------------------------------------------------
@pytest.mark.usefixtures("loopback_is_public")
@pytest.mark.parametrize(("path", "message"), [("declared-big", r": 5000 bytes$"), ("streamed-big", r"$")])
async def test_oversize_code_is_refused(port: int, path: str, message: str) -> None:
    with pytest.raises(PolicyRefused, match=r"^Remote code exceeds maxCodeSize \(1000 bytes\)" + message):
        await fetched(f"http://127.0.0.1:{port}/{path}", policy(max_code_size=1000))


@pytest.mark.usefixtures("loopback_is_public")
@pytest.mark.parametrize("path", ["nul", "latin1"])
async def test_binary_content_is_refused(port: int, path: str) -> None:
    with pytest.raises(Isol8Error, match=r"^Fetched code appears to be binary content"):
        await fetched(f"http://127.0.0.1:{port}/{path}")


@pytest.mark.usefixtures("loopback_is_public")
async def test_hash_mismatch_is_refused(port: int) -> None:
    with pytest.raises(Isol8Error, match=r"^Remote code hash mismatch"):
        await fetched(f"http://127.0.0.1:{port}/code.py", code_hash="0" * 64)


@pytest.mark.usefixtures("loopback_is_public")
async def test_timeout(port: int) -> None:
    with pytest.raises(FetchFailed, match=r"^Remote code fetch timed out after 300ms$"):
        await fetched(f"http://127.0.0.1:{port}/slow", policy(fetch_timeout_ms=300))


@pytest.mark.usefixtures("loopback_is_public")
@pytest.mark.parametrize("path", ["missing.py", "caf\u00e9 .py"])
async def test_http_error_status(port: int, path: str) -> None:
    with pytest.raises(FetchFailed, match=r"^Failed to fetch remote code: HTTP 404$"):
        await fetched(f"http://127.0.0.1:{port}/{path}")


async def test_unresolvable_host() -> None:
    with pytest.raises(FetchFailed, match=r"^Failed to resolve code URL host: no-such-host\.invalid$"):
        await fetched("https://no-such-host.invalid/a.py")


@pytest.mark.usefixtures("loopback_is_public")
async def test_connection_refused(port: int) -> None:
    with pytest.raises(FetchFailed, match=r"^Failed to fetch remote code: "):
        await fetched("http://127.0.0.1:1/a.py")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """An HTTPS server for code.example (self-signed): its port and its certificate."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=code.example"),
            *("-addext", "subjectAltName=DNS:code.example", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    server = Server(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], cert
    server.shutdown()
    server.server_close()


@pytest.mark.usefixtures("loopback_is_public")
async def test_https_to_the_pinned_address_verifies_the_name(
    tls: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS names the host (SNI, certificate check) while the connection goes to the checked address."""
    port, cert = tls

    resolve_to(monkeypatch, LOOPBACK)
    monkeypatch.setattr(remote_code.certifi, "where", lambda: str(cert))
    assert await fetched(f"https://code.example:{port}/code.py") == CODE.decode()
    with pytest.raises(FetchFailed, match=r"^Failed to fetch remote code: .*certificate verify failed"):
        await fetched(f"https://other.example:{port}/code.py")


@pytest.mark.parametrize(
    ("url", "runtime", "expected"),
    [
        ("https://x/a/b.py?raw=1", None, ("python", ".py")),
        ("https://x/tool.cjs", None, ("node", ".cjs")),
        ("https://x/script", "bash", ("bash", None)),
    ],
)
def test_the_cli_takes_the_runtime_from_the_url_path(url: str, runtime: str | None, expected: tuple[str, str]) -> None:
    [built] = run_command._requests((), None, (), runtime, (url, "AB", True))
    assert (built.runtime, built.file_extension) == expected
    assert (built.code_url, built.code_hash, built.allow_insecure_code_url, built.code) == (url, "AB", True, None)


# --- through the engine and the server ----------------------------------------------------------
@pytest.mark.docker
@pytest.mark.usefixtures("loopback_is_public", "docker_client")
async def test_the_engine_runs_fetched_code(port: int) -> None:
    options = Isol8Options(remote_code=policy())
    digest = hashlib.sha256(CODE).hexdigest()
    async with DockerIsol8(options) as engine:
        result = await engine.execute(request(f"http://127.0.0.1:{port}/code.py", code_hash=digest))
        assert (result.exit_code, result.stdout.strip()) == (0, "fetched")
        with pytest.raises(Isol8Error, match="hash mismatch"):
            await engine.execute(request(f"http://127.0.0.1:{port}/code.py", code_hash="1" * 64))


@pytest.mark.docker
@pytest.mark.usefixtures("docker_client")
def test_the_server_applies_its_policy_to_code_urls(tmp_path: Path, port: int) -> None:
    """The server fetches on its host: loopback is refused there, and a client cannot widen the policy."""
    config = {"remoteCode": {"enabled": True, "allowedSchemes": ["http", "https"], "maxCodeSize": 4096}}
    code_url = f"http://127.0.0.1:{port}/code.py"
    body = {"request": {"codeUrl": code_url, "allowInsecureCodeUrl": True, "runtime": "python"}}
    with serve(tmp_path, config) as server, server.client() as client:
        answers = [
            client.post("/execute", json=body),
            client.post("/execute", json={**body, "options": {"remoteCode": {"enabled": False}}}),
            client.post("/execute", json={**body, "options": {"remoteCode": {"maxCodeSize": 8192}}}),
        ]
        client_dir = tmp_path / "client"
        client_dir.mkdir()
        url = ("--url", code_url, "--allow-insecure-code-url")
        remote = run_cli("run", *url, "--host", server.url, "--key", server.key, cwd=client_dir)
    local = run_cli("run", *url, cwd=client_dir)  # no config here: remote code is off
    assert remote.returncode == 1 and remote.stderr.endswith("Blocked code URL host: 127.0.0.1\n"), remote.stderr
    assert (local.returncode, local.stderr.splitlines()[-1]) == (
        1,
        "[ERR] Remote code fetching is disabled. Set remoteCode.enabled=true to allow it.",
    )
    errors = [(answer.status_code, answer.json()["error"]) for answer in answers]
    assert errors[0] == (403, "Blocked code URL host: 127.0.0.1")
    assert errors[1] == (403, "Remote code fetching is disabled. Set remoteCode.enabled=true to allow it.")
    assert errors[2][0] == 403 and errors[2][1].startswith("remoteCode.maxCodeSize 8192 is above")
