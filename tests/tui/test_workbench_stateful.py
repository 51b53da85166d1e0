"""Stateful sessions in the workbench (on the fake engine): the dialog's toggle, the project file, the
sidebar's mark, the interpreter's state in the status line, reset, re-running on save, and the
results under the output (tables, images, saving one)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from fake_engine import LOST, FakeBackend, FakeEngine
from scenes import ANALYSIS, STATEFUL
from textual.message import Message
from textual.widgets import DataTable, Input, Markdown
from textual_image.widget import Image as TerminalImage
from tui_helpers import main_screen, run_and_wait, session_from_dialog, wait_for, write_until_rerun

from engine.config import TuiSettings
from engine.errors import NotStateful
from engine.models import RichResult
from isol8_tui import rich_results
from isol8_tui.project import PROJECT_FILE
from isol8_tui.screens.dialogs import NewSessionScreen, PathScreen
from isol8_tui.screens.main import MainScreen
from isol8_tui.sessions import Session
from isol8_tui.widgets.results import ResultView
from isol8_tui.widgets.sessions import session_prompt

SIZE = (150, 40)
NO_IMAGES = TuiSettings(images=False)


def status_of(screen: MainScreen) -> str:
    return str(screen.runbar.query_one("#status").render())


def results_of(screen: MainScreen) -> list[ResultView]:
    return list(screen.result_pane.query(ResultView))


async def stateful_session(pilot, screen: MainScreen) -> Session:  # type: ignore[no-untyped-def]
    await wait_for(pilot, lambda: screen.started)
    session = screen.create_session(STATEFUL)
    assert session is not None and session.stateful
    await wait_for(pilot, lambda: session.state == "idle")
    return session


async def run_code(pilot, screen: MainScreen, code: str) -> None:  # type: ignore[no-untyped-def]
    screen.editor_pane.editor.text = code
    await run_and_wait(pilot)


# --- the dialog, the project file, the sidebar -------------------------------------------------------------


async def test_the_dialogs_toggle_makes_a_stateful_session_that_the_project_file_brings_back(
    fake_app, workdir: Path
) -> None:
    app = fake_app("x = 41\n")
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        session = await session_from_dialog(pilot, "python-2", stateful=True)
        assert session.stateful
        engine = session.engine
        assert isinstance(engine, FakeEngine) and engine.options.stateful and engine.options.mode == "persistent"
        assert "stateful" in str(screen.topbar.query_one("#target").render())
    saved = json.loads((workdir / PROJECT_FILE).read_text())
    assert [entry["stateful"] for entry in saved["sessions"]] == [False, True]

    app = fake_app("x = 41\n", backend=FakeBackend())
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        restored = [s for s in screen.sessions_in_order() if not s.scratch]
        assert [s.stateful for s in restored] == [False, True]
        assert restored[1].engine.options.stateful  # type: ignore[attr-defined]


async def test_the_dialog_makes_a_session_that_is_not_stateful_unless_ticked(fake_app) -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        session = await session_from_dialog(pilot, "python-2")
        assert not session.stateful and not session.engine.options.stateful  # type: ignore[attr-defined]


def test_the_sidebar_marks_stateful_sessions_only(backend: FakeBackend) -> None:
    from isol8_tui.bridge import EngineBridge
    from isol8_tui.sessions import SessionSpec

    bridge = EngineBridge(backend)
    plain = bridge.create_session(SessionSpec("python"))
    stateful = bridge.create_session(STATEFUL)
    scratch = bridge.create_scratch()
    assert "stateful" in session_prompt(stateful, 0, selected=False).plain.splitlines()[1]
    assert "stateful" not in session_prompt(plain, 0, selected=False).plain
    assert "stateful" not in session_prompt(scratch, 0, selected=False).plain


# --- runs: state, reset, re-run on save, loss ---------------------------------------------------------------


async def test_variables_survive_runs_and_the_status_says_fresh_then_kept(fake_app) -> None:
    app = fake_app("x = 41\n", settings=NO_IMAGES)
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await stateful_session(pilot, screen)
        await run_and_wait(pilot)
        assert "state fresh" in status_of(screen) and results_of(screen) == []
        await run_code(pilot, screen, "x + 1\n")
        assert "✓ exit 0" in status_of(screen) and "state kept" in status_of(screen)
        [view] = results_of(screen)
        assert view.result.text() == "42" and view.result.is_main_result
        assert "main result" in str(view.border_title)


async def test_a_session_that_is_not_stateful_keeps_no_variables_and_says_nothing_of_state(fake_app) -> None:
    app = fake_app("x = 41\n")
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.selected is not None and screen.selected.state == "idle")
        await run_and_wait(pilot)
        await run_code(pilot, screen, "x + 1\n")
        assert "state" not in status_of(screen) and results_of(screen) == []
        assert not screen.result_pane.display


async def test_reset_ends_the_interpreter_so_the_next_run_starts_fresh(fake_app) -> None:
    app = fake_app("x = 41\n", settings=NO_IMAGES)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = main_screen(app)
        await stateful_session(pilot, screen)
        await run_and_wait(pilot)
        await pilot.press("shift+f9")
        await wait_for(pilot, lambda: any("was reset" in str(n.message) for n in app._notifications))
        await run_code(pilot, screen, "x + 1\n")
        assert "state fresh" in status_of(screen) and "✗ exit 1" in status_of(screen)
        assert screen.outputs.stderr.lines[-2] == "NameError: name 'x' is not defined"


async def test_reset_is_refused_with_the_reason_on_a_session_that_is_not_stateful(fake_app) -> None:
    app = fake_app("x = 41\n")
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.selected is not None and screen.selected.state == "idle")
        reason = str(NotStateful.for_reset())
        for session in (screen.selected, screen.scratch):
            assert session is not None
            app.clear_notifications()
            screen.select_session(session)
            await pilot.press("shift+f9")
            await wait_for(pilot, lambda: any(reason in str(n.message) for n in app._notifications))
            [refusal] = list(app._notifications)
            assert refusal.title == f"{session.name} not reset" and refusal.severity == "warning"


async def test_re_running_on_save_runs_on_the_same_interpreter(fake_app, workdir: Path) -> None:
    app = fake_app("x = 41\n", watch=True, settings=TuiSettings(watch_debounce_ms=20, images=False))
    messages: list[Message] = []
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        screen = main_screen(app)
        session = await stateful_session(pilot, screen)
        await run_and_wait(pilot)
        await write_until_rerun(pilot, workdir / "main.py", "x * 2\n", messages, timeout=30)
        await wait_for(pilot, lambda: screen.current_run is None)
        assert screen.selected is session
        assert "state kept" in status_of(screen)
        assert [view.result.text() for view in results_of(screen)] == ["82"]


async def test_a_run_killed_at_the_memory_limit_says_the_state_is_lost(fake_app) -> None:
    app = fake_app("x = 41\n", settings=NO_IMAGES)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = main_screen(app)
        await stateful_session(pilot, screen)
        await run_and_wait(pilot)
        await run_code(pilot, screen, "data = bytearray(10**10)\n")
        status = status_of(screen)
        assert "out of memory" in status and "state lost: OUT OF MEMORY; INTERPRETER STATE LOST" in status
        assert f"--- OUT OF MEMORY; {LOST} ---" in screen.outputs.stderr.lines
        assert any(n.title == "python-2: state lost" and LOST in n.message for n in app._notifications)
        await run_code(pilot, screen, "x + 1\n")
        assert "state fresh" in status_of(screen)
        assert screen.outputs.stderr.lines[-2] == "NameError: name 'x' is not defined"


# --- results ----------------------------------------------------------------------------------------------


async def test_a_table_and_a_figure_show_under_the_output(fake_app) -> None:
    app = fake_app(ANALYSIS, settings=NO_IMAGES)
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await stateful_session(pilot, screen)
        await run_and_wait(pilot)
        table_view, image_view = results_of(screen)
        table = table_view.query_one(DataTable)
        assert [str(column.label).strip() for column in table.columns.values()] == ["", "city", "temp"]
        assert [[str(cell).strip() for cell in table.get_row_at(i)] for i in range(table.row_count)] == [
            ["0", "Lisbon", "21"],
            ["1", "Oslo", "4"],
            ["2", "Nairobi", "25"],
        ]
        caption = str(image_view.query_one(".result-caption").render())
        assert caption.startswith("image/png · 64×48 px · 287 bytes")
        assert "s saves it" in caption
        assert not image_view.query(TerminalImage)  # images off: the line only
        assert str(screen.result_pane.border_title).startswith("results") and "· 2" in str(
            screen.result_pane.border_title
        )


async def test_with_images_on_the_figure_is_drawn_under_its_line(fake_app) -> None:
    app = fake_app(ANALYSIS)
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await stateful_session(pilot, screen)
        await run_and_wait(pilot)
        image_view = results_of(screen)[1]
        [picture] = image_view.query(TerminalImage)
        assert picture.image is not None and picture.image.size == (64, 48)  # type: ignore[union-attr]


async def test_the_results_follow_the_selected_session_and_a_new_run_clears_them(fake_app) -> None:
    app = fake_app("41\n", settings=NO_IMAGES)
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        stateful = await stateful_session(pilot, screen)
        await run_and_wait(pilot)
        assert [v.result.text() for v in results_of(screen)] == ["41"]
        plain = next(s for s in screen.sessions_in_order() if not s.scratch and not s.stateful)
        screen.select_session(plain)
        await pilot.pause()
        assert results_of(screen) == []
        screen.select_session(stateful)
        await pilot.pause()
        assert [v.result.text() for v in results_of(screen)] == ["41"]
        await run_code(pilot, screen, 'print("no result")\n')
        assert results_of(screen) == []


async def test_s_saves_an_image_result_as_its_png(fake_app, workdir: Path) -> None:
    app = fake_app(ANALYSIS, settings=NO_IMAGES)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = main_screen(app)
        await stateful_session(pilot, screen)
        await run_and_wait(pilot)
        image_view = results_of(screen)[1]
        image_view.focus()
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, PathScreen))
        field = app.screen.query_one("#path-input", Input)
        assert field.value == "python-2-result-2.png"
        field.value = str(workdir / "plot.png")
        await pilot.press("enter")
        await wait_for(pilot, lambda: (workdir / "plot.png").exists())
        assert (workdir / "plot.png").read_bytes() == image_view.result.binary("image/png")
        assert (workdir / "plot.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert any("Saved result #2 (image/png, 287 bytes)" in str(n.message) for n in app._notifications)


async def test_a_markdown_result_is_rendered_as_markdown(fake_app) -> None:
    app = fake_app('display(Markdown("# Report\\n\\n**3** cities"))\n', settings=NO_IMAGES)
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await stateful_session(pilot, screen)
        await run_and_wait(pilot)
        [view] = results_of(screen)
        assert view.shown.kind == "markdown" and not view.result.is_main_result
        assert view.query_one(Markdown).source == "# Report\n\n**3** cities"


# --- what the workbench makes of a bundle (no Textual) --------------------------------------------------------

PANDAS_HTML = """<div>
<style scoped>
    .dataframe tbody tr th:only-of-type { vertical-align: middle; }
