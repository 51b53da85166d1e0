"""One workbench scenario on the fake backend and on the real engine (Docker), with the same visible
outcome, so the fake the other tests rely on cannot drift from the engine it stands in for."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_engine import FakeBackend
from textual.widgets import TextArea
from tui_helpers import main_screen, run_and_wait, session_from_dialog, wait_for

from engine.config import Isol8Config, TuiSettings
from isol8_tui.app import WorkbenchApp, make_app
from isol8_tui.bridge import Backend, RealBackend
from isol8_tui.screens.main import MainScreen

FAILING = 'import sys\nprint("to stdout")\nprint("to stderr", file=sys.stderr)\nsys.exit(3)\n'
SLOW = 'import time\nprint("before the timeout")\ntime.sleep(30)\n'
CONFIG = Isol8Config.model_validate({"defaults": {"timeoutMs": 2000}})


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.docker)])
def any_backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "real":
        request.getfixturevalue("docker_client")  # Docker up and the images built, else a clear failure
        return RealBackend()
    return FakeBackend()


def contract_app(path: Path, backend: Backend, config: Isol8Config = CONFIG) -> WorkbenchApp:
    """The workbench on `backend` (the fake or the real engine), `path` open, no watching."""
    return make_app(
        path, watch=False, config=config, settings=TuiSettings(), backend=backend, cursor_blink=False, animations=False
    )


def shown(screen: MainScreen) -> tuple[list[str], list[str], str]:
    """What the panes show: stdout, stderr, and the status line with its duration left out."""
    status = str(screen.runbar.query_one("#status").render())
    status = re.sub(r"\d+(\.\d+)? m?s\b|\d+m\d+\.\ds", "<duration>", status)
    return list(screen.outputs.stdout.lines), list(screen.outputs.stderr.lines), status


async def test_a_new_session_runs_code_that_fails_then_one_that_times_out(any_backend: Backend, workdir) -> None:
    (workdir / "main.py").write_text(FAILING)
    app = contract_app(workdir / "main.py", any_backend)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        session = await session_from_dialog(pilot, "python-2")  # python, no network
        await wait_for(pilot, lambda: session.state == "idle", timeout=60)

        await run_and_wait(pilot, timeout=60)
        assert shown(screen) == (["to stdout", ""], ["to stderr", ""], "✗ exit 3 · <duration>")
        assert session.state == "idle" and session.runs == 1

        screen.query_one(TextArea).text = SLOW
        await run_and_wait(pilot, timeout=60)
        assert shown(screen) == (
            ["before the timeout", ""],
            ["--- EXECUTION TIMED OUT ---", ""],
            "✗ exit 137 · <duration> · ⏱ timed out",
        )
        assert session.state == "idle" and session.runs == 2


async def test_a_traceback_names_the_open_file(any_backend: Backend, workdir) -> None:
    """The file runs under its own name on both engines, so the traceback's first frame names it."""
    (workdir / "train.py").write_text('print("ok")\nraise KeyError("late")\n')
    app = contract_app(workdir / "train.py", any_backend)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.selected is not None and screen.selected.state == "idle", timeout=60)
        await run_and_wait(pilot, timeout=60)
        stdout, stderr, status = shown(screen)
        assert stdout == ["ok", ""] and status == "✗ exit 1 · <duration>"
        assert stderr[0] == "Traceback (most recent call last):"
        assert stderr[1] == '  File "/sandbox/train.py", line 2, in <module>'
        assert stderr[-2] == "KeyError: 'late'"


