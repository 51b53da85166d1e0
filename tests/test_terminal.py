"""Interactive runs on a pseudo-terminal: the program sees a TTY (colours, its size), reads keys as
they are typed, follows resizes and signals; and a terminal gives it nothing it could not get
from a pipe (the run's limits, the kill at its end, the next run's isolation)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterator

import pytest
from test_server_support import ServerProcess, in_process, serve

from engine.config import Isol8Config
from engine.engine import DockerIsol8
from engine.errors import InputTooLarge, Isol8Error
from engine.interface import Engine
from engine.models import ExecutionRequest, StreamEvent
from engine.remote import RemoteIsol8
from engine.server.app import ServerSettings, create_app
from engine.terminal import Terminal

pytestmark = pytest.mark.docker


class Screen:
    """Runs one interactive execution in the background and collects what it prints."""

    def __init__(self, engine: Engine, request: ExecutionRequest, terminal: Terminal) -> None:
        self.text = ""
        self.events: list[StreamEvent] = []
        self._changed = asyncio.Event()
        self.task = asyncio.ensure_future(self._run(engine.execute_stream(request, terminal)))

    async def _run(self, stream: object) -> None:
        async for event in stream:  # type: ignore[attr-defined]
            self.events.append(event)
            if event.type in ("stdout", "stderr"):
                self.text += event.data
            self._changed.set()

    async def shows(self, expected: str, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while expected not in self.text:
                self._changed.clear()
                await self._changed.wait()

    async def exit(self) -> StreamEvent:
        await asyncio.wait_for(self.task, 60)
        return self.events[-1]


async def test_the_program_sees_a_terminal_of_the_asked_size(engine: DockerIsol8) -> None:
    code = "import os, sys\nprint(sys.stdin.isatty(), sys.stdout.isatty(), sys.stderr.isatty(), os.get_terminal_size(), os.environ['TERM'])"
    screen = Screen(engine, ExecutionRequest(code=code), Terminal(rows=30, cols=100))
    end = await screen.exit()
    assert end.type == "exit" and end.data == "0"
    assert "True True True os.terminal_size(columns=100, lines=30) xterm-256color" in screen.text
    assert all(event.type != "stderr" for event in screen.events)  # a terminal has one output stream


async def test_colours_come_through_from_programs_that_colour_only_terminals(engine: DockerIsol8) -> None:
    screen = Screen(engine, ExecutionRequest(cmd="mkdir -p d && ls --color=auto"), Terminal())
    await screen.exit()
    assert "\x1b[" in screen.text and "d" in screen.text
    piped = await engine.execute(ExecutionRequest(cmd="mkdir -p d && ls --color=auto"))
    assert "\x1b[" not in piped.stdout


async def test_keys_reach_a_program_that_waits_for_them(engine: DockerIsol8) -> None:
    terminal = Terminal()
    screen = Screen(engine, ExecutionRequest(code="name = input('name? ')\nprint(f'hello {name}!')"), terminal)
    await screen.shows("name? ")
    terminal.write("alice\r")
    end = await screen.exit()
    assert end.data == "0" and "hello alice!" in screen.text


@pytest.mark.parametrize(("runtime", "code"), [("node", "console.log(process.stdout.isTTY, process.stdin.isTTY)"),
                                              ("bash", "[ -t 0 ] && [ -t 1 ] && echo true true")])  # fmt: skip
async def test_other_runtimes_see_the_terminal(engine: DockerIsol8, runtime: str, code: str) -> None:
    screen = Screen(engine, ExecutionRequest(code=code, runtime=runtime), Terminal())
    end = await screen.exit()
    assert end.data == "0" and "true true" in re.sub(r"\x1b\[[0-9;]*m", "", screen.text).lower()


async def test_a_resize_reaches_the_program(engine: DockerIsol8) -> None:
    code = """
