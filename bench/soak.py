"""Soak: many mixed executions through one engine; zero lost results, zero leaked containers,
flat memory. `.venv/bin/python -m bench.soak --count 2000` (the test suite runs a reduced size).

The mix covers every runtime, random limits and random failures: non-zero exits, timeouts,
out-of-memory kills, big outputs, stdin, and streams abandoned halfway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field

from engine import DockerIsol8, ExecutionRequest
from engine.docker import DockerClient

CASES = [
    ("python", "import sys; print(sum(range(1000))); sys.exit({exit})", "499500\n"),
    ("node", "console.log([1,2,3].map(x => x * 2).join(',')); process.exit({exit})", "2,4,6\n"),
    ("bun", "console.log(String(40 + 2)); process.exit({exit})", "42\n"),
    ("deno", "console.log('deno ok'); Deno.exit({exit})", "deno ok\n"),
    ("bash", "echo bash ok; exit {exit}", "bash ok\n"),
]


@dataclass
class SoakReport:
    count: int
    results: int = 0
    wrong: list[str] = field(default_factory=list)
    timeouts: int = 0
    oom: int = 0
    abandoned: int = 0
    leaked_containers: int = 0
    rss_mb_start: float = 0.0
    rss_mb_end: float = 0.0
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        return self.count - self.results


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


async def _one(engine: DockerIsol8, rng: random.Random, report: SoakReport, index: int) -> None:
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


async def soak(count: int, concurrency: int = 8, seed: int = 8, strategy: str = "fast") -> SoakReport:
    rng = random.Random(seed)
    report = SoakReport(count=count)
    started = time.monotonic()
    slots = asyncio.Semaphore(concurrency)
    async with DockerIsol8(pool_strategy=strategy, pool_size=2, max_concurrent=concurrency) as engine:

        async def guarded(index: int) -> None:
            async with slots:
                await _one(engine, rng, report, index)
                if index == count // 5:
                    report.rss_mb_start = _rss_mb()

        await asyncio.gather(*(guarded(index) for index in range(count)))
        report.rss_mb_end = _rss_mb()
    report.leaked_containers = len(DockerClient().managed_containers())
    report.seconds = time.monotonic() - started
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--strategy", choices=["fast", "secure"], default="fast")
    args = parser.parse_args()
    report = asyncio.run(soak(args.count, args.concurrency, strategy=args.strategy))
    print(json.dumps({**asdict(report), "lost": report.lost}, indent=2))


if __name__ == "__main__":
    main()
