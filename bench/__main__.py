"""The benchmark command: `.venv/bin/python -m bench [--quick] [--json FILE]`.

Measures the Docker baselines and isol8 in one run on this machine, prints a table with each
target next to its measured figure (as a ratio to the baselines where the target is one), and
writes everything as JSON. Not a test: nothing here fails a build.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import cluster_bench
from bench import engine_bench as eb


def _ms(value: float) -> str:
    return f"{value:.1f} ms"


def run(quick: bool) -> dict[str, Any]:
    n = 20 if quick else 60
    seconds = 3.0 if quick else 6.0
    console = Console(stderr=True)
    results: dict[str, Any] = {}
    with console.status("baselines: docker run --rm, Engine API exec"):
        results["docker_run"] = eb.summary(eb.docker_run_baseline(max(5, n // 4)))
        results["engine_api_exec"] = eb.summary(eb.exec_baseline(n))
    with console.status("isol8 latency: cold, warm secure, warm fast, persistent, stream first byte"):
        results["latency"] = {k: eb.summary(v) for k, v in asyncio.run(eb.engine_latency(n)).items()}
    runs = max(10, n // 3)
    for strategy, gap_s in (("fast", 0.05), ("secure", 0.25)):
        with console.status(f"isol8 warm runs, every runtime, {strategy}, {gap_s * 1000:.0f} ms apart"):
            samples = asyncio.run(eb.runtimes_warm(runs, strategy, gap_s))
        results[f"runtimes_{strategy}"] = {k: eb.summary(v) for k, v in samples.items()}
    with console.status("stop() of an engine with a pool of 1 after one run"):
        results["stop"] = eb.summary(asyncio.run(eb.stop_latency(max(5, n // 6))))
    with console.status("Docker's own create and start rate, 4 at once"):
        results["docker_start_rate"] = asyncio.run(eb.docker_start_rate(max(8, n // 3), 4))
    with console.status("a burst on a secure pool: one execution every 100 ms"):
        results["secure_burst"] = asyncio.run(eb.secure_burst(max(10, n // 2), 0.1))
    results["throughput"] = {}
    for strategy in ("fast", "secure"):
        for concurrency in (1, 4, 16):
            with console.status(f"throughput: {strategy}, concurrency {concurrency}"):
                rate = asyncio.run(eb.throughput(strategy, concurrency, seconds))
            results["throughput"][f"{strategy}_c{concurrency}"] = rate
    with console.status("engine resident memory with a pool of 4"):
        results["rss_mb_pool4"] = asyncio.run(eb.resident_memory_with_pool(4))
    with console.status("gVisor (runsc) against runc"):
        results["gvisor"] = asyncio.run(eb.gvisor(max(10, n // 3)))
    with console.status("a three-node Ray cluster on this machine (private network namespace)"):
        results["cluster"] = cluster_bench.run_in_namespace(quick)
    eb.cleanup_bench_containers()
    return results


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(target, measured, ratio/remark, met) for the issue's targets."""
    lat = results["latency"]
    exec_p50 = results["engine_api_exec"]["p50"]
    run_p50 = results["docker_run"]["p50"]
    warm = lat["warm_fast"]
    rows = [
        ("warm python p50 <= 15 ms", _ms(warm["p50"]), f"{warm['p50'] / exec_p50:.2f}x exec", warm["p50"] <= 15),
        ("warm python p50 <= 1/3 exec", _ms(warm["p50"]), f"exec {_ms(exec_p50)}", warm["p50"] <= exec_p50 / 3),
        ("warm python p99 <= 40 ms", _ms(warm["p99"]), "", warm["p99"] <= 40),
        ("persistent p50 <= 10 ms", _ms(lat["persistent"]["p50"]), "", lat["persistent"]["p50"] <= 10),
        (
            "cold <= 1.1x docker run --rm",
            _ms(lat["cold"]["p50"]),
            f"{lat['cold']['p50'] / run_p50:.2f}x ({_ms(run_p50)})",
            lat["cold"]["p50"] <= 1.1 * run_p50,
        ),
        (
            "fast c4 >= 60 runs/s",
            f"{results['throughput']['fast_c4']:.1f}/s",
            "",
            results["throughput"]["fast_c4"] >= 60,
        ),
        (
            "secure c4 >= 8 runs/s",
            f"{results['throughput']['secure_c4']:.1f}/s",
            "",
            results["throughput"]["secure_c4"] >= 8,
        ),
        ("engine RSS, pool of 4 <= 120 MB", f"{results['rss_mb_pool4']:.0f} MB", "", results["rss_mb_pool4"] <= 120),
        (
            "cold <= 0.5x docker run --rm",
            _ms(lat["cold"]["p50"]),
            f"{lat['cold']['p50'] / run_p50:.2f}x ({_ms(run_p50)})",
            lat["cold"]["p50"] <= 0.5 * run_p50,
        ),
    ]
    fast = results["runtimes_fast"]
    for runtime in ("node", "bun", "deno"):
        p50 = fast[runtime]["p50"]
        rows.append(
            (
                f"fast {runtime}, 50 ms apart, p50 <= 15 ms and <= 1/5 exec",
                _ms(p50),
                f"{p50 / exec_p50:.2f}x exec",
                p50 <= 15 and p50 <= exec_p50 / 5,
            )
        )
    for runtime in ("python", "bash"):
        p50 = fast[runtime]["p50"]
        rows.append((f"fast {runtime}, 50 ms apart, p50 <= 8 ms", _ms(p50), "", p50 <= 8))
    for runtime, stats in results["runtimes_secure"].items():
        rows.append((f"secure {runtime}, 250 ms apart, p50 <= 20 ms", _ms(stats["p50"]), "", stats["p50"] <= 20))
    stop = results["stop"]["p50"]
    rows.append(("stop(), pool of 1 after one run, p50 <= 60 ms", _ms(stop), "", stop <= 60))
    cluster = results["cluster"]
    for case in ("persistent", "warm_fast"):
        added = cluster[f"{case}_added_p50"]
        local = cluster[f"{case}_local"]["p50"]
        target = f"cluster adds <= 3 ms p50 ({case.replace('_', ' ')})"
        rows.append((target, _ms(added), f"local {_ms(local)}", added <= 3))
    return rows


