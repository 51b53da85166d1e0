"""Helpers for the workbench tests (imported as `tui_helpers`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.message import Message
from textual.pilot import Pilot

from isol8_tui.app import WorkbenchApp
from isol8_tui.screens.dialogs import NewSessionScreen
from isol8_tui.screens.main import MainScreen
from isol8_tui.sessions import Session


def main_screen(app: WorkbenchApp) -> MainScreen:
    screen = app.screen_stack[0]
    assert isinstance(screen, MainScreen)
    return screen


async def wait_for(pilot: Pilot[Any], predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Pause until `predicate()` holds; fail with the time it took otherwise."""
    loop_time = 0.0
    while not predicate():
        if loop_time > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await pilot.pause(0.02)
        loop_time += 0.02
    await pilot.pause()


async def session_from_dialog(pilot: Pilot[Any], name: str, *, stateful: bool = False) -> Session:
    """Create a session through the new-session dialog (its defaults, `stateful` ticked if asked)
    and wait until it is the selected one, named `name`."""
    app = pilot.app
    screen = main_screen(app)  # type: ignore[arg-type]
    await pilot.press("ctrl+n")
    await wait_for(pilot, lambda: isinstance(app.screen, NewSessionScreen))
    if stateful:
        await pilot.click("#ns-stateful")
    await pilot.press("ctrl+s")
    await wait_for(pilot, lambda: screen.selected is not None and screen.selected.name == name)
    session = screen.selected
    assert session is not None
    return session


async def run_and_wait(pilot: Pilot[Any], key: str = "ctrl+r", timeout: float = 5.0) -> MainScreen:
    screen = main_screen(pilot.app)  # type: ignore[arg-type]
    await wait_for(pilot, lambda: screen.started)
    before = screen.run_id
    await pilot.press(key)
    await wait_for(pilot, lambda: screen.run_id > before and screen.current_run is None, timeout)
    screen.outputs.flush()
    await pilot.pause()
    return screen


async def write_until_rerun(
    pilot: Pilot[Any], path: Path, text: str, messages: list[Message], timeout: float = 60
) -> None:
    """Write `text` to the watched `path` until a run finishes (the watcher may still be starting)."""
    from isol8_tui.bridge import RunFinished

    before = sum(isinstance(m, RunFinished) for m in messages)
    for _ in range(10):
        path.write_text(text)
        try:
            await wait_for(pilot, lambda: sum(isinstance(m, RunFinished) for m in messages) > before, timeout / 10)
            return
        except AssertionError:
            continue
    raise AssertionError(f"no re-run after writing {path}")
