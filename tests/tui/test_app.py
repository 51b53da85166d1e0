"""Pilot tests on the fake engine: key presses -> the message chain -> what the widgets show."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fake_engine import FakeBackend, FakeEngine
from scenes import FETCHING, FILTERED
from textual.message import Message
from textual.widgets import Input, Select, TextArea
from tui_helpers import main_screen, run_and_wait, wait_for, write_until_rerun

from engine.config import TuiSettings
from isol8_tui.bridge import OutputReceived, RunFinished, RunStarted, SessionSpec, WatchedFileChanged
from isol8_tui.screens import main as main_module
from isol8_tui.screens.dialogs import ConfirmScreen, ImagesScreen, NewSessionScreen, RequestScreen, TransferScreen
from isol8_tui.screens.help import HelpScreen
from isol8_tui.widgets.network import NetworkTable
from isol8_tui.widgets.sessions import SessionList

SIZE = (120, 36)


def status_text(screen: main_module.MainScreen) -> str:
    return str(screen.runbar.query_one("#status").render())


async def test_run_streams_output_and_shows_the_exit(fake_app, backend: FakeBackend) -> None:
    messages: list[Message] = []
    app = fake_app('print("hello")\nprint("careful", file=sys.stderr)\nsys.exit(2)\n')
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        screen = await run_and_wait(pilot)
        chain = [type(m) for m in messages if isinstance(m, (RunStarted, OutputReceived, RunFinished))]
        assert chain == [RunStarted, OutputReceived, OutputReceived, RunFinished]
        assert list(screen.outputs.stdout.lines) == ["hello", ""]
        assert list(screen.outputs.stderr.lines) == ["careful", ""]
        assert "✗ exit 2" in status_text(screen) and "3 ms" in status_text(screen)
        assert screen.runbar.query_one("#stop").disabled
        [session] = [s for s in screen.bridge.sessions.values() if s.runtime == "python"]
        engine = session.engine
        assert isinstance(engine, FakeEngine)
        assert engine.requests[-1].code == app.screen.editor_pane.text
        assert (engine.requests[-1].file_name, engine.requests[-1].file_extension) == ("main.py", None)


async def test_output_is_cleared_or_kept_per_run(fake_app) -> None:
    app = fake_app('print("line")\n')
    async with app.run_test(size=SIZE) as pilot:
        screen = await run_and_wait(pilot)
        await run_and_wait(pilot)
        assert list(screen.outputs.stdout.lines) == ["line", ""]
        await pilot.press("f7")  # keep output between runs
        assert screen.keep_output
        await run_and_wait(pilot)
        lines = list(screen.outputs.stdout.lines)
        assert lines[0] == "line" and lines[-2] == "line"
        assert any(line.startswith("── run 3 · python-1 · python") for line in lines)
        await pilot.press("ctrl+l")
        assert screen.outputs.stdout.line_count == 0


async def test_stop_cancels_the_run_in_flight(fake_app) -> None:
    app = fake_app('print("started")\nwhile True:\n    pass\n')
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen.outputs.stdout.total_lines == 1 or screen.outputs.stdout._pending != [])
        assert not screen.runbar.query_one("#stop").disabled
        engine = screen.selected.engine  # type: ignore[union-attr]
        assert isinstance(engine, FakeEngine) and engine.running == 1
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: screen.current_run is None)
        assert engine.running == 0
        assert "■ stopped" in status_text(screen)


async def test_a_new_run_cancels_the_one_in_flight(fake_app) -> None:
    messages: list[Message] = []
    app = fake_app('print("first")\nwhile True:\n    pass\n')
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        screen = main_screen(app)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: any(isinstance(m, OutputReceived) for m in messages))
        editor = screen.query_one(TextArea)
        editor.text = 'print("second")\n'
        await run_and_wait(pilot)
        finished = [m for m in messages if isinstance(m, RunFinished)]
        assert [(m.run_id, m.cancelled) for m in finished] == [(1, True), (2, False)]
        assert list(screen.outputs.stdout.lines) == ["second", ""]
        assert "✓ exit 0" in status_text(screen)


async def test_session_created_switched_and_deleted(fake_app, backend: FakeBackend) -> None:
    app = fake_app('print("hi")\n')
    async with app.run_test(size=(150, 40)) as pilot:
        screen = main_screen(app)
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: isinstance(app.screen, NewSessionScreen))
        await pilot.click("#ns-net-filtered")
        await pilot.click("#ns-whitelist")
        await pilot.press(*r"(.*\.)?pypi\.org")
        await pilot.click("#ns-blacklist")
        await pilot.press(*"[oops", "enter")
        assert isinstance(app.screen, NewSessionScreen)  # a bad pattern keeps the dialog open
        assert "not a valid regular expression" in str(app.screen.query_one("#ns-note").render())
        blacklist = app.screen.query_one("#ns-blacklist", Input)
        blacklist.value = r".*\.evil\.com"
        ports = app.screen.query_one("#ns-ports", Input)
        ports.value = "8443 99999"
        await pilot.click("#ns-create")
        assert isinstance(app.screen, NewSessionScreen)  # so does a bad port
        assert '"99999" is not a port number' in str(app.screen.query_one("#ns-note").render())
        ports.value = "8443, 9443"
        ports.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, NewSessionScreen))
        created = screen.selected
        assert created is not None and created.name == "python-2" and created.network == "filtered"
        assert created.whitelist == (r"(.*\.)?pypi\.org",) and created.blacklist == (r".*\.evil\.com",)
        assert created.ports == (8443, 9443)
        await run_and_wait(pilot)
        engine = created.engine
        assert isinstance(engine, FakeEngine) and len(engine.requests) >= 1
        assert engine.options.network_filter.ports == [8443, 9443]
        # switch back to python-1 from the sidebar
        options = screen.query_one(SessionList)
        options.focus()
        options.highlighted = [s.name for s in screen.sessions_in_order()].index("python-1")
        await pilot.press("enter")
        assert screen.selected is not None and screen.selected.name == "python-1"
        # delete python-2 (confirm with y)
        options.highlighted = [s.name for s in screen.sessions_in_order()].index("python-2")
        await pilot.press("delete")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: engine.stopped)
        assert [s.name for s in screen.sessions_in_order()] == ["scratch", "python-1"]


async def test_runtime_picker_changes_highlighting_and_session(fake_app) -> None:
    app = fake_app('console.log("from node")\n', name="main.js")
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        editor = screen.query_one(TextArea)
        assert screen.runtime == "node" and editor.language == "javascript"
        screen.query_one("#runtime", Select).value = "bun"
        await wait_for(pilot, lambda: screen.runtime == "bun")
        assert editor.language == "typescript"
        assert screen.selected is not None and screen.selected.runtime == "bun"
        screen.pick_runtime("bash")
        await pilot.pause()
        assert editor.language == "bash" and screen.selected.runtime == "bash"
        screen.pick_runtime("node")
        await pilot.pause()
        assert screen.selected.name == "node-1"  # back to the existing node session
        await run_and_wait(pilot)
        assert list(screen.outputs.stdout.lines) == ["from node", ""]
        await pilot.press("ctrl+f")  # scratch runs any runtime
        assert screen.selected.scratch
        screen.pick_runtime("deno")
        await pilot.pause()
        assert screen.selected.scratch and screen.runtime == "deno"


async def test_network_table_fills_and_filters(fake_app) -> None:
    app = fake_app(FETCHING)
    async with app.run_test(size=(150, 40)) as pilot:
        screen = main_screen(app)
        await pilot.press("f8")
        hint = str(screen.network.query_one("#network-hint").render())
        assert "network none" in hint and "filtered" in hint  # the session logs nothing: say why
        screen.create_session(FILTERED)
        await run_and_wait(pilot)
        inspector = screen.network
        assert not inspector.has_class("-off")
        assert inspector.visible_rows == 5
        table = inspector.query_one(NetworkTable)
        blocked_row = table.get_row_at(2)
        blocked_style = table.get_component_rich_style("network-table--blocked", partial=True)
        assert "BLOCK" in str(blocked_row[0]) and blocked_row[0].style == blocked_style and blocked_style.bold
        assert "✗2" in str(screen.results.get_tab("tab-network").label)
        await pilot.press("a", "a")  # all -> allowed -> blocked
        assert inspector.action_filter == "BLOCK" and inspector.visible_rows == 2
        await pilot.press("a")
        await pilot.press("slash", *"pypi")
        assert inspector.visible_rows == 2
        inspector.set_filters(host="", action="all")
        await pilot.pause()
        table.focus()
        await pilot.press("down", "down", "down")
        detail = str(inspector.query_one("#network-detail").render())
        assert "exfil.evil.com" in detail and "BLOCK" in detail and r".*\.evil\.com" in detail
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RequestScreen))
        await pilot.press("escape")


async def test_files_upload_list_and_download(fake_app, workdir: Path) -> None:
    (workdir / "input.txt").write_text("payload")
    app = fake_app('open("/sandbox/result.txt", "w").write("42")\n')
    async with app.run_test(size=(150, 40)) as pilot:
        screen = main_screen(app)
        await run_and_wait(pilot)
        await pilot.press("ctrl+u")
        await wait_for(pilot, lambda: isinstance(app.screen, TransferScreen))
        await pilot.press(*"input.txt")
        assert app.screen.query_one("#sandbox-path", Input).value == "/sandbox/input.txt"
        await pilot.press("enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, TransferScreen))
        engine = screen.selected.engine  # type: ignore[union-attr]
        assert isinstance(engine, FakeEngine)
        await wait_for(pilot, lambda: engine.files.get("/sandbox/input.txt") == b"payload")
        await pilot.press("f9")
        await wait_for(pilot, lambda: len(screen.files.entries) == 3)
        assert [e.path for e in screen.files.entries] == [
            "/sandbox/input.txt",
            "/sandbox/main.py",
            "/sandbox/result.txt",
        ]
        screen.files.query_one("#files-table").move_cursor(row=2)  # type: ignore[attr-defined]
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, TransferScreen))
        assert app.screen.query_one("#sandbox-path", Input).value == "/sandbox/result.txt"
        assert app.screen.query_one("#host-path", Input).value == "result.txt"
        await pilot.click("#transfer-ok")
        await wait_for(pilot, lambda: (workdir / "result.txt").exists())
        assert (workdir / "result.txt").read_text() == "42"


async def test_help_lists_the_focused_panes_keys(fake_app) -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert "Editor" in str(app.screen.query_one("#help-dialog").border_title)
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        global_keys = {row.description: row.keys for row in help_screen.global_keys}
        assert global_keys["Run the buffer in the selected session"] == "^r f5"
        assert "Stop the selected session's run" not in global_keys  # in force (and shown) only while a run is
        await pilot.press("escape")
        await pilot.press("f8")
        main_screen(app).create_session(FILTERED)
        await pilot.press("f8", "f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert "Network" in str(app.screen.query_one("#help-dialog").border_title)
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        pane_keys = {row.description: row.keys for row in help_screen.pane_keys}
        assert (
            pane_keys["Filter the requests by host"] == "/"
            and pane_keys["Show all, allowed or blocked requests"] == "a"
        )


async def test_palette_offers_every_action(fake_app) -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        titles = {command.title: command for command in app.get_system_commands(screen)}
        for title in (
            "Run: run the buffer",
            "Run: stop",
            "File: save",
            "File: open…",
            "File: upload into the session…",
            "File: download from the session…",
            "Session: new…",
            "Session: switch to scratch",
            "Runtime: deno",
            "Network: filtered for new sessions",
            "View: toggle the session sidebar",
            "Images: check and build missing images",
            "Help: keys of the focused pane",
        ):
            assert title in titles, title
        titles["Runtime: deno"].callback()
        titles["Network: filtered for new sessions"].callback()
        await pilot.pause()
        assert screen.runtime == "deno" and screen.new_session_network == "filtered"
        await pilot.press("ctrl+p")
        await pilot.press(*"switch to scratch", "enter")
        await wait_for(pilot, lambda: screen.selected is not None and screen.selected.scratch)


async def test_docker_down_is_a_message_not_a_crash(fake_app, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main_module, "DOCKER_RETRY_SECONDS", 0.1)
    backend = FakeBackend(docker_up=False)
    app = fake_app('print("hi")\n', backend=backend)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.docker_available is False)
        assert "down" in str(screen.topbar.query_one("#docker").render())
        assert "Docker is not running" in status_text(screen)
        await run_and_wait(pilot)
        assert "Docker is not running" in status_text(screen)
        assert "sudo systemctl start docker" in "\n".join(screen.outputs.stderr.lines)
        backend.docker_up = True
        await wait_for(pilot, lambda: screen.docker_available is True, timeout=5)
        await wait_for(pilot, lambda: screen.selected is not None and screen.selected.state == "idle")
        await run_and_wait(pilot)
        assert "✓ exit 0" in status_text(screen)


async def test_missing_images_are_offered_and_built(fake_app) -> None:
    backend = FakeBackend(missing=["python", "node"])
    app = fake_app('print("hi")\n', backend=backend)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ImagesScreen))
        dialog = app.screen
        assert isinstance(dialog, ImagesScreen) and dialog.missing == ["python", "node"]
        await pilot.click("#images-build")
        await wait_for(pilot, lambda: dialog.state == "done")
        log_lines = list(dialog.query_one("#images-log").lines)  # type: ignore[attr-defined]
        assert "building isol8:python" in log_lines and log_lines[-1].startswith("✓ done")
        await pilot.press("escape")
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.missing_images == [] and screen.selected.state == "idle")  # type: ignore[union-attr]
        assert backend.built == ["python", "node"]
        await run_and_wait(pilot)
        assert "✓ exit 0" in status_text(screen)


async def test_a_dead_container_is_reported_and_the_next_run_works(fake_app) -> None:
    app = fake_app('print("before")\nos.kill(1, 9)\n')
    async with app.run_test(size=SIZE) as pilot:
        screen = await run_and_wait(pilot)
        assert "stopped unexpectedly" in status_text(screen)
        assert screen.selected is not None and screen.selected.state == "error"
        screen.query_one(TextArea).text = 'print("after")\n'
        await run_and_wait(pilot)
        assert "✓ exit 0" in status_text(screen) and screen.selected.state == "idle"


async def test_save_writes_the_file_and_clears_the_marker(fake_app, workdir: Path) -> None:
    app = fake_app('print("v1")\n')
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        editor = screen.query_one(TextArea)
        editor.insert("# edited\n", (0, 0))
        await pilot.pause()
        assert screen.editor_pane.dirty and "●" in str(screen.editor_pane.border_title)
        await pilot.press("ctrl+s")
        assert (workdir / "main.py").read_text() == '# edited\nprint("v1")\n'
        assert not screen.editor_pane.dirty and "●" not in str(screen.editor_pane.border_title)


async def test_untitled_buffer_saves_as(fake_app, workdir: Path) -> None:
    app = fake_app('print("new")\n', name=None)
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        assert screen.editor_pane.border_title == "untitled"
        await pilot.press("ctrl+s")
        await pilot.press(*"new.py", "enter")
        await wait_for(pilot, lambda: (workdir / "new.py").exists())
        assert screen.path == Path("new.py") and "new.py" in str(screen.editor_pane.border_title)


async def test_watched_file_reloads_and_reruns(fake_app, workdir: Path) -> None:
    messages: list[Message] = []
    app = fake_app('print("v1")\n', watch=True, settings=TuiSettings(watch_debounce_ms=20))
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        screen = main_screen(app)
        await write_until_rerun(pilot, workdir / "main.py", 'print("v2")\n', messages)
        started = [m for m in messages if isinstance(m, RunStarted)]
        assert [m.trigger for m in started] == ["watch"]
        assert screen.editor_pane.text == 'print("v2")\n' and not screen.editor_pane.dirty
        screen.outputs.flush()
        assert list(screen.outputs.stdout.lines) == ["v2", ""]
        # ctrl+s here saves, and the save re-runs it too
        screen.query_one(TextArea).text = 'print("v3")\n'
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: len([m for m in messages if isinstance(m, RunFinished)]) == 2, timeout=5)
        assert any(isinstance(m, WatchedFileChanged) for m in messages)
        screen.outputs.flush()
        assert list(screen.outputs.stdout.lines) == ["v3", ""]


async def test_huge_output_stays_bounded(fake_app) -> None:
    app = fake_app("for i in range(100000): print(i)\n", settings=TuiSettings(scrollback_lines=1000))
    async with app.run_test(size=SIZE) as pilot:
        started = time.perf_counter()
        screen = await run_and_wait(pilot, timeout=20)
        elapsed = time.perf_counter() - started
        stdout = screen.outputs.stdout
        assert stdout.total_lines == 100000
        lines = stdout.lines
        assert len(lines) == 1000 + 2  # the kept lines, the cut marker, the (empty) line being written
        assert lines[:200] == [str(i) for i in range(200)]  # the head
        assert lines[200].startswith("… 99000 lines cut here")
        assert lines[201:-1] == [str(i) for i in range(99200, 100000)] and lines[-1] == ""  # the tail
        assert "99000 cut from the middle" in str(stdout.border_title)
        assert stdout.transcript.full_text() == "".join(f"{i}\n" for i in range(100000))  # what a save writes
        assert elapsed < 10


async def test_key_overrides_from_settings(fake_app) -> None:
    app = fake_app('print("k")\n', settings=TuiSettings(keymap={"run": "f12", "help": "f11"}))
    async with app.run_test(size=SIZE) as pilot:
        screen = await run_and_wait(pilot, key="f12")
        assert list(screen.outputs.stdout.lines) == ["k", ""]
        await pilot.press("f1")  # no longer help
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("f11")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))


async def test_usable_at_80x24(fake_app) -> None:
    app = fake_app('print("small")\n')
    async with app.run_test(size=(80, 24)) as pilot:
        screen = main_screen(app)
        assert screen.has_class("-narrow")
        for widget in (screen.editor_pane, screen.outputs, screen.runbar, screen.topbar):
            assert widget.region.width > 0 and widget.region.height > 0
        assert screen.editor_pane.region.height >= 8
        assert not screen.sidebar.display or screen.sidebar.region.width == 0
        await run_and_wait(pilot)
        assert list(screen.outputs.stdout.lines) == ["small", ""]
        await pilot.press("f2")
        await pilot.pause()
        assert screen.sidebar.region.width > 0 and screen.query_one(SessionList).has_focus
        await pilot.press("escape", "f3")
        await pilot.pause()
        assert screen.sidebar.region.width == 0


async def test_quit_asks_when_the_buffer_is_unsaved(fake_app) -> None:
    app = fake_app('print("x")\n')
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        screen.query_one(TextArea).insert("y = 1\n", (0, 0))
        await pilot.pause()
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await pilot.pause()
        assert app.is_running and app.screen is screen


async def test_quitting_stops_every_engine(fake_app, backend: FakeBackend) -> None:
    app = fake_app('print("x")\n')
    async with app.run_test(size=SIZE) as pilot:
        main_screen(app).create_session(SessionSpec("node"))
        await run_and_wait(pilot)
    assert backend.engines and all(engine.stopped for engine in backend.engines)


async def test_colours_follow_the_theme(fake_app) -> None:
    app = fake_app(FETCHING)
    async with app.run_test(size=(150, 40)) as pilot:
        screen = main_screen(app)
        screen.create_session(FILTERED)
        await run_and_wait(pilot)
        table = screen.network.query_one(NetworkTable)
        before = table.get_row_at(2)[0].style
        app.theme = "textual-light"
        await pilot.pause()
        await pilot.pause()
        after = table.get_row_at(2)[0].style
        assert after != before and after == table.get_component_rich_style("network-table--blocked", partial=True)


async def test_allow_host_adds_a_blocked_host_to_the_live_session(fake_app) -> None:
    app = fake_app(FETCHING)
    async with app.run_test(size=(150, 40)) as pilot:
        screen = main_screen(app)
        session = screen.create_session(FILTERED)
        await run_and_wait(pilot)
        inspector = screen.network
        table = inspector.query_one(NetworkTable)
        blocked = [e for e in inspector.entries if e.action == "BLOCK"]
        assert [(e.host, e.rule) for e in blocked] == [
            ("api.github.com", "not in whitelist"),
            ("exfil.evil.com", r"blacklist:.*\.evil\.com"),
        ]
        await pilot.press("f8")
        table.focus()
        await pilot.press("down", "down")  # api.github.com
        await pilot.press("w")
        await wait_for(pilot, lambda: r"^api\.github\.com$" in session.whitelist)
        assert r"^api\.github\.com$" in session.engine.options.network_filter.whitelist  # the live engine's lists
        saved = json.loads(screen.project_file.read_text())["sessions"]
        assert any(r"^api\.github\.com$" in entry["whitelist"] for entry in saved)  # kept with the project
        await pilot.press("down")  # exfil.evil.com: the deny list wins, nothing is added
        await pilot.press("w")
        await pilot.pause()
        assert not any("evil" in pattern for pattern in session.whitelist)
        assert any("deny list" in str(n.message) for n in app._notifications)
        await run_and_wait(pilot)
        assert [e.action for e in inspector.entries if e.host == "api.github.com"] == ["ALLOW"]