async def test_an_interactive_run_answers_input_through_the_terminal_screen(any_backend: Backend, workdir) -> None:
    """On both engines: the prompt without a newline, the typed keys echoed, a backspace taken back,
    the answer printed; the output pane shows the same lines plain."""
    from isol8_tui.screens.terminal import TerminalScreen

    (workdir / "ask.py").write_text("print('got', input('name? '))\n")
    # the default timeout: typing on a busy machine can take longer than CONFIG's 2 s
    app = contract_app(workdir / "ask.py", any_backend, Isol8Config())
    async with app.run_test(size=(100, 30)) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.selected is not None and screen.selected.state == "idle", timeout=60)
        await pilot.press("shift+f5")
        await wait_for(pilot, lambda: isinstance(app.screen, TerminalScreen))
        run = app.screen.run  # type: ignore[attr-defined]
        await wait_for(pilot, lambda: run.text.plain()[-1] == "name? ", timeout=60)
        await pilot.press("a", "l", "x", "backspace", "i", "c", "e")
        try:
            await wait_for(pilot, lambda: run.text.plain()[-1].rstrip() == "name? alice", timeout=30)
        except AssertionError:
            raise AssertionError(f"the terminal shows {run.text.plain()!r}") from None
        await pilot.press("enter")
        await wait_for(pilot, lambda: run.ended, timeout=60)
        assert [line.rstrip() for line in run.text.plain()] == ["name? alice", "got alice", ""]
        assert run.status.state == "ok" and run.status.exit_code == 0
        await pilot.press("ctrl+right_square_bracket")
        await wait_for(pilot, lambda: app.screen is screen)
        screen.outputs.flush()
        assert [line.rstrip() for line in screen.outputs.stdout.lines] == ["name? alice", "got alice", ""]
        assert list(screen.outputs.stderr.lines) == []


@dataclass(frozen=True)
class StatefulCase:
    """Two runs on one interpreter, then one after a reset, in one runtime's spelling."""

    file: str
    define: str
    use: str
    used: tuple[list[str], list[tuple[str, bool]]]  # stdout and (result text, main) after `use`
    forgotten: tuple[list[str], str, str]  # stdout, a stderr line and the exit after the reset


STATEFUL_CASES = {
    "python": StatefulCase(
        "main.py", "x = 41\n", "x + 1\n", ([], [("42", True)]), ([], "NameError: name 'x' is not defined", "✗ exit 1")
    ),
    "node": StatefulCase(
        "main.js",
        "let x = 41;\n",
        "x + 1\n",
        ([], [("42", True)]),
        ([], "ReferenceError: x is not defined", "✗ exit 1"),
    ),
    "bash": StatefulCase("main.sh", "X=41\n", 'echo "got $X"\n', (["got 41", ""], []), (["got ", ""], "", "✓ exit 0")),
}


@pytest.mark.parametrize("runtime", STATEFUL_CASES)
async def test_a_stateful_session_keeps_variables_until_reset(any_backend: Backend, workdir, runtime: str) -> None:
    """On both engines: the dialog's toggle makes a stateful session; a variable survives into the next
    run (whose last expression is its main result, where the runtime has one); a reset ends the
    interpreter, so the name is gone."""
    from isol8_tui.widgets.results import ResultView

    case = STATEFUL_CASES[runtime]
    (workdir / case.file).write_text(case.define)
    app = contract_app(workdir / case.file, any_backend, Isol8Config())
    async with app.run_test(size=(120, 36), notifications=True) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        session = await session_from_dialog(pilot, f"{runtime}-2", stateful=True)
        assert session.stateful
        await wait_for(pilot, lambda: session.state == "idle", timeout=60)

        def results() -> list[tuple[str, bool]]:
            return [(v.result.text(), v.result.is_main_result) for v in screen.result_pane.query(ResultView)]

        await run_and_wait(pilot, timeout=60)
        assert shown(screen) == ([], [], "✓ exit 0 · <duration> · state fresh") and results() == []

        screen.query_one(TextArea).text = case.use
        await run_and_wait(pilot, timeout=60)
        stdout, expected = case.used
        assert shown(screen) == (stdout, [], "✓ exit 0 · <duration> · state kept") and results() == expected

        await pilot.press("shift+f9")
        await wait_for(pilot, lambda: any("was reset" in str(n.message) for n in app._notifications), timeout=60)
        await run_and_wait(pilot, timeout=60)
        stdout, error, exit_status = case.forgotten
        assert shown(screen)[0] == stdout and shown(screen)[2] == f"{exit_status} · <duration> · state fresh"
        assert results() == []
        if error:
            assert error in shown(screen)[1], shown(screen)[1]
