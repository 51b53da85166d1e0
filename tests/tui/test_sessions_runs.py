"""Each session has its own run, status, output and requests; switching sessions switches the panes.
Each open file has its own undo history. Output can be searched, stepped by error line and saved."""

from __future__ import annotations

import json
from pathlib import Path

from fake_engine import FakeEngine
from scenes import FETCHING, FILTERED
from textual.widgets import Input, TextArea
from tui_helpers import main_screen, run_and_wait, wait_for

from isol8_tui.screens.dialogs import PathScreen
from isol8_tui.sessions import SessionSpec

SIZE = (120, 36)
LOOPING = 'print("looping")\nwhile True:\n    pass\n'


def status_text(screen) -> str:  # type: ignore[no-untyped-def]
    return str(screen.runbar.query_one("#status").render())


async def test_sessions_run_at_once_each_with_its_own_status_and_output(fake_app) -> None:
    app = fake_app(LOOPING)
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        first = screen.selected
        assert first is not None
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen.outputs.stdout.total_lines == 1 or bool(screen.outputs.stdout._pending))
        second = screen.create_session(SessionSpec("python"))
        assert second is not None and screen.selected is second
        assert screen.outputs.stdout.line_count == 0  # the new session's (empty) output, not the first's
        assert "ready" in status_text(screen) and "running" not in status_text(screen)
        screen.query_one(TextArea).text = 'print("second session")\n'
        await run_and_wait(pilot)
        assert list(screen.outputs.stdout.lines) == ["second session", ""]
        assert "✓ exit 0" in status_text(screen)
        first_engine = first.engine
        assert isinstance(first_engine, FakeEngine) and first_engine.running == 1  # still running: not cancelled
        # ctrl+t in the second session has nothing to stop, and leaves the first one's run alone
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert first_engine.running == 1
        # back to the first: its panes and its status, naming it
        screen.select_session(first)
        await pilot.pause()
        assert screen.outputs.stdout.lines[0] == "looping"
        assert f"running {first.name}" in status_text(screen)
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: screen.current_run is None)
        assert first_engine.running == 0 and "■ stopped" in status_text(screen)
        screen.select_session(second)
        await pilot.pause()
        assert list(screen.outputs.stdout.lines) == ["second session", ""] and "✓ exit 0" in status_text(screen)


async def test_a_session_in_the_background_keeps_filling_its_own_output(fake_app) -> None:
    app = fake_app('print("one")\nprint("two", file=sys.stderr)\nsys.exit(4)\n')
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        first = screen.selected
        assert first is not None
        await pilot.press("ctrl+r")
        other = screen.create_session(SessionSpec("python"))  # switched away while the first run streams
        assert other is not None
        await wait_for(pilot, lambda: screen.view_of(first).run is None)
        assert screen.outputs.stdout.line_count == 0
        screen.select_session(first)
        await pilot.pause()
        assert list(screen.outputs.stdout.lines) == ["one", ""]
        assert list(screen.outputs.stderr.lines) == ["two", ""]
        assert "✗ exit 4" in status_text(screen)


async def test_each_session_has_its_own_requests(fake_app) -> None:
    app = fake_app(FETCHING)
    async with app.run_test(size=(150, 40)) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        plain = screen.selected
        filtered = screen.create_session(FILTERED)
        await run_and_wait(pilot)
        assert screen.network.visible_rows == 5
        assert plain is not None
        screen.select_session(plain)
        await pilot.pause()
        assert screen.network.entries == []
        assert filtered is not None
        screen.select_session(filtered)
        await pilot.pause()
        assert screen.network.visible_rows == 5


async def test_har_export_of_the_runs_requests(fake_app, workdir: Path) -> None:
    app = fake_app(FETCHING)
    async with app.run_test(size=(150, 40)) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        screen.create_session(FILTERED)
        await run_and_wait(pilot)
        await pilot.press("f8", "h")
        await wait_for(pilot, lambda: isinstance(app.screen, PathScreen))
        field = app.screen.query_one("#path-input", Input)
        assert field.value == "python-2-requests.har"
        await pilot.press("enter")
        await wait_for(pilot, lambda: (workdir / "python-2-requests.har").exists())
        log = json.loads((workdir / "python-2-requests.har").read_text())["log"]
        assert log["version"] == "1.2" and len(log["entries"]) == 5
        urls = [(e["request"]["method"], e["request"]["url"], e["response"]["status"]) for e in log["entries"]]
        assert ("CONNECT", "https://pypi.org:443", 200) in urls
        blocked = [e for e in log["entries"] if "evil" in e["request"]["url"]]
        assert blocked[0]["response"]["status"] == 403 and blocked[0]["comment"].startswith("BLOCK")
        assert blocked[0]["request"]["url"] == "http://exfil.evil.com/upload?token=s3cr3t" or blocked[0]["request"][
            "url"
        ].startswith("http://exfil.evil.com")


