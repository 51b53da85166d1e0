"""Interactive runs (run-interactive, shift+f5): a terminal screen where every key goes to the program,
ctrl+] leaves while the run goes on, the same key re-opens it, and the end is shown until one leaves."""

from __future__ import annotations

from fake_engine import FakeBackend
from tui_helpers import main_screen, wait_for

from isol8_tui.screens.main import MainScreen
from isol8_tui.screens.terminal import InteractiveRun, TerminalScreen, key_bytes, terminal_size
from isol8_tui.terminal_text import TerminalText
from isol8_tui.widgets.output import clean

SIZE = (100, 30)
ASKING = "print('got', input('name? '))\n"


def terminal_screen(app) -> TerminalScreen:  # type: ignore[no-untyped-def]
    screen = app.screen
    assert isinstance(screen, TerminalScreen)
    return screen


def interactive(app) -> InteractiveRun:  # type: ignore[no-untyped-def]
    run = main_screen(app).view_of(main_screen(app).selected).interactive
    assert run is not None
    return run


async def open_terminal(pilot) -> tuple[MainScreen, InteractiveRun]:  # type: ignore[no-untyped-def]
    """The workbench started, then shift+f5: its main screen and the interactive run on top."""
    screen = main_screen(pilot.app)
    await wait_for(pilot, lambda: screen.started)
    await pilot.press("shift+f5")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, TerminalScreen))
    return screen, interactive(pilot.app)


async def test_keys_reach_the_program_and_never_the_workbench(fake_app, backend: FakeBackend) -> None:
    app = fake_app(ASKING)
    async with app.run_test(size=SIZE) as pilot:
        screen, run = await open_terminal(pilot)
        await wait_for(pilot, lambda: run.text.plain() == ["name? "])
        # workbench keys (quit, help, run, the palette, new session, focus) are typed, not obeyed
        await pilot.press("a", "l", "x", "backspace", "i", "f1", "ctrl+p", "ctrl+n", "ctrl+r", "tab")
        await pilot.press("c", "e")
        assert isinstance(app.screen, TerminalScreen) and app.is_running
        assert screen.run_id == 1  # ctrl+r started no run
        await wait_for(pilot, lambda: run.text.plain() == ["name? alice"])
        await pilot.press("enter")
        await wait_for(pilot, lambda: run.ended)
        assert run.text.plain() == ["name? alice", "got alice", ""]
        status = str(terminal_screen(app).query_one("#terminal-status").render())
        assert "exit 0" in status
        assert isinstance(app.screen, TerminalScreen)  # it stays until the user leaves
        await pilot.press("ctrl+right_square_bracket")
        await wait_for(pilot, lambda: app.screen is screen)
        screen.outputs.flush()
        assert list(screen.outputs.stdout.lines) == ["name? alice", "got alice", ""]
        assert backend.engines[-1].requests[-1].code == ASKING


async def test_leaving_keeps_the_run_going_and_the_key_reopens_it(fake_app) -> None:
    app = fake_app(ASKING)
    async with app.run_test(size=SIZE) as pilot:
        screen, run = await open_terminal(pilot)
        await pilot.press("b", "o")
        await wait_for(pilot, lambda: run.text.plain() == ["name? bo"])
        await pilot.press("ctrl+right_square_bracket")
        await wait_for(pilot, lambda: app.screen is screen)
        assert screen.current_run == run.run_id and not run.ended  # the run goes on
        screen.outputs.flush()
        assert list(screen.outputs.stdout.lines) == ["name? bo"]  # its output is in the pane
        await pilot.press("shift+f5")
        await wait_for(pilot, lambda: isinstance(app.screen, TerminalScreen))
        assert terminal_screen(app).run is run and screen.run_id == run.run_id  # the same run, not a new one
        await pilot.press("b", "enter")
        await wait_for(pilot, lambda: run.ended)
        assert run.text.plain()[-2] == "got bob"
        await pilot.press("ctrl+right_square_bracket")
        await wait_for(pilot, lambda: app.screen is screen)
        await pilot.press("shift+f5")  # the run ended: a new one starts
        await wait_for(pilot, lambda: isinstance(app.screen, TerminalScreen) and terminal_screen(app).run is not run)
        assert screen.run_id == run.run_id + 1


