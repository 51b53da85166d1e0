"""The workbench on the real engine: a stateful python session keeps its variables between runs, and
an object's `_repr_html_` table comes back as a result the workbench shows as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.message import Message
from textual.pilot import Pilot
from textual.widgets import DataTable, Input
from tui_helpers import main_screen, run_and_wait, wait_for, write_until_rerun

from engine.config import TuiSettings
from engine.docker import DockerClient
from isol8_tui.app import make_app
from isol8_tui.screens.dialogs import PathScreen
from isol8_tui.screens.main import MainScreen
from isol8_tui.sessions import RunSettings, Session, SessionSpec
from isol8_tui.widgets.results import ResultView

pytestmark = pytest.mark.docker


async def stateful_session(pilot: Pilot[Any], spec: SessionSpec | None = None) -> Session:
    """A stateful python session on the real engine (or `spec`'s), selected and idle."""
    screen = main_screen(pilot.app)  # type: ignore[arg-type]
    await wait_for(pilot, lambda: screen.started, timeout=60)
    session = screen.create_session(spec or SessionSpec("python", stateful=True))
    assert session is not None
    await wait_for(pilot, lambda: session.state == "idle", timeout=90)
    return session


def status_of(screen: MainScreen) -> str:
    return str(screen.runbar.query_one("#status").render())


DEFINE = '''\
x = 41
class Scores:
    """A DataFrame's display protocol, without pandas."""

    def _repr_html_(self):
        return "<table><thead><tr><th>name</th><th>score</th></tr></thead>" \\
            "<tbody><tr><td>ada</td><td>36</td></tr><tr><td>alan</td><td>41</td></tr></tbody></table>"

    def __repr__(self):
        return "Scores(2 rows)"
'''

USE = "print(x + 1)\nScores()\n"


async def test_variables_survive_two_runs_and_an_html_table_is_shown_as_a_table(
    docker_client: DockerClient, workdir: Path
) -> None:
    path = workdir / "analysis.py"
    path.write_text(DEFINE)
    app = make_app(path, watch=False, cursor_blink=False, animations=False, settings=TuiSettings(images=False))
    async with app.run_test(size=(120, 36)) as pilot:
        screen = main_screen(app)
        await stateful_session(pilot)

        await run_and_wait(pilot, timeout=90)
        status = status_of(screen)
        assert "✓ exit 0" in status and "state fresh" in status, status

        screen.editor_pane.editor.text = USE
        await run_and_wait(pilot, timeout=90)
        status = status_of(screen)
        assert "✓ exit 0" in status and "state kept" in status, (status, screen.outputs.stderr.lines)
        assert screen.outputs.stdout.lines == ["42", ""]
        [view] = screen.result_pane.query(ResultView)
        assert view.result.is_main_result and view.result.text() == "Scores(2 rows)"
        assert view.shown.kind == "table"
        table = view.query_one(DataTable)
        assert [str(column.label).strip() for column in table.columns.values()] == ["name", "score"]
        assert [[str(cell).strip() for cell in table.get_row_at(i)] for i in range(table.row_count)] == [
            ["ada", "36"],
            ["alan", "41"],
        ]


PLOT = """\
import struct, zlib

def png(width, height):
    rows = b"".join(b"\\x00" + b"\\xff\\x80\\x00" * width for _ in range(height))
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")

class Plot:
    def _repr_png_(self):
        return png(3, 2)

Plot()
"""


async def test_an_image_result_is_named_by_its_line_and_saved_as_its_png(
    docker_client: DockerClient, workdir: Path
) -> None:
    path = workdir / "plot.py"
    path.write_text(PLOT)
    app = make_app(path, watch=False, cursor_blink=False, animations=False, settings=TuiSettings(images=False))
    async with app.run_test(size=(120, 36)) as pilot:
        screen = main_screen(app)
        await stateful_session(pilot)
        await run_and_wait(pilot, timeout=90)
        [view] = screen.result_pane.query(ResultView)
        assert view.shown.kind == "image", view.result.data.keys()
        caption = str(view.query_one(".result-caption").render())
        assert caption.startswith("image/png · 3×2 px · "), caption
        view.focus()
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, PathScreen))
        app.screen.query_one("#path-input", Input).value = str(workdir / "plot.png")
        await pilot.press("enter")
        await wait_for(pilot, lambda: (workdir / "plot.png").exists())
        saved = (workdir / "plot.png").read_bytes()
        assert saved.startswith(b"\x89PNG\r\n\x1a\n") and saved == view.result.binary("image/png")


async def test_re_running_on_save_keeps_the_interpreters_variables(docker_client: DockerClient, workdir: Path) -> None:
    path = workdir / "cell.py"
    path.write_text("x = 41\n")
    settings = TuiSettings(watch_debounce_ms=50, images=False)
    app = make_app(path, watch=True, cursor_blink=False, animations=False, settings=settings)
    messages: list[Message] = []
    async with app.run_test(size=(120, 36), message_hook=messages.append) as pilot:
        screen = main_screen(app)
        session = await stateful_session(pilot)
        await run_and_wait(pilot, timeout=90)
        await write_until_rerun(pilot, path, "x + 1\n", messages, timeout=120)
        await wait_for(pilot, lambda: screen.current_run is None, timeout=60)
        assert screen.selected is session
        status = status_of(screen)
        assert "✓ exit 0" in status and "state kept" in status, (status, screen.outputs.stderr.lines)
        assert [v.result.text() for v in screen.result_pane.query(ResultView)] == ["42"]


async def test_a_run_killed_at_the_memory_limit_says_in_the_status_that_the_state_is_lost(
    docker_client: DockerClient, workdir: Path
) -> None:
    path = workdir / "hog.py"
    path.write_text("x = 1\n")
    app = make_app(path, watch=False, cursor_blink=False, animations=False, settings=TuiSettings(images=False))
    async with app.run_test(size=(160, 36), notifications=True) as pilot:
        screen = main_screen(app)
        await stateful_session(pilot, SessionSpec("python", settings=RunSettings(memory_limit="128m"), stateful=True))
        await run_and_wait(pilot, timeout=90)
        screen.editor_pane.editor.text = "hog = b'x' * (400 << 20)\n"
        await run_and_wait(pilot, timeout=90)
        status = status_of(screen)
        assert "out of memory" in status and "state lost: OUT OF MEMORY; INTERPRETER STATE LOST" in status, status
        assert any("killed at the memory limit" in str(n.message) for n in app._notifications)
        screen.editor_pane.editor.text = "print('x' in globals())\n"
        await run_and_wait(pilot, timeout=90)
        assert screen.outputs.stdout.lines == ["False", ""]
        assert "state fresh" in status_of(screen)
