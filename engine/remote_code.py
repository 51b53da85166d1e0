"""Fetching `code_url` on the engine's host: the checks of the reference's code fetcher, in its order
and with its messages, without its holes.

The fetch runs on the machine that runs the engine (a server, in remote mode), so a URL is a way to
make that machine send requests: the `remoteCode` policy decides what it may reach. In order:

1. the policy is enabled;
2. the scheme is https, or http with `allowInsecureCodeUrl`, and in `allowedSchemes`;
3. the host, canonical (lower case, no trailing dot, an IPv4 address in any spelling the resolver
   takes, such as `2130706433`, `0x7f.1` or `0177.0.0.1`, as its dotted quad), matches
   `allowedHosts` (when set) and no `blockedHosts` pattern;
4. it resolves, and every address it resolves to is public: no private, loopback, link-local,
   unspecified, reserved, multicast, shared (CGNAT 100.64/10) or metadata address, and no IPv6
   address that embeds an IPv4 one (IPv4-mapped, 6to4, Teredo, NAT64);
5. a hash is given when `requireHash` says so;
6. the GET, with `fetchTimeoutMs` for everything from the first resolution to the last byte;
   redirects (at most MAX_REDIRECTS) are followed here, each hop checked from step 2 on;
7. at most `maxCodeSize` bytes: a larger Content-Length is refused before the body is read, and
   the body is counted while it streams;
8. strict UTF-8 without NUL bytes;
9. the SHA-256 of the bytes equals `codeHash` (any case).

The connection goes to the address that was checked (`_PinnedBackend`), never to a second lookup of
the name, so a name that resolves to a public address once and to 127.0.0.1 the next time (DNS
rebinding) reaches nothing private; the Host header, TLS SNI and certificate check still use the name.

There is no switch, in the policy or anywhere else, that lets loopback or private addresses
through: tests fetch from their own loopback servers by replacing `is_public_address` (and
`resolve`, to give a name a loopback address) with monkeypatch, in their own process only.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, quote, urljoin, urlsplit

import certifi
import httpcore

from engine.errors import FetchFailed, Isol8Error, PolicyRefused

if TYPE_CHECKING:
    from collections.abc import Iterable

    from engine.models import ExecutionRequest, RemoteCodePolicy

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
FETCHABLE_SCHEMES = {"http": 80, "https": 443}
PRINTABLE_ASCII = "".join(map(chr, range(0x21, 0x7F)))
EMBEDS_IPV4 = ipaddress.ip_network("64:ff9b::/96")  # NAT64 (6to4 and Teredo have their own tests)
NOT_PUBLIC = tuple(map(ipaddress.ip_network, ("100.64.0.0/10", "192.0.0.0/24", "198.18.0.0/15")))
"""Not routable on the internet whatever this Python's `is_global` says (CGNAT, where Alibaba's
metadata lives; IETF assignments, where Oracle's does; benchmarking)."""


async def fetch_code(request: ExecutionRequest, policy: RemoteCodePolicy) -> str:
    """The text at `request.code_url`, or PolicyRefused (the policy forbids it), FetchFailed (it
    could not be fetched) or Isol8Error (its content is not code or not the expected code)."""
    assert request.code_url is not None
    if not policy.enabled:
        raise PolicyRefused("Remote code fetching is disabled. Set remoteCode.enabled=true to allow it.")
    url = request.code_url
    try:
        async with asyncio.timeout(policy.fetch_timeout_ms / 1000):
            target = await _checked(url, request, policy)
            if policy.require_hash and not request.code_hash:
                raise PolicyRefused("Hash verification required: provide codeHash for remote code execution.")
            for _ in range(MAX_REDIRECTS + 1):
                body, location = await _get(target, policy.max_code_size)
                if location is None:
                    break
                url = urljoin(url, location)
                target = await _checked(url, request, policy)
            else:
                raise FetchFailed(f"Failed to fetch remote code: more than {MAX_REDIRECTS} redirects")
    except TimeoutError:
        raise FetchFailed(f"Remote code fetch timed out after {policy.fetch_timeout_ms}ms") from None
    try:
        code = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Isol8Error("Fetched code appears to be binary content (it is not UTF-8 text)") from None
    if "\0" in code:
        raise Isol8Error("Fetched code appears to be binary content")
    if request.code_hash is not None and hashlib.sha256(body).hexdigest() != request.code_hash.strip().lower():
        raise Isol8Error("Remote code hash mismatch: check codeHash (the SHA-256 of the file, in hex)")
    return code


