"""isol8 filtered-network proxy: HTTP and HTTPS (CONNECT) with per-host allow/deny rules.

Runs inside the sandbox container as its own unprivileged user; the agent starts it and the
firewall lets the sandbox user reach nothing but this proxy (and loopback). Stdlib only.

Hand-written on purpose: it is the product's policy point, and it must be small enough to audit.
- Rules are regular expressions matched against the whole host name, case-insensitively; the
  blacklist wins; an empty whitelist allows every host that is not blacklisted.
- A destination that resolves to a private, loopback, link-local or otherwise non-public
  address (the Docker host, other containers, 169.254.169.254) is refused unless an explicit
  whitelist pattern names the host.
- TLS is tunnelled (CONNECT), never intercepted. Plain HTTP is forwarded with `Connection: close`.
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
from datetime import UTC, datetime

PORT = 8118
MAX_HEAD = 64 * 1024
CONNECT_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 256


class Policy:
    def __init__(self, whitelist: list[str], blacklist: list[str]) -> None:
        self.whitelist = [(p, re.compile(p, re.IGNORECASE)) for p in whitelist]
        self.blacklist = [(p, re.compile(p, re.IGNORECASE)) for p in blacklist]

    def decide(self, host: str) -> tuple[bool, str | None, bool]:
        """(allowed, rule that decided, named explicitly by a whitelist pattern)."""
        for pattern, regex in self.blacklist:
            if regex.fullmatch(host):
                return False, f"blacklist:{pattern}", False
        if not self.whitelist:
            return True, None, False
        for pattern, regex in self.whitelist:
            if regex.fullmatch(host):
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
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        for writer in (self.upstream, self.writer):
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()
        if not self.logged and self.entry["host"]:
            self.entry["duration_ms"] = round((time.monotonic() - self.started) * 1000, 3)
            emit(self.entry)
        self.logged = True

    async def _handle(self) -> None:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            await self._reply(400, "isol8: malformed request line")
            return
        headers = [line for line in lines[1:] if line]
        self.entry["method"] = method.upper()
        if self.entry["method"] == "CONNECT":
            host, _, port = target.rpartition(":")
            host, port_number, path = host.strip("[]"), int(port or 443), None
        else:
            host, port_number, path = self._http_target(target, headers)
        if not host:
            await self._reply(400, "isol8: the request names no host")
            return
        self.entry.update(host=host.lower(), port=port_number, path=path)
        allowed, rule, explicit = self.proxy.policy.decide(host)
        self.entry["rule"] = rule
        if not allowed:
            await self._reply(403, f"isol8: request to {host} blocked by network filter ({rule})")
            return
        address = await self._resolve(host, port_number)
        if address is None:
            await self._reply(502, f"isol8: cannot resolve {host}")
            return
        if not explicit and not ipaddress.ip_address(address).is_global:
            self.entry["rule"] = f"private address {address}"
            await self._reply(403, f"isol8: request to {host} blocked: {address} is not a public address")
            return
        try:
            up_reader, self.upstream = await asyncio.wait_for(
                asyncio.open_connection(address, port_number), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            self.entry["action"] = "ALLOW"
            await self._reply(502, f"isol8: connection to {host}:{port_number} failed")
            return
        self.entry["action"] = "ALLOW"
        if self.entry["method"] == "CONNECT":
            self.entry["status"] = 200
            self.writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await self.writer.drain()
        else:
            kept = [h for h in headers if not h.lower().startswith(("proxy-", "connection:", "keep-alive:"))]
            request = f"{method} {path} {version}\r\n" + "".join(f"{h}\r\n" for h in kept)
            request += "Connection: close\r\n\r\n"
            data = request.encode("latin-1")
            self.entry["bytes_out"] += len(data)
            self.upstream.write(data)
        await asyncio.gather(
            self._pipe(self.reader, self.upstream, "bytes_out"),
            self._pipe(up_reader, self.writer, "bytes_in", read_status=self.entry["method"] != "CONNECT"),
        )

    def _http_target(self, target: str, headers: list[str]) -> tuple[str, int, str]:
        """Absolute-URI (proxy form) or origin form with a Host header (clients sent here directly)."""
        if target.startswith("http://"):
            rest = target[len("http://") :]
            authority, slash, path = rest.partition("/")
            path = slash + path or "/"
        else:
            authority = next((h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("host:")), "")
            path = target
        host, _, port = authority.rpartition(":") if authority.count(":") == 1 else (authority, "", "")
        return host.strip("[]"), int(port or 80), path

    async def _resolve(self, host: str, port: int) -> str | None:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, family=socket.AF_INET)
        except OSError:
            return None
        return infos[0][4][0] if infos else None

    async def _reply(self, status: int, body: str) -> None:
        self.entry["status"] = status
        reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
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
            if line.strip() == b"flush":
                for connection in list(self.connections):
                    connection.close()
                emit({"flushed": True})
        os._exit(0)  # the agent went away


async def main() -> None:
    config = json.loads(os.environ.get("ISOL8_PROXY_POLICY", "{}"))
    proxy = Proxy(Policy(config.get("whitelist", []), config.get("blacklist", [])))
    server = await asyncio.start_server(proxy.serve, "127.0.0.1", PORT, limit=MAX_HEAD)
    emit({"ready": True})
    async with server:
        await proxy.commands()


if __name__ == "__main__":
    asyncio.run(main())
