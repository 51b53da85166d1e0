"""isol8 filtered-network proxy: HTTP and HTTPS (CONNECT) with per-host allow/deny rules.

Runs inside the sandbox container as its own unprivileged user; the agent starts it and the
firewall lets the sandbox user reach nothing but this proxy (and loopback). Stdlib only.

Hand-written on purpose: it is the product's policy point, and it must be small enough to audit.
- A host is decided, logged, resolved and sent upstream in one canonical spelling: lower case,
  one trailing dot removed, IDNA applied (punycode); an IPv4 literal in any spelling the C
  resolver accepts (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`, `[::ffff:127.0.0.1]`) becomes
  its dotted quad. Anything else (userinfo, `%`, spaces, empty labels, two trailing dots, ports
  outside 1-65535) is refused with 400, so no other spelling can reach the resolver. A name is
  looked up as absolute (no search domains): the name decided is the name resolved.
- Rules are regular expressions matched against the whole canonical host, case-insensitively,
  and also against its Unicode form (`xn--` labels decoded); the blacklist wins if either form
  matches it; an empty whitelist allows every host that is not blacklisted.
- CONNECT may reach port 443 and the policy's `ports`, nothing else; plain HTTP any port.
- A destination that resolves to a private, loopback, link-local or otherwise non-public
  address (the Docker host, other containers, 169.254.169.254) is refused unless an explicit
  whitelist pattern names the host and the policy's `whitelist_reaches_private` is true.
- TLS is tunnelled (CONNECT), never intercepted. Plain HTTP is one request per connection: its
  head is rebuilt (a Host header that names another host than the request target, several Host
  headers, or ambiguous body framing are refused; Host is always the decided host; hop-by-hop
  headers are dropped; `Connection: close`), its body is forwarded exactly as framed, and no
  client byte after the body is forwarded.
- A request head must be complete within HEAD_TIMEOUT_S (408) and MAX_HEAD bytes (431); it is
  ASCII, except that a host name may be UTF-8 (then IDNA applies).
- Every request is one JSON line on stdout when it ends (the agent attributes it to the job).
- Commands on stdin: `flush` closes every open connection (their processes are gone), logs them,
  then answers `{"flushed": true}` — so a job's log is complete when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime

PORT = 8118
MAX_HEAD = 64 * 1024
HEAD_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 256
HTTPS_PORT = 443

TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: methods and header names
VERSION = re.compile(r"HTTP/1\.[01]")
TARGET = re.compile(r"[^\x00-\x20\x7f]+")  # no space or control character
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # none but HTAB in a field value
NAME = re.compile(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*")
IDNA_DOTS = re.compile("[\u3002\uff0e\uff61]")  # what IDNA also reads as a label separator
DIGITS = re.compile(r"[0-9]+")
CHUNK_SIZE = re.compile(r"[0-9a-fA-F]{1,16}")
# Not forwarded as sent: hop-by-hop headers (RFC 9110 7.6.1; also any named in Connection and every
# Proxy-*), and the ones the proxy writes itself (Host, the body's framing, Connection: close).
# Upgrade goes too: after the body nothing more of the client's is forwarded.
CREDENTIAL = re.compile(r"authorization|cookie|set-cookie|.*(token|secret|passw|api-?key|session|auth).*", re.I)
MASKED = "[masked]"
MAX_LOGGED_HEADERS = 64
NOT_FORWARDED = {"connection", "keep-alive", "te", "trailer", "upgrade", "host", "content-length", "transfer-encoding"}


class Refused(Exception):
    """A request the proxy answers itself. `rule` goes to the log (None keeps the decision's rule)."""

    def __init__(self, status: int, body: str, rule: str | None) -> None:
        super().__init__(body)
        self.status, self.body, self.rule = status, body, rule


def bad_request(reason: str) -> Refused:
    return Refused(400, f"isol8: {reason}", reason)


def canonical_host(raw: str) -> str:
    """The one spelling of a host the proxy decides on, logs and resolves; 400 for anything else."""
    if raw.startswith("["):
        try:
            if not raw.endswith("]") or "%" in raw:  # no zone index either
                raise ValueError
            address = ipaddress.IPv6Address(raw[1:-1])
        except ValueError:
            raise bad_request(f"invalid IPv6 literal {raw!r}") from None
        return str(address.ipv4_mapped or address)
    name = IDNA_DOTS.sub(".", raw).removesuffix(".")
    try:  # the codec would drop a second trailing dot: refuse it first
        name = "" if name.endswith(".") else name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        name = ""
    if len(name) > 253 or not NAME.fullmatch(name):
        raise bad_request(f"invalid host name {raw!r} (letters, digits, '-', '_' and dots only)")
    unicode_form(name)  # refuses a malformed `xn--` label here, before any decision
    with contextlib.suppress(OSError):
        return socket.inet_ntoa(socket.inet_aton(name))  # exactly the spellings the resolver reads
    return name


def unicode_form(host: str) -> str:
    """`host` with its `xn--` labels decoded (what a pattern written in Unicode must match). A label
    must be the one encoding of a non-ASCII name, so two ASCII names never share a Unicode form."""
    labels = []
    for label in host.split("."):
        if label.startswith("xn--"):
            try:
                decoded = label[4:].encode("ascii").decode("punycode")
            except UnicodeError:
                decoded = ""
            if decoded.isascii() or decoded.encode("punycode") != label[4:].encode() or IDNA_DOTS.search(decoded):
                raise bad_request(f"invalid internationalised label {label!r}")
            label = decoded
        labels.append(label)
    return ".".join(labels)


def parse_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """The canonical host and port of `host[:port]` or `[v6][:port]`; userinfo is refused."""
    if "@" in authority:
        raise bad_request(f"user information is not allowed in {authority!r}")
    if authority.startswith("["):
        end = authority.find("]") + 1 or len(authority)
        host, rest = authority[:end], authority[end:]
    else:
        host, colon, port = authority.partition(":")
        rest = colon + port
    if rest:
        digits = rest[1:]
        if not rest.startswith(":") or not DIGITS.fullmatch(digits) or not 1 <= int(digits) <= 65535:
            raise bad_request(f"invalid port in {authority!r} (use 1-65535)")
        port_number = int(digits)
    elif default_port is None:
        raise bad_request(f"CONNECT needs host:port, got {authority!r}")
    else:
        port_number = default_port
    return canonical_host(host), port_number


@dataclass
class Head:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name]


