"""The Ray cluster path (engine/cluster.py) against a local engine on the same machine.

`python -m bench.cluster_bench [--quick]` starts a three-node Ray cluster on this machine (the
cluster tests' LocalCluster) and measures, interleaving the two paths sample by sample:

- the p50 latency a cluster adds per execution: a persistent session (local DockerIsol8 against a
  RayIsol8 session) and a warm `fast` stateless run (local against the node engines);
- throughput at concurrency 16 through the cluster's three nodes, and locally.

Ray binds and advertises the machine's own address unless it has none, so this runs in a private
network namespace with only `lo` up: it re-runs itself under `unshare -n` (root) when it is not in
one. `python -m bench` calls it and adds its rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

from bench.engine_bench import HELLO, summary, sustained_rate
from engine import DockerIsol8, ExecutionRequest
from engine.cluster import RayIsol8
from engine.models import Isol8Options

REQUEST = ExecutionRequest(code=HELLO["python"])
CONCURRENCY = 16


async def _interleaved(n: int, local: Any, cluster: Any) -> tuple[list[float], list[float]]:
    """n samples of each engine's execute, alternating which goes first."""
    samples: tuple[list[float], list[float]] = ([], [])
    for i in range(n):
        order = [(0, local), (1, cluster)] if i % 2 == 0 else [(1, cluster), (0, local)]
        for index, engine in order:
            started = time.perf_counter()
            result = await engine.execute(REQUEST)
            samples[index].append((time.perf_counter() - started) * 1000)
            if result.stdout != "1\n":
                raise RuntimeError(f"wrong output: {result.stdout!r} {result.stderr!r}")
    return samples


async def _throughput(engine: Any, seconds: float) -> float:
    await asyncio.gather(*(engine.execute(REQUEST) for _ in range(CONCURRENCY)))  # warm every node
    return await sustained_rate(engine, REQUEST, CONCURRENCY, seconds)


async def measure(address: str, n: int, seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with (
        DockerIsol8(mode="persistent", runtime="python") as local,
        RayIsol8(address, Isol8Options(runtime="python"), session_id="bench") as cluster,
    ):
        await local.execute(REQUEST)
        await cluster.execute(REQUEST)
        results["persistent_local"], results["persistent_cluster"] = await _interleaved(n, local, cluster)
    fast = Isol8Options(pool_strategy="fast", pool_size=1, prewarm=["python"])
    async with DockerIsol8(fast) as local, RayIsol8(address, fast) as cluster:
        for _ in range(3):  # every node engine builds its pool
            await asyncio.gather(local.execute(REQUEST), *(cluster.execute(REQUEST) for _ in range(3)))
        results["warm_fast_local"], results["warm_fast_cluster"] = await _interleaved(n, local, cluster)
    many = Isol8Options(pool_strategy="fast", pool_size=CONCURRENCY, prewarm=["python"], max_concurrent=CONCURRENCY)
    async with DockerIsol8(many) as local:
        local_rate = await _throughput(local, seconds)
    async with RayIsol8(address, many) as cluster:
        cluster_rate = await _throughput(cluster, seconds)
    summarized: dict[str, Any] = {key: summary(value) for key, value in results.items()}
    for case in ("persistent", "warm_fast"):
        summarized[f"{case}_added_p50"] = summarized[f"{case}_cluster"]["p50"] - summarized[f"{case}_local"]["p50"]
    summarized["throughput_c16_local"] = local_rate
    summarized["throughput_c16_cluster"] = cluster_rate
    return summarized


def run_here(quick: bool) -> dict[str, Any]:
    """Start the three-node cluster (this process must be in a private network namespace) and measure."""
    import ray

    from tests.cluster.local_cluster import LocalCluster

    with LocalCluster(nodes=3) as cluster:
        ray.init(address=cluster.address, namespace="isol8", log_to_driver=False, logging_level="warning")
        try:
            while len([n for n in ray.nodes() if n["Alive"]]) < 3:
                time.sleep(0.5)
            return asyncio.run(measure(cluster.address, 20 if quick else 60, 3.0 if quick else 6.0))
        finally:
            ray.shutdown()


def run_in_namespace(quick: bool) -> dict[str, Any]:
    """`run_here` in a fresh network namespace with only loopback up (needs root for `unshare -n`)."""
    command = [sys.executable, "-m", "bench.cluster_bench", "--here", *(["--quick"] if quick else [])]
    script = 'ip link set lo up && exec "$@"'
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", script, "sh", *command], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the cluster benchmark failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument("--here", action="store_true", help="already in a private network namespace")
    args = parser.parse_args()
    results = run_here(args.quick) if args.here else run_in_namespace(args.quick)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