async def test_ctrl_c_interrupts_and_the_end_is_shown(fake_app) -> None:
    app = fake_app(ASKING)
    async with app.run_test(size=SIZE) as pilot:
        _, run = await open_terminal(pilot)
        await wait_for(pilot, lambda: run.text.plain() == ["name? "])
        await pilot.press("ctrl+c")
        await wait_for(pilot, lambda: run.ended)
        assert run.text.plain()[-2] == "KeyboardInterrupt"
        status = str(terminal_screen(app).query_one("#terminal-status").render())
        assert "exit 130" in status
        assert "ended" in str(terminal_screen(app).query_one("#terminal-title").render())


async def test_the_terminal_has_the_screens_size_and_follows_a_resize(fake_app) -> None:
    app = fake_app(ASKING)
    async with app.run_test(size=SIZE) as pilot:
        _, run = await open_terminal(pilot)
        assert (run.terminal.size.rows, run.terminal.size.cols) == terminal_size(app.size) == (28, 100)
        view = terminal_screen(app).view
        assert (view.size.height, view.size.width) == (28, 100)
        await pilot.resize_terminal(90, 40)
        await wait_for(pilot, lambda: run.terminal.size.cols == 90)
        assert (run.terminal.size.rows, run.terminal.size.cols) == (38, 90)
        await pilot.press("enter")
        await wait_for(pilot, lambda: run.ended)


def test_keys_become_what_a_terminal_sends() -> None:
    assert key_bytes("a", "a") == "a" and key_bytes("A", "A") == "A" and key_bytes("é", "é") == "é"
    assert key_bytes("enter", "\r") == "\r" and key_bytes("backspace", "\x7f") == "\x7f"
    assert key_bytes("ctrl+c", "\x03") == "\x03" and key_bytes("ctrl+d", "\x04") == "\x04"
    assert key_bytes("ctrl+z", None) == "\x1a" and key_bytes("ctrl+a", None) == "\x01"
    assert key_bytes("up", None) == "\x1b[A" and key_bytes("left", None) == "\x1b[D"
    assert key_bytes("home", None) == "\x1b[H" and key_bytes("delete", None) == "\x1b[3~"
    assert key_bytes("tab", "\t") == "\t" and key_bytes("escape", "\x1b") == "\x1b"
    assert key_bytes("f5", None) is None  # no byte a line-oriented program reads


def test_the_terminal_text_follows_prompts_carriage_returns_and_backspaces() -> None:
    text = TerminalText()
    text.feed("name? ali\b \b")
    assert text.plain() == ["name? al "] and text.column == 8  # the prompt stays the current line
    text.feed("ice\r\n")
    text.feed("10%\r 50%\r100%\x1b[K\r\n")  # a progress bar overwrites its line
    text.feed("\x1b[01;3")  # an escape sequence cut by the chunk's end
    text.feed("4mdir\x1b[0m  file\r\nTraceback\r\n\tline\r\n")
    assert text.plain() == ["name? alice", "100%", "dir  file", "Traceback", "        line", ""]
    [span] = text.lines[2].spans
    assert (span.start, span.end) == (0, 3) and span.style.color is not None and span.style.bold  # type: ignore[union-attr]
    text.feed("\x1b[2J\x1b[Habc\x1b[2D\x1b[K")  # screen-addressing sequences are dropped
    assert text.plain()[-1] == "a"


def test_the_output_pane_shows_a_terminal_runs_text_plain() -> None:
    assert clean("\x1b[01;34md\x1b[0m  x\r\nname? ali\b \bice\r\n") == "d  x\nname? alice\n"


def test_a_backspace_echo_takes_back_a_character_the_pane_already_shows() -> None:
    from isol8_tui.transcript import Transcript

    transcript = Transcript(10, 10)
    for chunk in ("name? ", "a", "x", "\b \b", "l\r\n"):
        transcript.write(clean(chunk))
    assert transcript.lines == ["name? al", ""]
