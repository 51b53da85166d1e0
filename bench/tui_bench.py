"""Workbench timings: how soon `isol8 tui` takes input after launch, and how soon a re-run starts after
the watched file changes (the configured debounce aside).

    from bench import tui_bench
    tui_bench.measure_launch_to_ready()     # {"p50": ms, "p99": ms, "min": ms, "n": runs}
    tui_bench.measure_save_to_rerun()       # {"rerun_start": {...}, "after_detection": {...}, ...}

or `.venv/bin/python -m bench.tui_bench`. Targets (issue 8): ready within 1 s of launch (Docker start-up
aside) and a re-run starting within 200 ms of the file's change (debounce aside).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

READY_MARKER = "isol8-bench-ready-marker"


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p99": p99, "min": ordered[0], "max": ordered[-1], "n": len(ordered)}


def _launch_once(script: Path, timeout: float) -> float:
    """Milliseconds from spawning `isol8 tui script` in a pseudo-terminal to its first frame showing the
    file (the app then takes keys), then quit with ctrl+q."""
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "36", "TEXTUAL_ANIMATIONS": "none"}
    leader, follower = pty.openpty()
    with contextlib.suppress(Exception):
        import fcntl
        import struct
        import termios

        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 36, 120, 0, 0))
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "isol8_tui", "tui", str(script), "--no-watch"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        cwd=script.parent,
        close_fds=True,
        start_new_session=True,
    )
    os.close(follower)
    seen = b""
    ready_ms: float | None = None
    try:
        while time.perf_counter() - started < timeout:
            readable, _, _ = select.select([leader], [], [], 0.05)
            if not readable:
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            seen = (seen + chunk)[-200_000:]
            if READY_MARKER.encode() in seen:
                ready_ms = (time.perf_counter() - started) * 1000
                break
        if ready_ms is None:
            raise RuntimeError(f"the workbench showed no frame within {timeout} s")
        os.write(leader, b"\x11")  # ctrl+q
        deadline = time.perf_counter() + 30
        while process.poll() is None and time.perf_counter() < deadline:
            with contextlib.suppress(OSError):
                if select.select([leader], [], [], 0.1)[0]:
                    os.read(leader, 65536)
        return ready_ms
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(10)
        os.close(leader)


def measure_launch_to_ready(runs: int = 5, timeout: float = 20.0) -> dict[str, float]:
    """Launch-to-ready of the real `isol8 tui` command (Python start-up and imports included; Docker
    checks and the session's container start run in the background and are not waited for)."""
    with tempfile.TemporaryDirectory(prefix="isol8-tui-bench-") as tmp:
        script = Path(tmp) / "bench.py"
        script.write_text(f'# {READY_MARKER}\nprint("ready")\n')
        _launch_once(script, timeout)  # warm the OS file cache; not counted
        return _summary([_launch_once(script, timeout) for _ in range(runs)])


async def _save_to_rerun(runs: int, debounce_ms: int, fake: bool) -> dict[str, Any]:
    from textual.message import Message

    from engine.config import TuiSettings
    from isol8_tui.app import make_app
    from isol8_tui.bridge import OutputReceived, RunFinished, RunStarted, WatchedFileChanged
    from isol8_tui.screens.main import MainScreen

    backend = None
    if fake:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "tui"))
        from fake_engine import FakeBackend  # the tests' deterministic fake (not part of the package)

        backend = FakeBackend()
    stamps: dict[str, list[tuple[float, Message]]] = {"started": [], "detected": [], "output": [], "finished": []}

    def hook(message: Message) -> None:
        now = time.perf_counter()
        if isinstance(message, RunStarted):
            stamps["started"].append((now, message))
        elif isinstance(message, WatchedFileChanged):
            stamps["detected"].append((now, message))
        elif isinstance(message, OutputReceived):
            stamps["output"].append((now, message))
        elif isinstance(message, RunFinished):
            stamps["finished"].append((now, message))

    with tempfile.TemporaryDirectory(prefix="isol8-tui-bench-") as tmp:
        path = Path(tmp) / "watched.py"
        path.write_text('print("v0")\n')
        app = make_app(
            path,
            watch=True,
            settings=TuiSettings(watch_debounce_ms=debounce_ms),
            backend=backend,
            cursor_blink=False,
            animations=False,
        )
        rerun, after_detection, first_output = [], [], []
        async with app.run_test(size=(120, 36), message_hook=hook) as pilot:
            screen = app.screen_stack[0]
            assert isinstance(screen, MainScreen)
            deadline = time.perf_counter() + 120
            while not (screen.selected is not None and screen.selected.state == "idle"):
                if time.perf_counter() > deadline:
                    raise RuntimeError("the session did not start")
                await pilot.pause(0.05)
            await pilot.pause(0.5)  # the watcher is up
            for index in range(1, runs + 1):
                before = len(stamps["finished"])
                written = time.perf_counter()
                path.write_text(f'print("v{index}")\n')
                deadline = time.perf_counter() + 60
                while len(stamps["finished"]) == before:
                    if time.perf_counter() > deadline:
                        raise RuntimeError("no re-run after the file changed")
                    await pilot.pause(0.005)
                started_at = stamps["started"][-1][0]
                detected_at = stamps["detected"][-1][0]
                output_at = next((t for t, m in stamps["output"] if m.run_id == screen.run_id), started_at)  # type: ignore[attr-defined]
                rerun.append((started_at - written) * 1000 - debounce_ms)
                after_detection.append((started_at - detected_at) * 1000)
                first_output.append((output_at - written) * 1000 - debounce_ms)
                await pilot.pause(0.2)
    return {
        "debounce_ms": debounce_ms,
        "engine": "fake" if fake else "real",
        "rerun_start": _summary(rerun),
        "after_detection": _summary(after_detection),
        "first_output": _summary(first_output),
    }


def measure_save_to_rerun(runs: int = 10, debounce_ms: int = 50, fake: bool = False) -> dict[str, Any]:
    """Per change of the watched file, with the real engine (a warm persistent session) unless `fake`:
    `rerun_start`: from the write to the re-run's start, minus the debounce (quiet time) setting;
    `after_detection`: from the watcher reporting the change to the run's start (the app's own share);
    `first_output`: from the write to the program's first output, minus the debounce."""
    return asyncio.run(_save_to_rerun(runs, debounce_ms, fake))


def main() -> int:
    results = {"launch_to_ready": measure_launch_to_ready(), "save_to_rerun": measure_save_to_rerun()}
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
