"""How `isol8 run` prints executions, local or remote: the code's stdout on stdout (or `--out`),
install/setup output and stderr on stderr, `[ERR]`/`[WARN]` lines, the network log table, and a
stateful session's rich results: each image or PDF written to a new file (named on stderr), the
others' text after the output. With `--json`, each execution's whole result as one JSON line."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.table import Table

from engine.interface import Engine
from engine.models import BINARY_MIME_TYPES, ExecutionRequest, ExecutionResult, MimeType, NetworkLogEntry, RichResult
from isol8_tui.output import err, info, warn

RESULT_FILES: dict[MimeType, str] = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/svg+xml": ".svg",
    "application/pdf": ".pdf",
}
"""Result values written to files (and the files' suffix); a bundle with none of them is printed."""
RESULT_STEM = "result-"


@dataclass(frozen=True)
class Printing:
    """Where a run's output goes: `out` (stdout or `--out`), result files into `results_dir`, and
    whether each result is printed whole as JSON instead."""

    out: TextIO
    results_dir: Path = Path()
    as_json: bool = False


async def run_requests(
    engine: Engine, requests: list[ExecutionRequest], *, stream: bool, printing: Printing, log_network: bool
) -> int:
    """Run the requests in order; stop at the first that exits non-zero; its exit code."""
    exit_code = 0
    for request in requests:
        if stream and not printing.as_json:
            exit_code = await _stream(engine, request, printing, log_network)
        else:
            exit_code = _print_result(await engine.execute(request), printing)
        if exit_code:
            break
    return exit_code


def show_result(result: RichResult, printing: Printing) -> None:
    """Each image or PDF of `result` in a new file of `results_dir`, named on stderr; a result with
    none is printed as its text."""
    written = False
    for mime, suffix in RESULT_FILES.items():
        if mime in result.data:
            data = result.binary(mime) if mime in BINARY_MIME_TYPES else result.data[mime].encode()
            info(f"Result {mime} written to {new_file(printing.results_dir, suffix, data)}")
            written = True
    text = result.text()
    if not written and text:
        printing.out.write(text if text.endswith("\n") else text + "\n")
        printing.out.flush()


def new_file(directory: Path, suffix: str, data: bytes) -> Path:
    """`data` in the first free `result-N<suffix>` of `directory` (made if missing): created
    exclusively, so an existing file is never overwritten, even one made meanwhile."""
    directory.mkdir(parents=True, exist_ok=True)
    number = 1
    while True:
        path = directory / f"{RESULT_STEM}{number}{suffix}"
        try:
            with path.open("xb") as file:
                file.write(data)
        except FileExistsError:
            number += 1
            continue
        return path


async def _stream(engine: Engine, request: ExecutionRequest, printing: Printing, log_network: bool) -> int:
    exit_code = 1
    out = printing.out
    network: list[NetworkLogEntry] = []
    async with contextlib.aclosing(engine.execute_stream(request)) as events:
        async for event in events:
            if event.entry is not None:
                network.append(event.entry)
            elif event.result is not None:
                show_result(event.result, printing)
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


def _print_result(result: ExecutionResult, printing: Printing) -> int:
    out = printing.out
    if printing.as_json:
        out.write(result.to_json() + "\n")
        out.flush()
        return result.exit_code
    out.write(result.stdout)
    out.flush()
    sys.stderr.write(result.stderr)
    for rich in result.results or []:
        show_result(rich, printing)
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
