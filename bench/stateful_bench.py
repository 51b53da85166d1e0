"""What a stateful session's cell costs against a run in a plain persistent session of the same runtime
(each a new process, on the agent's fastest path: Python's forked zygote, Node's pre-started
interpreter, bash), samples interleaved in the same run on this machine. Also the cell that starts
the interpreter (the first of a session, or the first after a reset).

The figures to watch: the ratio of the medians (cell over run; below 1 is a cell cheaper than a new
process) and the first cell's cost. Not a test: nothing here fails a build.

    .venv/bin/python -m bench.stateful_bench [--runs 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from engine import DockerIsol8, ExecutionRequest

CODES = {"python": "x = 1\nx + 1", "node": "var x = 1; x + 1", "bash": "x=1; echo $((x + 1))"}


async def timed(engine: DockerIsol8, request: ExecutionRequest) -> float:
    started = time.perf_counter()
    result = await engine.execute(request)
    assert result.exit_code == 0, result.stderr
    return (time.perf_counter() - started) * 1000


async def measure(runtime: str, runs: int) -> dict[str, Any]:
    request = ExecutionRequest(code=CODES[runtime], runtime=runtime)
    async with (
        DockerIsol8(mode="persistent", stateful=True) as stateful,
        DockerIsol8(mode="persistent") as plain,
    ):
        await timed(plain, request)
        await timed(stateful, request)
        cells, processes, starts = [], [], []
        for index in range(runs):
            processes.append(await timed(plain, request))
            if index % 10 == 0:  # a fresh interpreter now and then: what a first cell costs
                await stateful.reset()
                starts.append(await timed(stateful, request))
            else:
                cells.append(await timed(stateful, request))
    cell, process = statistics.median(cells), statistics.median(processes)
    return {
        "runtime": runtime,
        "cell_p50_ms": round(cell, 2),
        "new_process_p50_ms": round(process, 2),
        "cell_over_process": round(cell / process, 2),
        "first_cell_p50_ms": round(statistics.median(starts), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    for runtime in CODES:
        print(json.dumps(asyncio.run(measure(runtime, args.runs))))


if __name__ == "__main__":
    main()