@dataclass(frozen=True)
class _Target:
    """A URL that passed the checks (its host canonical), and the address it is fetched from."""

    parts: SplitResult
    host: str
    port: int
    address: IPAddress

    def httpcore_url(self) -> httpcore.URL:
        target = (self.parts.path or "/") + (f"?{self.parts.query}" if self.parts.query else "")
        target = quote(target, safe=PRINTABLE_ASCII)  # as a browser sends it: non-ASCII and spaces escaped
        return httpcore.URL(scheme=self.parts.scheme, host=self.host, port=self.port, target=target)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if FETCHABLE_SCHEMES[self.parts.scheme] == self.port else f"{host}:{self.port}"


async def _checked(url: str, request: ExecutionRequest, policy: RemoteCodePolicy) -> _Target:
    """Steps 2 to 4 for one URL (the first, or a redirect's)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Isol8Error(f"Invalid code URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "http" and not request.allow_insecure_code_url:
        raise PolicyRefused("Insecure code URL blocked. Use allowInsecureCodeUrl=true to allow HTTP.")
    if scheme not in policy.allowed_schemes or scheme not in FETCHABLE_SCHEMES:
        raise PolicyRefused(f"URL scheme not allowed: {scheme}")
    host = canonical_host(parts.hostname or "")
    if not host:
        raise Isol8Error(f"Invalid code URL {url!r}: it names no host")
    allowed = not policy.allowed_hosts or _matches(host, policy.allowed_hosts)
    if not allowed or _matches(host, policy.blocked_hosts):
        raise PolicyRefused(f"Blocked code URL host: {host}")
    port = port or FETCHABLE_SCHEMES[scheme]
    addresses = await resolve(host, port)
    for address in addresses:
        if not is_public_address(address):
            raise PolicyRefused(f"Blocked code URL host: {host} (it resolves to {address}, which is not public)")
    return _Target(parts._replace(scheme=scheme), host, port, addresses[0])


def canonical_host(host: str) -> str:
    """Lower case, no trailing dot, an IPv4 address in any spelling as its dotted quad, an IPv6 one
    compressed, a name in IDNA (ASCII) form."""
    host = host.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fx.]+", host):
        try:  # the spellings inet_aton (and so getaddrinfo) accepts: 2130706433, 0x7f.1, 0177.0.0.1
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            pass
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        raise Isol8Error(f"Invalid code URL host {host!r}: not a valid host name") from None


def _matches(host: str, patterns: Iterable[str]) -> bool:
    return any(re.search(pattern, host, re.IGNORECASE) for pattern in patterns)


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, in the resolver's order (an IP literal: itself)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise FetchFailed(f"Failed to resolve code URL host: {host}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise FetchFailed(f"Failed to resolve code URL host: {host}")
    return addresses


def is_public_address(address: IPAddress) -> bool:
    """True only for a globally routable unicast address that embeds no IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and (
        address.ipv4_mapped or address.sixtofour or address.teredo or address in EMBEDS_IPV4
    ):
        return False
    return address.is_global and not address.is_multicast and not any(address in net for net in NOT_PUBLIC)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the checked address whatever host httpcore asks for (TLS still names the host)."""

    def __init__(self, address: IPAddress) -> None:
        self._address = str(address)
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._backend.connect_tcp(self._address, port, timeout, local_address, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


async def _get(target: _Target, max_size: int) -> tuple[bytes, str | None]:
    """(body, None), or (b"", the Location) for a redirect."""
    too_big = f"Remote code exceeds maxCodeSize ({max_size} bytes)"
    headers = [("Host", target.host_header), ("Accept", "*/*"), ("User-Agent", "isol8")]
    context = ssl.create_default_context(cafile=certifi.where())
    try:
        async with (
            httpcore.AsyncConnectionPool(ssl_context=context, network_backend=_PinnedBackend(target.address)) as pool,
            pool.stream("GET", target.httpcore_url(), headers=headers) as response,
        ):
            fields = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in response.headers}
            if response.status in REDIRECT_STATUSES and "location" in fields:
                return b"", fields["location"]
            if not 200 <= response.status < 300:
                raise FetchFailed(f"Failed to fetch remote code: HTTP {response.status}")
            declared = fields.get("content-length", "")
            if declared.isdigit() and int(declared) > max_size:
                raise PolicyRefused(f"{too_big}: {int(declared)} bytes")
            body = bytearray()
            async for chunk in response.aiter_stream():
                body += chunk
                if len(body) > max_size:
                    raise PolicyRefused(too_big)
            return bytes(body), None
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, ssl.SSLError) as exc:
        raise FetchFailed(f"Failed to fetch remote code: {str(exc) or type(exc).__name__}") from None
