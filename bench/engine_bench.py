"""Engine latency and throughput, with the Docker baselines measured in the same run.

Every figure is a list of milliseconds (or a rate) from this machine, this minute: the targets are
ratios against the baselines, so a noisy machine moves both sides together.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable

import docker

from engine import DockerIsol8, ExecutionRequest
from engine.docker import DockerClient
from engine.hardening import container_config
from engine.interface import Engine
from engine.models import Isol8Options
from engine.sandbox import Sandbox

HELLO = {
    "python": "print(1)",
    "node": "console.log(1)",
    "bun": "console.log(1)",
    "deno": "console.log(1)",
    "bash": "echo 1",
}


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p99": p99, "min": ordered[0], "n": len(ordered)}


async def timed(
    n: int, call: Callable[[], Awaitable[object]], between: Callable[[], Awaitable[object]] | None = None
) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
        if between is not None:
            await between()
    return samples


def docker_run_baseline(n: int) -> list[float]:
    """`docker run --rm` of the same image and program, through the Docker CLI."""
    cli = shutil.which("docker")
    if cli is None:
        raise RuntimeError("the docker CLI is needed for the `docker run --rm` baseline")
    command = [cli, "run", "--rm", "--network", "none", "--entrypoint", "python3", "isol8:python", "-c", "print(1)"]
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def exec_baseline(n: int) -> list[float]:
    """One Engine API exec (create + start + inspect) of the program in a running container."""
    client = docker.from_env()
    container = client.containers.run(
        "isol8:python", entrypoint=["sleep", "infinity"], detach=True, network_mode="none", labels={"isol8.bench": "1"}
    )
    try:
        api = client.api
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            exec_id = api.exec_create(container.id, ["python3", "-c", "print(1)"], user="sandbox")["Id"]
            api.exec_start(exec_id)
            api.exec_inspect(exec_id)
            samples.append((time.perf_counter() - started) * 1000)
        return samples
    finally:
        container.remove(force=True)


async def engine_latency(n: int) -> dict[str, list[float]]:
    request = ExecutionRequest(code=HELLO["python"])
    results: dict[str, list[float]] = {}
    async with DockerIsol8(pool_size=0) as engine:
        results["cold"] = await timed(max(5, n // 4), lambda: engine.execute(request))
    for strategy in ("secure", "fast"):
        async with DockerIsol8(pool_strategy=strategy, pool_size=1, prewarm=["python"]) as engine:
            await engine.execute(request)
            await engine._pool.settle()
            results[f"warm_{strategy}"] = await timed(n, lambda e=engine: e.execute(request), engine._pool.settle)
    async with DockerIsol8(mode="persistent", runtime="python") as engine:
        await engine.execute(request)
        results["persistent"] = await timed(n, lambda: engine.execute(request))
    async with DockerIsol8(pool_strategy="fast", pool_size=1, prewarm=["python"]) as engine:
        first_bytes: list[float] = []

        async def first_byte() -> None:
            started = time.perf_counter()
            async for event in engine.execute_stream(request):
                if event.type == "stdout" and len(first_bytes) < n:
                    first_bytes.append((time.perf_counter() - started) * 1000)

        await first_byte()
        first_bytes.clear()
        await engine._pool.settle()
        await timed(n, first_byte, engine._pool.settle)
        results["stream_first_byte"] = first_bytes
    return results


async def runtimes_warm(n: int, strategy: str, gap_s: float) -> dict[str, list[float]]:
    """Each runtime's warm runs with `gap_s` between one result and the next call, and no waiting
    for background work (a scrub, a refill, the next interpreter's start): what is not done by the
    next call shows in its latency, as it would for a caller at that cadence."""
    results = {}
    for runtime, code in HELLO.items():
        request = ExecutionRequest(code=code, runtime=runtime)
        async with DockerIsol8(pool_strategy=strategy, pool_size=1, prewarm=[runtime]) as engine:
            await engine.execute(request)
            samples = []
            for _ in range(n):
                await asyncio.sleep(gap_s)
                started = time.perf_counter()
                await engine.execute(request)
                samples.append((time.perf_counter() - started) * 1000)
            results[runtime] = samples
    return results


async def stop_latency(n: int) -> list[float]:
    """`stop()` of a default engine (secure, a pool of 1) right after one run: its refill is in flight."""
    samples = []
    for _ in range(n):
        engine = DockerIsol8(pool_size=1, prewarm=["python"])
        await engine.start()
        await engine.execute(ExecutionRequest(code=HELLO["python"]))
        started = time.perf_counter()
        await engine.stop()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def docker_start_rate(count: int, concurrency: int) -> float:
    """Sandboxes Docker can create and start per second here (`concurrency` at once, each removed
    after): the most `secure` runs a second this machine can sustain, whatever the pool does."""
    client = DockerClient()
    config = container_config(Isol8Options(), "isol8:python", "python")
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            sandbox = await Sandbox.launch(client, config)
            await sandbox.destroy()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return count / (time.perf_counter() - started)


async def secure_burst(count: int, interval_s: float) -> dict[str, float]:
    """`count` executions arriving every `interval_s` (each on its own, not waiting for the last) on
    a default `secure` engine with a pool of 1: the latencies, and how far the pool grew."""
    request = ExecutionRequest(code=HELLO["python"])
    async with DockerIsol8(pool_size=1, prewarm=["python"]) as engine:
        await asyncio.sleep(0.5)
        latencies: list[float] = []
        peak = 0

        async def one() -> None:
            nonlocal peak
            started = time.perf_counter()
            await engine.execute(request)
            latencies.append((time.perf_counter() - started) * 1000)
            peak = max(peak, *(state.ready + state.starting for state in engine.pool_state()), 0)

        tasks = []
        for _ in range(count):
            tasks.append(asyncio.ensure_future(one()))
            await asyncio.sleep(interval_s)
        await asyncio.gather(*tasks)
    return {**summary(latencies), "pool_peak": peak}


async def throughput(strategy: str, concurrency: int, seconds: float) -> float:
    request = ExecutionRequest(code=HELLO["python"])
    async with DockerIsol8(
        pool_strategy=strategy, pool_size=concurrency, prewarm=["python"], max_concurrent=concurrency
    ) as engine:
        await engine.execute(request)
        return await sustained_rate(engine, request, concurrency, seconds)


async def sustained_rate(engine: Engine, request: ExecutionRequest, concurrency: int, seconds: float) -> float:
    """Executions per second with `concurrency` callers back to back for `seconds` (every output checked)."""
    done = 0
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() - started < seconds:
            result = await engine.execute(request)
            if result.stdout != "1\n":
                raise RuntimeError(f"wrong output under load: {result.stdout!r} {result.stderr!r}")
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def resident_memory_with_pool(size: int) -> float:
    async with DockerIsol8(pool_strategy="fast", pool_size=size, prewarm=["python"]) as engine:
        for _ in range(20):
            await engine.execute(ExecutionRequest(code=HELLO["python"]))
        await engine._pool.settle()
        return rss_mb()


def cleanup_bench_containers() -> None:
    client = docker.from_env()
    for container in client.containers.list(all=True, filters={"label": "isol8.bench=1"}):
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)


async def gvisor(n: int) -> dict[str, dict[str, float]] | None:
    """Cold and warm runs under runsc next to runc, when the daemon has runsc registered."""
    if "runsc" not in docker.from_env().info().get("Runtimes", {}):
        return None
    request = ExecutionRequest(code=HELLO["python"])
    results = {}
    for runtime in ("runc", "runsc"):
        security = {"runtime": runtime} if runtime == "runsc" else {}
        async with DockerIsol8(security=security, pool_size=0) as engine:
            results[f"{runtime}_cold"] = summary(await timed(max(3, n // 6), lambda e=engine: e.execute(request)))
        async with DockerIsol8(security=security, pool_strategy="fast", pool_size=1, prewarm=["python"]) as engine:
            await engine.execute(request)
            results[f"{runtime}_warm"] = summary(
                await timed(n, lambda e=engine: e.execute(request), engine._pool.settle)
            )
    return results
