"""How `isol8 run` prints executions, local or remote: the code's stdout on stdout (or `--out`),
install/setup output and stderr on stderr, `[ERR]`/`[WARN]` lines, and the network log table."""

from __future__ import annotations

import contextlib
import sys
from typing import TextIO

from rich.console import Console
from rich.table import Table

from engine.interface import Engine
from engine.models import ExecutionRequest, ExecutionResult, NetworkLogEntry
from isol8_tui.output import err, warn


async def run_requests(
    engine: Engine, requests: list[ExecutionRequest], *, stream: bool, out: TextIO, log_network: bool
) -> int:
    """Run the requests in order; stop at the first that exits non-zero; its exit code."""
    exit_code = 0
    for request in requests:
        if stream:
            exit_code = await _stream(engine, request, out, log_network)
        else:
            exit_code = _print_result(await engine.execute(request), out)
        if exit_code:
            break
    return exit_code


async def _stream(engine: Engine, request: ExecutionRequest, out: TextIO, log_network: bool) -> int:
    exit_code = 1
    network: list[NetworkLogEntry] = []
    async with contextlib.aclosing(engine.execute_stream(request)) as events:
        async for event in events:
            if event.entry is not None:
                network.append(event.entry)
            elif event.type == "stdout" and event.phase in ("code", None):
                out.write(event.data)
                out.flush()
            elif event.type in ("stdout", "stderr"):  # install and setup output stays off the program's stdout
                sys.stderr.write(event.data)
                sys.stderr.flush()
            elif event.type == "error":
                err(event.data)
            elif event.type == "exit":
                exit_code = int(event.data)
                if event.truncated:
                    warn("Output was truncated")
    if log_network or network:
        print_network_log(network)
    return exit_code


def _print_result(result: ExecutionResult, out: TextIO) -> int:
    out.write(result.stdout)
    out.flush()
    sys.stderr.write(result.stderr)
    if result.truncated:
        warn("Output was truncated")
    if result.network_logs is not None:
        print_network_log(result.network_logs)
    return result.exit_code


def print_network_log(entries: list[NetworkLogEntry]) -> None:
    table = Table("Action", "Method", "Host", "Path", "Rule", "Status", "In", "Out", "ms", title="Network log")
    for e in entries:
        style = "red" if e.action == "BLOCK" else None
        table.add_row(
            e.action, e.method, f"{e.host}:{e.port}", e.path or "", e.rule or "", str(e.status or ""),
            str(e.bytes_in), str(e.bytes_out), f"{e.duration_ms:.0f}", style=style,
        )  # fmt: skip
    Console(stderr=True, width=None if sys.stderr.isatty() else 200).print(table)
