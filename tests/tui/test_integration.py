"""The workbench on the real engine and Docker: a session runs code, state survives, a saved file re-runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.message import Message
from textual.widgets import TextArea
from tui_helpers import main_screen, run_and_wait, wait_for, write_until_rerun

from engine.config import TuiSettings
from engine.docker import DockerClient
from isol8_tui.app import make_app
from isol8_tui.bridge import RunStarted
from isol8_tui.sessions import SessionSpec

pytestmark = pytest.mark.docker

SIZE = (120, 36)


def real_app(path: Path, **options: object):  # type: ignore[no-untyped-def]
    defaults: dict[str, object] = {
        "watch": False,
        "cursor_blink": False,
        "animations": False,
        "settings": TuiSettings(),
    }
    return make_app(path, **{**defaults, **options})  # type: ignore[arg-type]


async def test_a_session_runs_python_and_the_panes_show_it(docker_client: DockerClient, workdir: Path) -> None:
    path = workdir / "hello.py"
    path.write_text(
        'import sys\nopen("/sandbox/state.txt", "w").write("kept")\n'
        'print("hello from a real sandbox")\nprint("to stderr", file=sys.stderr)\nsys.exit(3)\n'
    )
    app = real_app(path)
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.selected is not None and screen.selected.state == "idle", timeout=60)
        assert screen.docker_available is True and screen.missing_images == []
        await run_and_wait(pilot, timeout=60)
        assert list(screen.outputs.stdout.lines) == ["hello from a real sandbox", ""]
        assert list(screen.outputs.stderr.lines) == ["to stderr", ""]
        status = str(screen.runbar.query_one("#status").render())
        assert "✗ exit 3" in status and " ms" in status
        session = screen.selected
        assert session is not None
        container_id = session.engine.container_id  # type: ignore[attr-defined]
        assert container_id in {c["Id"] for c in docker_client.managed_containers()}
        # the session is persistent: the next run sees the file the first one wrote
        screen.editor_pane.editor.text = 'print(open("/sandbox/state.txt").read())\n'
        await run_and_wait(pilot, timeout=60)
        assert list(screen.outputs.stdout.lines) == ["kept", ""]
        assert "✓ exit 0" in str(screen.runbar.query_one("#status").render())
    # quitting stops the session: its container is gone
    assert container_id not in {c["Id"] for c in docker_client.managed_containers()}


async def test_editing_the_watched_file_reruns_it(docker_client: DockerClient, workdir: Path) -> None:
    path = workdir / "watched.py"
    path.write_text('print("first version")\n')
    app = real_app(path, watch=True, settings=TuiSettings(watch_debounce_ms=50))
    messages: list[Message] = []
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.selected is not None and screen.selected.state == "idle", timeout=60)
        await write_until_rerun(pilot, path, 'print("second version")\n', messages, timeout=90)
        assert [m.trigger for m in messages if isinstance(m, RunStarted)][-1] == "watch"
        screen.outputs.flush()
        await pilot.pause()
        assert list(screen.outputs.stdout.lines) == ["second version", ""]
        assert screen.editor_pane.text == 'print("second version")\n'
        assert "✓ exit 0" in str(screen.runbar.query_one("#status").render())


async def test_two_sessions_run_at_once_each_in_its_own_panes(docker_client: DockerClient, workdir: Path) -> None:
    """A long run in one session goes on while another session runs and finishes; each shows its own."""
    path = workdir / "slow.py"
    path.write_text('import time\nprint("slow started", flush=True)\ntime.sleep(6)\nprint("slow done")\n')
    app = real_app(path)
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.selected is not None and screen.selected.state == "idle", timeout=60)
        slow = screen.selected
        assert slow is not None
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: "slow started" in screen.view_of(slow).stdout.lines, timeout=60)
        fast = screen.create_session(SessionSpec("python"))
        assert fast is not None
        screen.query_one(TextArea).text = 'print("fast")\n'
        await run_and_wait(pilot, timeout=90)
        assert screen.outputs.stdout.lines == ["fast", ""]
        assert screen.view_of(slow).run is not None  # the slow one is still running, in its own session
        assert slow.state == "running" and fast.state == "idle"
        screen.select_session(slow)
        await wait_for(pilot, lambda: screen.current_run is None, timeout=60)
        screen.outputs.flush()
        assert screen.outputs.stdout.lines == ["slow started", "slow done", ""]
        assert "✓ exit 0" in str(screen.runbar.query_one("#status").render())
