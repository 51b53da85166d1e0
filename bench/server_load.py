"""Load on the HTTP server: requests/s and p50/p99 latency of `POST /execute` at a fixed concurrency.

`server_load()` starts its own `isol8 serve` on 127.0.0.1 (a free port, a throwaway key, its own
config in a temporary directory), sends a fixed number of requests, stops the server and returns the
figures. It only ever talks to 127.0.0.1, and it ends by itself: the request count is fixed and the
whole run is bounded by `timeout_s`.

    .venv/bin/python -m bench.server_load [--concurrency 8] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

HOST = "127.0.0.1"
CODE = "print(1)"


@dataclass
class ServerLoad:
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    min_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def _start(workdir: Path, port: int, key: str, config: dict[str, Any]) -> subprocess.Popen[bytes]:
    (workdir / "isol8.config.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "isol8_tui", "serve", "--bind", HOST, "--port", str(port), "--key", key]
    with (workdir / "serve.err").open("w") as stderr:
        return subprocess.Popen(
            command,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={k: v for k, v in os.environ.items() if k not in ("ISOL8_PORT", "PORT", "ISOL8_API_KEY")},
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # the server removes its containers on the way out
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def _wait_healthy(url: str, proc: subprocess.Popen[bytes], deadline: float) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"isol8 serve exited with {proc.returncode}")
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("isol8 serve did not become healthy in time")


async def _drive(url: str, key: str, concurrency: int, total: int, warmup: int) -> tuple[list[float], int, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    body = {"request": {"code": CODE, "runtime": "python"}}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120) as client:

        async def once() -> tuple[float, bool]:
            started = time.perf_counter()
            reply = await client.post("/execute", json=body)
            elapsed = (time.perf_counter() - started) * 1000
            return elapsed, reply.status_code == 200 and reply.json().get("stdout") == "1\n"

        for _ in range(warmup):  # one at a time: warms the pool and the connections, not measured
            await once()
        remaining = total
        latencies: list[float] = []
        errors = 0

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                try:
                    elapsed, ok = await once()
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(elapsed)
                errors += not ok

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, errors, time.perf_counter() - started


def server_load(
    concurrency: int = 8,
    requests: int = 200,
    warmup: int = 16,
    config: dict[str, Any] | None = None,
    timeout_s: float = 300.0,
) -> ServerLoad:
    """Start a server, measure `requests` POST /execute calls (`print(1)`) at `concurrency`, stop it.

    `config` is the server's isol8.config.json (default: the built-in defaults).
    """
    key = secrets.token_hex(16)
    port = _free_port()
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + timeout_s
    with tempfile.TemporaryDirectory(prefix="isol8-server-load-") as tmp:
        proc = _start(Path(tmp), port, key, config or {})
        try:

            async def measure() -> tuple[list[float], int, float]:
                await _wait_healthy(url, proc, deadline)
                remaining = max(1.0, deadline - time.monotonic())
                return await asyncio.wait_for(_drive(url, key, concurrency, requests, warmup), remaining)

            latencies, errors, wall = asyncio.run(measure())
        finally:
            _stop(proc)
    ordered = sorted(latencies) or [0.0]
    return ServerLoad(
        concurrency=concurrency,
        requests=requests,
        errors=errors,
        wall_s=round(wall, 3),
        rps=round(len(latencies) / wall, 1) if wall else 0.0,
        p50_ms=round(statistics.median(ordered), 1),
        p99_ms=round(_p99(ordered), 1),
        min_ms=round(ordered[0], 1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--pool-strategy", choices=["secure", "fast"], help="the server's poolStrategy")
    args = parser.parse_args()
    config = {"poolStrategy": args.pool_strategy} if args.pool_strategy else None
    print(json.dumps(server_load(args.concurrency, args.requests, config=config).as_dict(), indent=2))


if __name__ == "__main__":
    main()
