"""What the MCP layer costs: `run_code` over stdio (`isol8 mcp`, the SDK's client) against the same
code through an in-process engine, one after the other, measured in the same run on this machine.

The figure to watch is the ratio of the medians (MCP over in-process): the protocol, the policy and
the stream-to-result step, on the same warm pool strategy. Not a test: nothing here fails a build.

    .venv/bin/python -m bench.mcp_bench [--runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mcp import ClientSession, StdioServerParameters, stdio_client

from engine import DockerIsol8, ExecutionRequest

ISOL8 = str(Path(sys.executable).with_name("isol8"))
CODE = "print(1)"


async def over_mcp(runs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "isol8.config.json").write_text("{}")  # the defaults, not the caller's config
        params = StdioServerParameters(command=ISOL8, args=["mcp"], cwd=tmp, env=dict(os.environ))
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            await session.call_tool("run_code", {"code": CODE})  # warms the pool
            samples = []
            for _ in range(runs):
                started = time.perf_counter()
                result = await session.call_tool("run_code", {"code": CODE})
                samples.append((time.perf_counter() - started) * 1000)
                assert not result.is_error, result.content
            return samples


async def in_process(runs: int) -> list[float]:
    async with DockerIsol8() as engine:
        await engine.execute(ExecutionRequest(code=CODE))
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            await engine.execute(ExecutionRequest(code=CODE))
            samples.append((time.perf_counter() - started) * 1000)
        return samples


def run(runs: int) -> dict[str, Any]:
    engine = asyncio.run(in_process(runs))
    mcp = asyncio.run(over_mcp(runs))
    return {
        "in_process_p50_ms": statistics.median(engine),
        "mcp_stdio_p50_ms": statistics.median(mcp),
        "ratio_p50": statistics.median(mcp) / statistics.median(engine),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    print(json.dumps(run(parser.parse_args().runs), indent=2))


if __name__ == "__main__":
    main()
