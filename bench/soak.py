"""Soak: many mixed executions through one engine, or through the HTTP server; zero lost results,
zero leaked containers, flat memory. `.venv/bin/python -m bench.soak --count 2000` (the test suite
runs a reduced size); `--through-server` sends the same mix through a local `isol8 serve` with
`RemoteIsol8` and measures the server process's memory instead of this one's.

The mix covers every runtime, random limits and random failures: non-zero exits, timeouts,
out-of-memory kills, big outputs, stdin, and streams abandoned halfway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.server_load import HOST, _free_port, _start, _stop, _wait_healthy
from engine import DockerIsol8, ExecutionRequest
from engine.docker import DockerClient
from engine.remote import RemoteIsol8

CASES = [
    ("python", "import sys; print(sum(range(1000))); sys.exit({exit})", "499500\n"),
    ("node", "console.log([1,2,3].map(x => x * 2).join(',')); process.exit({exit})", "2,4,6\n"),
    ("bun", "console.log(String(40 + 2)); process.exit({exit})", "42\n"),
    ("deno", "console.log('deno ok'); Deno.exit({exit})", "deno ok\n"),
    ("bash", "echo bash ok; exit {exit}", "bash ok\n"),
]
SERVER_PIDS_MARK = 61
"""The soak server's default pids limit (no request of the mix sets one): no other user of the daemon
is likely to pick it, so the server's containers can be counted apart from theirs."""
SERVER_START_S = 120.0  # a first start may build outdated images


@dataclass
class SoakReport:
    count: int
    through_server: bool = False
    results: int = 0
    wrong: list[str] = field(default_factory=list)
    timeouts: int = 0
    oom: int = 0
    abandoned: int = 0
    leaked_containers: int = 0
    rss_mb_start: float = 0.0  # this process's, or the server's with --through-server
    rss_mb_end: float = 0.0
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        return self.count - self.results


def _rss_mb(pid: int | None = None) -> float:
    with open(f"/proc/{pid or os.getpid()}/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


async def _one(engine: DockerIsol8 | RemoteIsol8, rng: random.Random, report: SoakReport, index: int) -> None:
    kind = rng.random()
    if kind < 0.06:
        request = ExecutionRequest(cmd="sleep 5", timeout_ms=rng.choice([200, 500, 800]))
        result = await engine.execute(request)
        report.timeouts += result.timed_out
        ok = result.timed_out and result.exit_code == 137
    elif kind < 0.09:
        request = ExecutionRequest(code="x = bytearray(300 * 1024 * 1024)", memory_limit="96m", timeout_ms=20_000)
        result = await engine.execute(request)
        report.oom += result.oom_killed
        ok = result.oom_killed and result.exit_code == 137
    elif kind < 0.14:
        stream = engine.execute_stream(ExecutionRequest(cmd="while true; do echo tick; sleep 0.05; done"))
        async for event in stream:
            if event.type == "stdout":
                break
        await stream.aclose()
        report.abandoned += 1
        ok = True
    elif kind < 0.20:
        data = os.urandom(rng.randint(1, 200_000)).hex()
        result = await engine.execute(
            ExecutionRequest(code="import sys; print(len(sys.stdin.read()))", stdin=data, max_output_size=4096)
        )
        ok = result.stdout == f"{len(data)}\n"
    else:
        runtime, code, expected = rng.choice(CASES)
        exit_code = rng.choice([0, 0, 0, 3])
        result = await engine.execute(
            ExecutionRequest(
                code=code.format(exit=exit_code),
                runtime=runtime,
                cpu_limit=rng.choice([None, 0.5, 1.0]),
                timeout_ms=30_000,
            )
        )
        ok = result.stdout == expected and result.exit_code == exit_code
    report.results += 1
    if not ok:
        report.wrong.append(f"#{index} kind={kind:.2f}")


async def _drive(
    engine: DockerIsol8 | RemoteIsol8,
    rng: random.Random,
    report: SoakReport,
    concurrency: int,
    rss_mb: Callable[[], float],
) -> None:
    slots = asyncio.Semaphore(concurrency)

    async def guarded(index: int) -> None:
        async with slots:
            await _one(engine, rng, report, index)
            if index == report.count // 5:  # after the pools and caches have filled
                report.rss_mb_start = rss_mb()

    await asyncio.gather(*(guarded(index) for index in range(report.count)))
    report.rss_mb_end = rss_mb()


def marked_containers(docker: DockerClient, pids_limit: int) -> list[str]:
    """Managed containers with this pids limit (any state)."""
    found = []
    for container in docker.managed_containers():
        with contextlib.suppress(Exception):  # removed between the listing and the inspection
            if docker.api.inspect_container(container["Id"])["HostConfig"]["PidsLimit"] == pids_limit:
                found.append(container["Id"])
    return found


@contextlib.asynccontextmanager
async def local_server(strategy: str, concurrency: int) -> AsyncIterator[tuple[str, str, int]]:
    """A throwaway `isol8 serve` on 127.0.0.1 with the soak's pool settings: (url, key, pid).
    Stopped (SIGTERM, so it removes its containers) on the way out."""
    config = {
        "poolStrategy": strategy,
        "poolSize": 2,
        "maxConcurrent": concurrency,
        "defaults": {"pidsLimit": SERVER_PIDS_MARK},
    }
    with tempfile.TemporaryDirectory(prefix="isol8-soak-") as workdir:
        port, key = _free_port(), secrets.token_hex(16)
        proc = _start(Path(workdir), port, key, config)
        try:
            url = f"http://{HOST}:{port}"
            await _wait_healthy(url, proc, time.monotonic() + SERVER_START_S)
            yield url, key, proc.pid
        finally:
            _stop(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"isol8 serve exited {proc.returncode}: {(Path(workdir) / 'serve.err').read_text()}")


async def soak(
    count: int, concurrency: int = 8, seed: int = 8, strategy: str = "fast", through_server: bool = False
) -> SoakReport:
    rng = random.Random(seed)
    report = SoakReport(count=count, through_server=through_server)
    started = time.monotonic()
    docker = DockerClient()
    if through_server:
        async with (
            local_server(strategy, concurrency) as (url, key, pid),
            RemoteIsol8(url, key) as remote,
        ):
            await _drive(remote, rng, report, concurrency, lambda: _rss_mb(pid))
        # The server is gone; so must its containers be (auto-removal takes a moment).
        deadline = time.monotonic() + 15
        while marked_containers(docker, SERVER_PIDS_MARK) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        report.leaked_containers = len(marked_containers(docker, SERVER_PIDS_MARK))
    else:
        async with DockerIsol8(pool_strategy=strategy, pool_size=2, max_concurrent=concurrency) as engine:
            await _drive(engine, rng, report, concurrency, _rss_mb)
        report.leaked_containers = len(docker.managed_containers())
    report.seconds = time.monotonic() - started
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--strategy", choices=["fast", "secure"], default="fast")
    parser.add_argument(
        "--through-server",
        action="store_true",
        help="send the mix through a local `isol8 serve` (RemoteIsol8) and measure the server's memory",
    )
    args = parser.parse_args()
    report = asyncio.run(soak(args.count, args.concurrency, strategy=args.strategy, through_server=args.through_server))
    print(json.dumps({**asdict(report), "lost": report.lost}, indent=2))


if __name__ == "__main__":
    main()