async def test_undo_never_crosses_files(fake_app, workdir: Path) -> None:
    (workdir / "other.py").write_text('print("other")\n')
    app = fake_app('print("first")\n')
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        editor = screen.query_one(TextArea)
        editor.focus()
        await pilot.press(*"x = 1", "enter")
        await pilot.press("ctrl+s")
        edited = editor.text
        screen.open_file(workdir / "other.py")
        await pilot.pause()
        assert editor.text == 'print("other")\n'
        await pilot.press("ctrl+z", "ctrl+z", "ctrl+z")  # opening a file is not undoable
        await pilot.pause()
        assert editor.text == 'print("other")\n' and screen.path == workdir / "other.py"
        await pilot.press(*"# mine")
        await pilot.press("ctrl+s")
        screen.open_file(workdir / "main.py")
        await pilot.pause()
        assert editor.text == edited
        await pilot.press("ctrl+z")  # main.py's own history came back with it
        await pilot.pause()
        assert editor.text != edited and "other" not in editor.text


async def test_search_next_error_and_save_of_the_full_output(fake_app, workdir: Path) -> None:
    code = "for i in range(3000): print(i)\n"
    app = fake_app(code)
    async with app.run_test(size=SIZE) as pilot:
        screen = await run_and_wait(pilot)
        stdout = screen.outputs.stdout
        stdout.focus()
        await pilot.press("slash", *"2999", "enter")
        await pilot.pause()
        assert stdout.cursor is not None and stdout.lines[stdout.cursor] == "2999"
        await pilot.press("slash")
        search = screen.query_one("#output-search", Input)
        search.value = "12"
        await pilot.press("enter")
        first = stdout.cursor
        assert first is not None and stdout.lines[first] == "12"
        await pilot.press("n")
        assert stdout.cursor is not None and stdout.lines[stdout.cursor] == "112"
        await pilot.press("N")
        assert stdout.cursor == first
        stdout.append_marker("Traceback (most recent call last):")
        await pilot.press("e")
        assert stdout.lines[stdout.cursor].startswith("Traceback")
        assert screen.editor_pane.text == code  # none of these keys typed anywhere
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, PathScreen))
        await pilot.press("enter")
        saved = workdir / "python-1-stdout.txt"
        await wait_for(pilot, saved.exists)
        text = saved.read_text()
        assert text.startswith("0\n1\n") and "2999\n" in text


async def test_the_file_runs_under_its_own_name(fake_app) -> None:
    app = fake_app('raise ValueError("bad input")\n', name="train.py")
    async with app.run_test(size=SIZE) as pilot:
        screen = await run_and_wait(pilot)
        assert 'File "/sandbox/train.py", line 1' in "\n".join(screen.outputs.stderr.lines)
        engine = screen.selected.engine if screen.selected else None
        assert isinstance(engine, FakeEngine) and engine.requests[-1].file_name == "train.py"


async def test_clicking_a_traceback_line_moves_the_editor_there(fake_app) -> None:
    code = 'import sys\nprint("one")\nprint("two")\nraise KeyError("late")\n'
    app = fake_app(code, name="train.py")
    async with app.run_test(size=SIZE) as pilot:
        screen = await run_and_wait(pilot)
        stderr = screen.outputs.stderr
        index = next(i for i, line in enumerate(stderr.lines) if "line 4" in line)
        stderr.scroll_home(animate=False, immediate=True)
        await pilot.pause()
        await pilot.click(stderr, offset=(3, index - stderr.scroll_offset.y + 1))  # +1: the title line
        await wait_for(pilot, lambda: screen.query_one(TextArea).cursor_location == (3, 0))
        assert screen.editor_pane.text == code