import os, signal, sys
signal.signal(signal.SIGWINCH, lambda *_: print('resized', os.get_terminal_size(), flush=True))
print('ready', flush=True)
sys.stdin.readline()
"""
    terminal = Terminal(rows=24, cols=80)
    screen = Screen(engine, ExecutionRequest(code=code), terminal)
    await screen.shows("ready")
    terminal.resize(50, 132)
    await screen.shows("resized os.terminal_size(columns=132, lines=50)")
    terminal.write("\r")
    assert (await screen.exit()).data == "0"


async def test_closing_the_input_is_end_of_file(engine: DockerIsol8) -> None:
    terminal = Terminal()
    screen = Screen(engine, ExecutionRequest(code="import sys\nprint(repr(sys.stdin.read()))"), terminal)
    terminal.write("partial line")  # no newline: the EOF must still end the read
    terminal.close()
    end = await screen.exit()
    assert end.data == "0" and "'partial line'" in screen.text


async def test_ctrl_c_and_sigint_interrupt_the_program(engine: DockerIsol8) -> None:
    code = "import time\ntry:\n    print('waiting', flush=True)\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('interrupted')"
    for send in (lambda t: t.write("\x03"), lambda t: t.signal("SIGINT")):
        terminal = Terminal()
        screen = Screen(engine, ExecutionRequest(code=code), terminal)
        await screen.shows("waiting")
        send(terminal)
        end = await screen.exit()
        assert end.data == "0" and "interrupted" in screen.text


async def test_stdin_of_the_request_is_typed_first(engine: DockerIsol8) -> None:
    terminal = Terminal()
    request = ExecutionRequest(code="print(input() + input())", stdin="ab\n")
    screen = Screen(engine, request, terminal)
    await screen.shows("ab")  # the terminal echoes what was typed ahead
    terminal.write("cd\r")
    assert (await screen.exit()).data == "0"
    assert "abcd" in screen.text


async def test_an_interactive_run_keeps_its_timeout_and_its_background_processes_die(engine: DockerIsol8) -> None:
    session = DockerIsol8(mode="persistent")
    async with session:
        code = "(sleep 300 < /dev/tty > /dev/tty &) ; read line"
        screen = Screen(session, ExecutionRequest(cmd=code, timeout_ms=1500), Terminal())
        end = await screen.exit()
        assert end.timed_out and end.data == "137"
        after = await session.execute(ExecutionRequest(cmd="ps -eo user,args | grep -c '[s]leep 300' || true"))
        assert after.stdout.strip() == "0"


async def test_input_beyond_the_stdin_bound_is_refused() -> None:
    terminal = Terminal()
    terminal.write(b"x" * (1 << 20))
    with pytest.raises(InputTooLarge):
        for _ in range(64):
            terminal.write(b"x" * (1 << 20))


async def test_leaving_an_interactive_run_kills_it_and_the_session_works_on(engine: DockerIsol8) -> None:
    async with DockerIsol8(mode="persistent") as session:
        terminal = Terminal()
        stream = session.execute_stream(ExecutionRequest(code="print('up', flush=True)\ninput()"), terminal)
        async with contextlib.aclosing(stream):
            async for event in stream:
                if "up" in event.data:
                    break
        terminal.write("too late\r")  # nobody reads it: it must not reach the next run
        result = await session.execute(ExecutionRequest(code="import sys\nprint(repr(sys.stdin.read()))", stdin=""))
        assert result.stdout == "''\n"


# --- over the server's WebSocket ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, docker_client: object) -> Iterator[ServerProcess]:
    with serve(tmp_path_factory.mktemp("terminal")) as running:
        yield running


async def test_an_interactive_run_through_the_server(server: ServerProcess) -> None:
    code = """
import os, signal
signal.signal(signal.SIGWINCH, lambda *_: print('size', os.get_terminal_size(), flush=True))
print('tty', os.isatty(0), flush=True)
print('got', input('> '))
"""
    terminal = Terminal(rows=20, cols=70)
    async with RemoteIsol8(server.url, server.key) as remote:
        screen = Screen(remote, ExecutionRequest(code=code), terminal)
        await screen.shows("> ")
        terminal.resize(40, 90)
        await screen.shows("size os.terminal_size(columns=90, lines=40)")
        terminal.write("é\tok\r".encode())  # bytes travel base64
        end = await screen.exit()
    assert end.data == "0", repr(screen.text)
    assert "tty True" in screen.text and "got é\tok" in screen.text


async def test_malformed_input_messages_do_not_end_the_run(server: ServerProcess) -> None:
    from websockets.asyncio.client import connect

    url = "ws" + server.url.removeprefix("http") + "/execute/ws"
    async with connect(url, additional_headers=server.headers) as socket:
        request = {"code": "print('in', input(), flush=True)"}
        await socket.send(json.dumps({"type": "execute", "request": request, "tty": {"rows": 24, "cols": 80}}))
        for bad in ("not json", {"type": "stdin"}, {"type": "stdin", "data": "%%", "encoding": "base64"},
                    {"type": "resize", "rows": 0, "cols": 10**9}, {"type": "signal", "signal": "SIGKILL"},
                    {"type": "stdin", "data": "x" * 70_000}):  # fmt: skip
            await socket.send(bad if isinstance(bad, str) else json.dumps(bad))
        await socket.send(json.dumps({"type": "stdin", "data": "fine\r"}))
        events = [json.loads(message) async for message in socket]
    assert events[-1] == {"type": "exit", "data": "0", "truncated": False, "timedOut": False, "oomKilled": False} or (
        events[-1]["type"] == "exit" and events[-1]["data"] == "0"
    )
    assert "in fine" in "".join(event["data"] for event in events if event["type"] == "stdout")


async def test_a_tty_request_without_websocket_says_so() -> None:
    app = create_app(ServerSettings(Isol8Config(), "key"))
    with (
        in_process(app, ws="none") as url,
        pytest.raises(Isol8Error, match="Interactive runs need the server's WebSocket"),
    ):
        async with RemoteIsol8(url, "key") as remote:
            async for _ in remote.execute_stream(ExecutionRequest(code="1"), Terminal()):
                pass


async def test_a_terminal_size_out_of_bounds_is_refused_before_any_run(server: ServerProcess) -> None:
    from websockets.asyncio.client import connect

    url = "ws" + server.url.removeprefix("http") + "/execute/ws"
    for size in ({"rows": 0, "cols": 80}, {"rows": 24, "cols": 100_000}, {"rows": "many", "cols": 80}):
        async with connect(url, additional_headers=server.headers) as socket:
            await socket.send(json.dumps({"type": "execute", "request": {"code": "print(1)"}, "tty": size}))
            events = [json.loads(message) async for message in socket]
        assert [event["type"] for event in events] == ["error"], events
        assert "tty." in events[0]["data"], events
