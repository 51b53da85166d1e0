"""Dialogs: tab completes a path and keeps focus mid-path, nothing is overwritten silently, an unknown
extension asks for a runtime, an allow-list pattern may contain a comma, the first save of an untitled
buffer runs it."""

from __future__ import annotations

from pathlib import Path

from fake_engine import FakeEngine
from textual.widgets import Button, Input, Select
from tui_helpers import main_screen, wait_for

from isol8_tui.screens.dialogs import NewSessionScreen, PathInput, PathScreen, RuntimeScreen, TransferScreen

SIZE = (120, 36)


async def test_tab_completes_the_path_and_keeps_focus_until_it_names_a_file(fake_app, workdir: Path) -> None:
    (workdir / "projects" / "alpha").mkdir(parents=True)
    (workdir / "projects" / "alpha" / "train.py").write_text("x")
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: main_screen(app).started)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, PathScreen))
        field = app.screen.query_one("#path-input", PathInput)
        await pilot.press(*"proj")
        await wait_for(pilot, lambda: field._suggestion == "projects/")
        await pilot.press("tab")
        assert field.value == "projects/" and app.focused is field
        await wait_for(pilot, lambda: field._suggestion == "projects/alpha/")  # a folder: completes into it
        await pilot.press("tab")
        assert field.value == "projects/alpha/" and app.focused is field
        await pilot.press(*"tr")
        await wait_for(pilot, lambda: field._suggestion == "projects/alpha/train.py")
        await pilot.press("tab")
        assert field.value == "projects/alpha/train.py" and app.focused is field
        await pilot.press(*"x")  # a path that does not exist yet: tab stays
        await pilot.press("tab")
        assert app.focused is field
        await pilot.press("backspace", "tab")  # a complete file path: tab moves on
        assert app.focused is not field


async def test_save_as_and_download_never_overwrite_silently(fake_app, workdir: Path) -> None:
    (workdir / "taken.py").write_text("precious")
    app = fake_app('open("/sandbox/result.txt", "w").write("42")\n', name=None)
    async with app.run_test(size=(150, 40)) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, PathScreen))
        await pilot.press(*"taken.py", "enter")
        assert isinstance(app.screen, PathScreen)
        assert "exists" in str(app.screen.query_one("#path-note").render())
        assert (workdir / "taken.py").read_text() == "precious"
        await pilot.press("escape")
        # a download onto an existing file asks first
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, PathScreen))
        await pilot.press(*"fresh.py", "enter")
        await wait_for(pilot, lambda: screen.current_run is None and screen.run_id == 1)  # the first save runs
        (workdir / "result.txt").write_text("mine")
        screen.action_download("/sandbox/result.txt")
        await wait_for(pilot, lambda: isinstance(app.screen, TransferScreen))
        ok = app.screen.query_one("#transfer-ok", Button)
        ok.press()
        await pilot.pause()
        assert isinstance(app.screen, TransferScreen) and (workdir / "result.txt").read_text() == "mine"
        assert "exists" in str(app.screen.query_one("#transfer-note").render())
        ok.press()
        await wait_for(pilot, lambda: not isinstance(app.screen, TransferScreen))
        await wait_for(pilot, lambda: (workdir / "result.txt").read_text() == "42")


async def test_the_first_save_of_an_untitled_buffer_runs_it(fake_app, workdir: Path) -> None:
    app = fake_app('print("first save")\n', name=None)
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, PathScreen))
        await pilot.press(*"first.py", "enter")
        await wait_for(pilot, lambda: screen.run_id == 1 and screen.current_run is None)
        screen.outputs.flush()
        assert screen.outputs.stdout.lines == ["first save", ""]


async def test_an_unknown_extension_asks_for_a_runtime(fake_app, workdir: Path) -> None:
    (workdir / "job.sh.txt").write_text("echo from bash\n")
    app = fake_app('print("py")\n')
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        screen.open_file(workdir / "job.sh.txt")
        await wait_for(pilot, lambda: isinstance(app.screen, RuntimeScreen))
        app.screen.query_one("#rt-select", Select).value = "bash"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: screen.runtime == "bash")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen.run_id == 1 and screen.current_run is None)
        engine = screen.selected.engine if screen.selected else None
        assert isinstance(engine, FakeEngine) and engine.requests[-1].runtime == "bash"


async def test_an_allow_list_pattern_with_a_comma_is_one_pattern(fake_app) -> None:
    app = fake_app()
    async with app.run_test(size=(150, 40)) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: isinstance(app.screen, NewSessionScreen))
        await pilot.click("#ns-net-filtered")
        app.screen.query_one("#ns-whitelist", Input).value = r"a{1,3}\.example\.com, pypi\.org  files\.org"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, NewSessionScreen))
        assert screen.selected is not None
        assert screen.selected.whitelist == (r"a{1,3}\.example\.com", r"pypi\.org", r"files\.org")