def parse_head(data: bytes) -> Head:
    """The request line and header fields; 400 for anything ambiguous."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("the request head is not ASCII") from None
    line, *fields = text.removesuffix("\r\n\r\n").split("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or not (
        TOKEN.fullmatch(parts[0]) and TARGET.fullmatch(parts[1]) and VERSION.fullmatch(parts[2])
    ):
        raise bad_request("malformed request line")
    headers = []
    for field in fields:
        name, colon, value = field.partition(":")
        value = value.strip(" \t")
        if not colon or not TOKEN.fullmatch(name) or CONTROL.search(value):
            raise bad_request(f"malformed header line {field[:100]!r}")
        if not value.isascii() and name.lower() != "host":
            raise bad_request(f"the {name} header is not ASCII")
        headers.append((name, value))
    return Head(parts[0], parts[1], parts[2], headers)


def logged_headers(head: Head) -> list[list[str]]:
    """A plain-HTTP request's header fields for the network log, credentials' values masked (the
    engine masks the run's secrets everywhere else); at most MAX_LOGGED_HEADERS of them."""
    return [
        [name, MASKED if CREDENTIAL.fullmatch(name) else value] for name, value in head.headers[:MAX_LOGGED_HEADERS]
    ]


def body_length(head: Head) -> int | None:
    """The body's framing: its Content-Length (0 when none), or None for chunked."""
    encodings = head.values("transfer-encoding")
    lengths = {value.strip() for field in head.values("content-length") for value in field.split(",")}
    if encodings:
        if lengths:
            raise bad_request("both Content-Length and Transfer-Encoding")
        if len(encodings) != 1 or encodings[0].lower() != "chunked":
            raise bad_request(f"unsupported Transfer-Encoding {', '.join(encodings)!r} (only chunked)")
        return None
    if len(lengths) > 1 or not all(DIGITS.fullmatch(length) for length in lengths):
        raise bad_request(f"invalid Content-Length {', '.join(sorted(lengths))!r}")
    return int(lengths.pop()) if lengths else 0


class Policy:
    def __init__(self, whitelist: list[str], blacklist: list[str], ports: list[int], whitelist_reaches_private: bool):
        self.whitelist = [(p, re.compile(p, re.IGNORECASE)) for p in whitelist]
        self.blacklist = [(p, re.compile(p, re.IGNORECASE)) for p in blacklist]
        self.connect_ports = sorted({HTTPS_PORT, *ports})
        self.whitelist_reaches_private = whitelist_reaches_private

    @classmethod
    def from_json(cls, text: str) -> Policy:
        """The engine's NetworkFilter (validated there) as JSON; a missing key stops the proxy."""
        config = json.loads(text)
        return cls(
            config["whitelist"], config["blacklist"], config["ports"], config["whitelist_reaches_private"] is True
        )

    def decide(self, host: str) -> tuple[bool, str | None, bool]:
        """(allowed, rule that decided, named explicitly by a whitelist pattern)."""
        forms = {host, unicode_form(host)}
        for pattern, regex in self.blacklist:
            if any(regex.fullmatch(form) for form in forms):
                return False, f"blacklist:{pattern}", False
        if not self.whitelist:
            return True, None, False
        for pattern, regex in self.whitelist:
            if any(regex.fullmatch(form) for form in forms):
                return True, f"whitelist:{pattern}", True
        return False, "not in whitelist", False


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Connection:
    """One client connection: parse the head, decide, tunnel or forward, log once."""

    def __init__(self, proxy: Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.reader = reader
        self.writer = writer
        self.started = time.monotonic()
        self.entry: dict = {
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "method": "UNKNOWN",
            "host": "",
            "port": 0,
            "path": None,
            "action": "BLOCK",
            "rule": None,
            "status": None,
            "bytes_in": 0,
            "bytes_out": 0,
        }
        self.upstream: asyncio.StreamWriter | None = None
        self.logged = False

    async def handle(self) -> None:
        try:
            await self._handle()
        except Refused as refusal:
            if refusal.rule is not None:
                self.entry["rule"] = refusal.rule
            if not self.entry["bytes_in"]:  # nothing of an upstream response reached the client yet
                with contextlib.suppress(ConnectionError):
                    await self._reply(refusal.status, refusal.body)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        for writer in (self.upstream, self.writer):
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()
        if not self.logged and (self.entry["host"] or self.entry["status"] is not None):
            self.entry["duration_ms"] = round((time.monotonic() - self.started) * 1000, 3)
            emit(self.entry)
        self.logged = True

    async def _read_head(self) -> Head:
        try:
            data = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        except TimeoutError:
            raise Refused(
                408, f"isol8: request head not complete within {HEAD_TIMEOUT_S:g} s", "head timeout"
            ) from None
        except asyncio.LimitOverrunError:
            raise Refused(431, f"isol8: request head over {MAX_HEAD} bytes", "head too large") from None
        return parse_head(data)

    async def _handle(self) -> None:
        head = await self._read_head()
        self.entry["method"] = head.method
        hosts = head.values("host")
        if len(hosts) > 1:
            raise bad_request("several Host headers")
        if head.method == "CONNECT":
            host, port = parse_authority(head.target, None)
            self.entry.update(host=host, port=port)
            up_reader, upstream = await self._open(host, port, connect=True)
            self.entry["status"] = 200
            self.writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await self.writer.drain()
            await asyncio.gather(
                self._pipe(self.reader, upstream, "bytes_out"), self._pipe(up_reader, self.writer, "bytes_in")
            )
            return
        host, port, path = self._http_target(head, hosts)
        self.entry["headers"] = logged_headers(head)
        length = body_length(head)
        up_reader, _ = await self._open(host, port, connect=False)
        request = asyncio.create_task(self._send_request(self._rebuilt_head(head, host, port, path, length), length))
        response = asyncio.create_task(self._pipe(up_reader, self.writer, "bytes_in", read_status=True))
        try:  # the upstream may answer (and close) before the body is complete
            await asyncio.wait((request, response), return_when=asyncio.FIRST_COMPLETED)
            if request.done():
                request.result()
                await response
        finally:
            request.cancel()
            response.cancel()

    async def _open(self, host: str, port: int, connect: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Decide on the canonical host (and CONNECT's port), resolve it, refuse non-public
        addresses unless allowed, then connect to exactly the address that was checked."""
        policy = self.proxy.policy
        allowed, rule, explicit = policy.decide(host)
        self.entry["rule"] = rule
        if not allowed:
            raise Refused(403, f"isol8: request to {host} blocked by network filter ({rule})", rule)
        if connect and port not in policy.connect_ports:
            rule = f"port {port} not allowed"
            ports = ", ".join(map(str, policy.connect_ports))
            raise Refused(
                403, f"isol8: CONNECT to {host}:{port} blocked by network filter ({rule}; allowed: {ports})", rule
            )
        address = await self._resolve(host, port)
        if address is None:
            raise Refused(502, f"isol8: cannot resolve {host}", None)
        if not ipaddress.ip_address(address).is_global and not (explicit and policy.whitelist_reaches_private):
            raise Refused(
                403,
                f"isol8: request to {host} blocked: {address} is not a public address",
                f"private address {address}",
            )
        self.entry["action"] = "ALLOW"
        try:
            up_reader, upstream = await asyncio.wait_for(asyncio.open_connection(address, port), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            raise Refused(502, f"isol8: connection to {host}:{port} failed", None) from None
        self.upstream = upstream
        return up_reader, upstream

    def _http_target(self, head: Head, hosts: list[str]) -> tuple[str, int, str]:
        """Absolute-URI (proxy form), or origin form with a Host header (clients sent here directly).
        A Host header must name the same host and port as the absolute-URI."""
        target = head.target
        if target[:7].lower() == "http://":
            rest = target[7:]
            end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
            authority, path = rest[:end], rest[end:]
            if path.startswith("#"):
                raise bad_request("malformed request line")
            path = path if path.startswith("/") else "/" + path
        elif target.startswith("/"):
            if not hosts:
                raise bad_request("the request names no host")
            authority, path = hosts[0], target
        else:
            raise bad_request(f"unsupported request target {target[:100]!r} (use http:// or CONNECT)")
        if not path.isascii():
            raise bad_request("the request path is not ASCII")
        host, port = parse_authority(authority, 80)
        self.entry.update(host=host, port=port, path=path)
        if hosts and parse_authority(hosts[0], 80) != (host, port):
            raise bad_request(f"Host header {hosts[0]!r} does not match the request target {authority!r}")
        return host, port, path

    @staticmethod
    def _rebuilt_head(head: Head, host: str, port: int, path: str, length: int | None) -> bytes:
        """The request line in origin form, Host naming the decided host, end-to-end headers only."""
        named = {token.strip().lower() for value in head.values("connection") for token in value.split(",")}
        authority = f"[{host}]" if ":" in host else host
        lines = [f"{head.method} {path} {head.version}", f"Host: {authority}" + (f":{port}" if port != 80 else "")]
        for name, value in head.headers:
            key = name.lower()
            if key not in NOT_FORWARDED and key not in named and not key.startswith("proxy-"):
                lines.append(f"{name}: {value}")
        if length is None:
            lines.append("Transfer-Encoding: chunked")
        elif length:
            lines.append(f"Content-Length: {length}")
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")

    async def _send(self, data: bytes) -> None:
        assert self.upstream is not None
        self.entry["bytes_out"] += len(data)
        self.upstream.write(data)
        await self.upstream.drain()

    async def _send_request(self, head: bytes, length: int | None) -> None:
        """The rebuilt head, then exactly the body: `length` bytes, or (None) its chunks up to the
        last one, re-framed without extensions or trailers. No client byte after it is read."""
        await self._send(head)
        if length is not None:
            await self._copy(length)
            return
        while size := int(await self._chunk_size(), 16):
            await self._send(f"{size:x}\r\n".encode())
            await self._copy(size)
            if await self.reader.readexactly(2) != b"\r\n":
                raise bad_request("chunk data not followed by CRLF")
            await self._send(b"\r\n")
        trailers = 0
        while line := await self._line():
            trailers += len(line)
            if trailers > MAX_HEAD:
                raise bad_request("chunked trailer too large")
        await self._send(b"0\r\n\r\n")

    async def _copy(self, size: int) -> None:
        while size:
            data = await self.reader.read(min(size, 65536))
            if not data:
                raise asyncio.IncompleteReadError(b"", size)
            size -= len(data)
            await self._send(data)

    async def _chunk_size(self) -> str:
        line = await self._line()
        size = line.partition(";")[0].strip(" \t")
        if not CHUNK_SIZE.fullmatch(size):
            raise bad_request(f"invalid chunk size {line[:40]!r}")
        return size

    async def _line(self) -> str:
        """One CRLF-terminated ASCII line of a chunked body, without its CRLF."""
        try:
            return (await self.reader.readuntil(b"\r\n"))[:-2].decode("ascii")
        except (asyncio.LimitOverrunError, UnicodeDecodeError):
            raise bad_request("malformed chunked body") from None

    async def _resolve(self, host: str, port: int) -> str | None:
        """The first IPv4 address of `host`; a name is resolved as absolute (no search domains), so
        the name that was decided is the name that is looked up."""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            host += "."
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, family=socket.AF_INET, type=socket.SOCK_STREAM
            )
        except OSError:
            return None
        return str(infos[0][4][0]) if infos else None

    async def _reply(self, status: int, body: str) -> None:
        self.entry["status"] = status
        reason = {
            400: "Bad Request",
            403: "Forbidden",
            408: "Request Timeout",
            431: "Request Header Fields Too Large",
            502: "Bad Gateway",
        }[status]
        data = (body + "\n").encode()
        self.writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(data)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + data
        )
        await self.writer.drain()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: str, read_status: bool = False
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if read_status and self.entry["status"] is None and chunk.startswith(b"HTTP/"):
                    with contextlib.suppress(ValueError, IndexError):
                        self.entry["status"] = int(chunk.split(b" ", 2)[1])
                self.entry[counter] += len(chunk)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                if writer.can_write_eof():
                    writer.write_eof()


class Proxy:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.connections: set[Connection] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        connection = Connection(self, reader, writer)
        self.connections.add(connection)
        try:
            await connection.handle()
        finally:
            self.connections.discard(connection)

    async def commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            command, _, argument = line.strip().partition(b" ")
            if command == b"flush":
                for connection in list(self.connections):
                    connection.close()
                emit({"flushed": True})
            elif command == b"policy":  # new lists, from the next request on (open tunnels stay)
                self.policy = Policy.from_json(argument.decode())
        os._exit(0)  # the agent went away


async def serve() -> None:
    proxy = Proxy(Policy.from_json(os.environ["ISOL8_PROXY_POLICY"]))
    server = await asyncio.start_server(proxy.serve, "127.0.0.1", PORT, limit=MAX_HEAD)
    emit({"ready": True})
    async with server:
        await proxy.commands()


def main() -> None:
    asyncio.run(serve())
