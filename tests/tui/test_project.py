"""Run settings per session, saved in the project file beside the code and restored on restart."""

from __future__ import annotations

import json
from pathlib import Path

from fake_engine import FakeBackend, FakeEngine
from scenes import FILTERED
from textual.widgets import Input
from tui_helpers import main_screen, run_and_wait, wait_for

from isol8_tui.project import PROJECT_FILE
from isol8_tui.screens.dialogs import SessionSettingsScreen

SIZE = (150, 40)


async def test_settings_are_saved_applied_and_restored(fake_app, workdir: Path) -> None:
    (workdir / "input.txt").write_text("typed in\n")
    app = fake_app('print("x")\n')
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        filtered = screen.create_session(FILTERED)
        assert filtered is not None
        await pilot.press("ctrl+k")
        await wait_for(pilot, lambda: isinstance(app.screen, SessionSettingsScreen))
        dialog = app.screen
        values = {
            "timeout": "4000",
            "memory": "1g",
            "cpu": "1.5",
            "env": "MODE=dev TOKEN=a=b",
            "args": "--name 'a b' '$(id)'",
            "stdin": "input.txt",
            "packages": "rich httpx",
        }
        for name, value in values.items():
            dialog.query_one(f"#set-{name}", Input).value = value
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: filtered.settings.timeout_ms == 4000)
        await wait_for(pilot, lambda: (workdir / PROJECT_FILE).exists())
        engine = filtered.engine
        assert isinstance(engine, FakeEngine)
        assert engine.options.memory_limit == "1g" and engine.options.cpu_limit == 1.5  # a new container's
        await run_and_wait(pilot)
        request = engine.requests[-1]
        assert (request.timeout_ms, request.env, request.stdin) == (
            4000,
            {"MODE": "dev", "TOKEN": "a=b"},
            b"typed in\n",
        )
        assert request.install_packages == ["rich", "httpx"]
        assert request.args == ["--name", "a b", "$(id)"]
        saved = json.loads((workdir / PROJECT_FILE).read_text())
        assert [s["runtime"] for s in saved["sessions"]] == ["python", "python"]
        assert saved["sessions"][1]["whitelist"] == list(FILTERED.whitelist)
        assert saved["sessions"][1]["settings"]["timeoutMs"] == 4000

    # a restart: the sessions come back with their policy and settings, in new containers
    backend = FakeBackend()
    again = fake_app('print("x")\n', backend=backend)
    async with again.run_test(size=SIZE) as pilot:
        screen = main_screen(again)
        await wait_for(pilot, lambda: screen.started)
        restored = [s for s in screen.sessions_in_order() if not s.scratch]
        assert [(s.network, s.whitelist) for s in restored] == [("none", ()), ("filtered", FILTERED.whitelist)]
        assert restored[1].settings.timeout_ms == 4000 and restored[1].settings.packages == ["rich", "httpx"]
        assert restored[1].settings.args == ["--name", "a b", "$(id)"]
        engine = restored[1].engine
        assert isinstance(engine, FakeEngine) and engine.options.memory_limit == "1g"
        assert screen.selected is restored[1]  # the newest session of the buffer's runtime


async def test_a_bad_setting_keeps_the_dialog_open_and_says_why(fake_app) -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        await pilot.press("ctrl+k")
        await wait_for(pilot, lambda: isinstance(app.screen, SessionSettingsScreen))
        for field, value, reason in (
            ("timeout", "soon", "soon"),
            ("memory", "lots", "lots"),
            ("env", "NOEQUALS", "KEY=value"),
            ("args", "'unclosed", "Arguments"),
        ):
            app.screen.query_one(f"#set-{field}", Input).value = value
            await pilot.press("ctrl+s")
            assert isinstance(app.screen, SessionSettingsScreen)
            assert reason in str(app.screen.query_one("#set-note").render())
            app.screen.query_one(f"#set-{field}", Input).value = ""


async def test_an_unreadable_project_file_is_reported_and_left_alone(fake_app, workdir: Path) -> None:
    (workdir / PROJECT_FILE).write_text('{"version": 7}')
    app = fake_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        assert any("not a workbench project file" in n.message for n in app._notifications)
        screen.create_session(FILTERED)
        await pilot.pause()
        assert (workdir / PROJECT_FILE).read_text() == '{"version": 7}'