def report(results: dict[str, Any]) -> None:
    console = Console()
    table = Table("case", "p50", "p99", "min", "n", title="Latency, python print(1) (execute to result)")
    table.add_row("baseline: docker run --rm", *_row(results["docker_run"]))
    table.add_row("baseline: Engine API exec", *_row(results["engine_api_exec"]))
    for name, stats in results["latency"].items():
        table.add_row(f"isol8 {name.replace('_', ' ')}", *_row(stats))
    console.print(table)
    for strategy, gap in (("fast", "50 ms"), ("secure", "250 ms")):
        title = f"Warm runs ({strategy} pool, {gap} between calls), print(1)-sized programs"
        runtimes = Table("runtime", "p50", "p99", "min", "n", title=title)
        for name, stats in results[f"runtimes_{strategy}"].items():
            runtimes.add_row(name, *_row(stats))
        console.print(runtimes)
    burst = results["secure_burst"]
    bursts = Table("case", "p50", "p99", "min", "n", title="Secure pool under a burst (python, one every 100 ms)")
    bursts.add_row(f"pool grew to {burst['pool_peak']:.0f} ready or starting", *_row(burst))
    console.print(bursts)
    rate = results["docker_start_rate"]
    console.print(
        f"Docker's own create and start rate here: {rate:.1f} sandboxes/s (4 at once), so `secure` "
        f"sustains at most ~{rate:.0f} runs/s on this machine whatever the pool does; "
        f"stop() p50 {_ms(results['stop']['p50'])}."
    )
    rates = Table("strategy", "c=1", "c=4", "c=16", title="Throughput (runs/s), python print(1)")
    for strategy in ("fast", "secure"):
        rates.add_row(strategy, *(f"{results['throughput'][f'{strategy}_c{c}']:.1f}" for c in (1, 4, 16)))
    console.print(rates)
    cluster = results["cluster"]
    ray_table = Table("case", "local p50", "cluster p50", "added p50", title="Ray cluster, 3 nodes on this machine")
    for case in ("persistent", "warm_fast"):
        local, remote = cluster[f"{case}_local"]["p50"], cluster[f"{case}_cluster"]["p50"]
        ray_table.add_row(case.replace("_", " "), _ms(local), _ms(remote), _ms(remote - local))
    rates_c16 = (f"{cluster[f'throughput_c16_{side}']:.1f}" for side in ("local", "cluster"))
    ray_table.add_row("throughput c=16 (runs/s)", *rates_c16, "")
    console.print(ray_table)
    if results.get("gvisor"):
        isolation = Table("runtime", "cold p50", "warm p50", "warm p99", title="Stronger isolation: gVisor (runsc)")
        for runtime in ("runc", "runsc"):
            cold, warm = results["gvisor"][f"{runtime}_cold"], results["gvisor"][f"{runtime}_warm"]
            isolation.add_row(runtime, _ms(cold["p50"]), _ms(warm["p50"]), _ms(warm["p99"]))
        console.print(isolation)
    goals = Table("target", "measured", "against the baselines", "met", title="Targets")
    for target, measured, ratio, met in targets(results):
        goals.add_row(target, measured, ratio, "yes" if met else "[red]no[/red]")
    console.print(goals)


def _row(stats: dict[str, float]) -> list[str]:
    return [_ms(stats["p50"]), _ms(stats["p99"]), _ms(stats["min"]), str(int(stats["n"]))]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    results = run(args.quick)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