</style>
<table border="1" class="dataframe">
  <thead>
    <tr style="text-align: right;"><th></th><th>city</th><th>temp</th></tr>
  </thead>
  <tbody>
    <tr><th>0</th><td>Lisbon &amp; co</td><td>21</td></tr>
    <tr><th>1</th><td>Oslo</td></tr>
  </tbody>
</table>
<p>2 rows × 2 columns</p>
</div>"""


def test_pandas_html_parses_to_its_header_and_rows_padded() -> None:
    table = rich_results.parse_table(PANDAS_HTML)
    assert table == rich_results.Table(["", "city", "temp"], [["0", "Lisbon & co", "21"], ["1", "Oslo", ""]])


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>", (["a", "b"], [["1", "2"]])),
        ("<table><tr><td>1</td><td>2</td></tr></table>", ([], [["1", "2"]])),
        (
            "<table><tr><td>x<table><tr><td>inner</td></tr></table></td></tr></table>",
            ([], [["x inner"]]),
        ),
        ("<TABLE><TR><TD>upper<br>case</TD></TR></TABLE>", ([], [["upper case"]])),
    ],
)
def test_tables_in_other_shapes(html: str, expected: tuple[list[str], list[list[str]]]) -> None:
    assert rich_results.parse_table(html) == rich_results.Table(*expected)


@pytest.mark.parametrize("html", ["<b>bold</b>", "<table></table>", "<style><table><tr><td>x</td></tr></style>", ""])
def test_html_without_a_table_is_not_one(html: str) -> None:
    assert rich_results.parse_table(html) is None


def test_a_bundle_is_shown_in_its_richest_form() -> None:
    png = base64.b64encode(b"\x89PNG not really").decode()
    assert rich_results.shown(RichResult(data={"text/html": PANDAS_HTML, "text/plain": "df"})).kind == "table"
    assert rich_results.shown(RichResult(data={"text/html": "<b>x</b>", "text/plain": "x"})).mime == "text/plain"
    assert rich_results.shown(RichResult(data={"image/png": png, "text/plain": "<Figure>"})).kind == "image"
    assert rich_results.shown(RichResult(data={"image/svg+xml": "<svg/>"})).kind == "file"
    assert rich_results.shown(RichResult(data={"text/markdown": "# x", "text/plain": "x"})).kind == "markdown"
    assert rich_results.shown(RichResult(data={"application/json": "{}"})).mime == "application/json"
    assert rich_results.shown(RichResult(data={})).mime == "text/plain"


def test_an_image_that_is_not_one_is_named_as_such() -> None:
    broken = RichResult(data={"image/png": base64.b64encode(b"not a png").decode()})
    assert rich_results.describe(broken, "image/png") == "image/png · not a readable image · 9 bytes"
    garbled = RichResult(data={"image/png": "abc"})
    assert rich_results.describe(garbled, "image/png") == "image/png · not valid base64"


async def test_a_results_text_cannot_drive_the_terminal(fake_app) -> None:
    """Escape sequences and control characters in a result (the untrusted code's text) are dropped, as
    in the output panes; markdown links are not followed."""
    from textual.widgets import Static

    app = fake_app(settings=NO_IMAGES)
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        pane = screen.result_pane
        pane.add(RichResult(data={"text/plain": "\x1b]52;c;Y2F0\x07\x1b[2Jcleared\x07 screen\x1b[31m"}))
        html = "<table><tr><th>\x1b[5mh</th></tr><tr><td>\x1b[2Jc\x08ell</td></tr></table>"
        pane.add(RichResult(data={"text/html": html, "text/plain": "t"}))
        pane.add(RichResult(data={"text/markdown": "[x](https://evil.example)\x1b[2J"}))
        await pilot.pause()
        text_view, table_view, markdown_view = results_of(screen)
        assert str(text_view.query_one(Static).render()) == "cleared screen"
        table = table_view.query_one(DataTable)
        assert [str(c.label) for c in table.columns.values()] == ["h"]
        assert [str(cell) for cell in table.get_row_at(0)] == ["ell"]  # the backspace took the c back
        markdown = markdown_view.query_one(Markdown)
        assert markdown.source == "[x](https://evil.example)" and markdown._open_links is False


async def test_stateful_is_offered_only_for_runtimes_with_an_interpreter(fake_app) -> None:
    from textual.widgets import Checkbox, Select

    from isol8_tui.bridge import EngineBridge
    from isol8_tui.sessions import STATEFUL_RUNTIMES, SessionSpec

    assert STATEFUL_RUNTIMES == ("python", "node", "bash")
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: isinstance(app.screen, NewSessionScreen))
        dialog = app.screen
        box = dialog.query_one("#ns-stateful", Checkbox)
        box.value = True
        dialog.query_one("#ns-runtime", Select).value = "bun"
        await pilot.pause()
        assert box.disabled and not box.value and "bun has no long-lived interpreter" in str(box.tooltip)
        assert dialog.spec() is not None and not dialog.spec().stateful  # type: ignore[union-attr]
        dialog.query_one("#ns-runtime", Select).value = "node"
        await pilot.pause()
        assert not box.disabled
    with pytest.raises(ValueError, match="deno has no long-lived interpreter"):
        EngineBridge(FakeBackend()).create_session(SessionSpec("deno", stateful=True))


async def test_f1_on_a_result_lists_its_save_key_and_everywhere_the_reset_key(fake_app) -> None:
    from isol8_tui.screens.help import HelpScreen

    app = fake_app(ANALYSIS, settings=NO_IMAGES)
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await stateful_session(pilot, screen)
        await run_and_wait(pilot)
        results_of(screen)[1].focus()
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        assert "Result" in str(help_screen.query_one("#help-dialog").border_title)
        assert [(k.keys, k.description) for k in help_screen.pane_keys] == [
            ("s", "Save the selected result (an image as its file) to a file")
        ]
        reset = [k for k in help_screen.global_keys if "interpreter" in k.description]
        assert [k.keys for k in reset] == ["shift+f9 f21"]


async def test_an_interactive_run_is_refused_in_a_stateful_session_and_args_fail_with_the_engines_reason(
    fake_app,
) -> None:
    from isol8_tui.sessions import RunSettings

    app = fake_app("x = 41\n", settings=NO_IMAGES)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = main_screen(app)
        session = await stateful_session(pilot, screen)
        await pilot.press("shift+f5")
        await wait_for(pilot, lambda: any(n.title == "No interactive run" for n in app._notifications))
        assert app.screen is screen and screen.current_run is None and session.runs == 0
        await screen.bridge.configure(session, RunSettings(args=["--fast"]))
        await run_and_wait(pilot)
        assert "takes no args" in status_of(screen)


def test_an_image_library_that_cannot_start_leaves_images_as_their_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """textual-image asks the terminal at import (a pseudo-terminal of size 0 makes it divide by zero):
    the workbench then starts all the same and names images by their line."""
    import sys

    from isol8_tui.widgets import results

    monkeypatch.setitem(sys.modules, "textual_image.widget", None)  # its import now fails
    assert results.terminal_image() is None


async def test_without_the_image_library_an_image_is_its_line_even_with_images_on(
    fake_app, monkeypatch: pytest.MonkeyPatch
) -> None:
    from isol8_tui.widgets import results

    monkeypatch.setattr(results, "TERMINAL_IMAGE", None)
    app = fake_app(ANALYSIS)
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await stateful_session(pilot, screen)
        await run_and_wait(pilot)
        image_view = results_of(screen)[1]
        assert str(image_view.query_one(".result-caption").render()).startswith("image/png · 64×48 px")
        assert not image_view.query(TerminalImage)


def test_a_project_file_written_before_stateful_sessions_loads_them_as_not_stateful(workdir: Path) -> None:
    from isol8_tui import project

    path = workdir / PROJECT_FILE
    path.write_text('{"version": 1, "sessions": [{"runtime": "python", "network": "none"}]}')
    loaded = project.load(path)
    assert loaded is not None and [s.spec().stateful for s in loaded.sessions] == [False]
    path.write_text('{"version": 1, "sessions": [{"runtime": "python", "stateful": "yes please"}]}')
    with pytest.raises(project.ProjectFileInvalid, match=r"sessions\.0\.stateful"):
        project.load(path)
