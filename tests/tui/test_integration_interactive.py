"""The workbench's interactive run on the real engine and Docker: input() answered through the terminal
screen, and a program that colours only terminals shows its colours there (and plain in the pane)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tui_helpers import main_screen, wait_for

from engine.config import TuiSettings
from engine.docker import DockerClient
from isol8_tui.app import make_app
from isol8_tui.screens.terminal import TerminalScreen

pytestmark = pytest.mark.docker


async def test_ls_colours_come_through_as_styled_text(docker_client: DockerClient, workdir: Path) -> None:
    path = workdir / "list.sh"
    path.write_text('mkdir -p somedir && touch plain.txt && ls --color=auto\nread -r answer\necho "said $answer"\n')
    app = make_app(path, watch=False, settings=TuiSettings(), cursor_blink=False, animations=False)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.selected is not None and screen.selected.state == "idle", timeout=60)
        await pilot.press("shift+f5")
        await wait_for(pilot, lambda: isinstance(app.screen, TerminalScreen))
        run = app.screen.run  # type: ignore[attr-defined]
        await wait_for(pilot, lambda: any("somedir" in line for line in run.text.plain()), timeout=60)
        [listing] = [line for line in run.text.lines if "somedir" in line.plain]
        start = listing.plain.index("somedir")
        coloured = [span for span in listing.spans if span.start <= start < span.end]
        assert coloured and any(getattr(span.style, "color", None) is not None for span in coloured)
        assert "\x1b" not in listing.plain
        await pilot.press("y", "e", "s", "enter")
        await wait_for(pilot, lambda: run.ended, timeout=60)
        assert "said yes" in run.text.plain() and run.status.exit_code == 0
        await pilot.press("ctrl+right_square_bracket")
        await wait_for(pilot, lambda: app.screen is screen)
        screen.outputs.flush()
        pane = list(screen.outputs.stdout.lines)
        assert any("somedir" in line for line in pane) and "said yes" in pane
        assert not any("\x1b" in line or "\r" in line for line in pane)


async def test_ctrl_c_interrupts_a_real_program(docker_client: DockerClient, workdir: Path) -> None:
    path = workdir / "wait.py"
    path.write_text(
        "import time\ntry:\n    print('waiting', flush=True)\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('interrupted')\n"
    )
    app = make_app(path, watch=False, settings=TuiSettings(), cursor_blink=False, animations=False)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.selected is not None and screen.selected.state == "idle", timeout=60)
        await pilot.press("shift+f5")
        await wait_for(pilot, lambda: isinstance(app.screen, TerminalScreen))
        run = app.screen.run  # type: ignore[attr-defined]
        await wait_for(pilot, lambda: "waiting" in run.text.plain(), timeout=60)
        await pilot.press("ctrl+c")
        await wait_for(pilot, lambda: run.ended, timeout=60)
        assert run.text.plain()[-2:] == ["^Cinterrupted", ""]  # the terminal echoes ^C, no newline
        assert run.status.exit_code == 0
