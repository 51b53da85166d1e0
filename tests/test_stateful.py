"""Stateful sessions: one interpreter per session keeps its variables between executions, and returns
rich results (MIME bundles). Real Docker, real interpreters."""

from __future__ import annotations

import ast
import asyncio
import base64
import struct
import zlib
from collections.abc import AsyncIterator

import pytest

from engine import DockerIsol8, ExecutionRequest, Isol8Error
from engine.docker import DockerClient
from engine.errors import NotStateful
from engine.images.builder import HASH_LABEL
from engine.images.custom import build_custom

pytestmark = pytest.mark.docker


@pytest.fixture
async def session() -> AsyncIterator[DockerIsol8]:
    async with DockerIsol8(mode="persistent", stateful=True, timeout_ms=10_000) as engine:
        yield engine


async def run(engine: DockerIsol8, code: str, runtime: str = "python", **extra: object):
    return await engine.execute(ExecutionRequest(code=code, runtime=runtime, **extra))


def png_1x1() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack("!IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


# --- state ------------------------------------------------------------------------------------------
async def test_python_keeps_variables_functions_imports_and_its_working_directory(session: DockerIsol8) -> None:
    first = await run(session, "import os, json\nx = 41\ndef double(n):\n    return 2 * n\nos.chdir('/tmp')")
    assert (first.exit_code, first.state, first.results) == (0, "fresh", [])
    second = await run(session, "print(json.dumps({'x': double(x)}), os.getcwd())\nx + 1")
    assert second.state == "kept"
    assert second.stdout == '{"x": 82} /tmp\n'
    assert [(r.data, r.is_main_result) for r in second.results or []] == [({"text/plain": "42"}, True)]


async def test_node_keeps_declarations_awaits_at_top_level_and_imports_session_packages(session: DockerIsol8) -> None:
    package = {
        "/sandbox/node_modules/greet/package.json": '{"name": "greet", "main": "index.js"}',
        "/sandbox/node_modules/greet/index.js": "module.exports = (name) => `hello ${name}`;",
    }
    first = await run(session, "var count = 1; const base = 40; function inc() { count += 1; }", "node", files=package)
    assert (first.exit_code, first.state) == (0, "fresh"), first.stderr
    awaited = await run(session, "inc(); const later = await Promise.resolve(base + count); later", "node")
    assert awaited.exit_code == 0, awaited.stderr
    assert [r.text() for r in awaited.results or []] == ["42"]
    imported = await run(session, "import greet from 'greet';\nconsole.log(greet('node'), later)", "node")
    assert (imported.exit_code, imported.stdout, imported.state) == (0, "hello node 42\n", "kept"), imported.stderr


async def test_bash_keeps_variables_functions_and_directory(session: DockerIsol8) -> None:
    await run(session, 'name=world; greet() { echo "hi $1"; }; cd /tmp; export LOUD=1', "bash")
    second = await run(session, 'greet "$name"; pwd; echo "${LOUD:-unset}"', "bash")
    assert (second.stdout, second.state) == ("hi world\n/tmp\n1\n", "kept")


async def test_the_request_env_reaches_each_cell_and_workdir_moves_it(session: DockerIsol8) -> None:
    await run(session, "import os", files={"/sandbox/data/x.txt": "x"})
    moved = await run(session, "print(os.environ['COLOR'], os.getcwd(), open('x.txt').read())", env={"COLOR": "red"},
                      workdir="data")  # fmt: skip
    assert moved.stdout == "red /sandbox/data x\n", moved.stderr


async def test_an_error_keeps_the_state_and_names_the_users_file(session: DockerIsol8) -> None:
    await run(session, "x = 1")
    failed = await run(session, "y = 2\nraise ValueError('bad')", file_name="analysis.py")
    assert failed.exit_code == 1 and failed.state == "kept"
    assert 'File "/sandbox/analysis.py", line 2' in failed.stderr and "ValueError: bad" in failed.stderr
    assert "kernel_python" not in failed.stderr  # the interpreter's own frames are not the user's
    after = await run(session, "print(x, y)")
    assert after.stdout == "1 2\n"


async def test_sys_exit_ends_the_cell_not_the_interpreter(session: DockerIsol8) -> None:
    await run(session, "x = 5")
    exited = await run(session, "import sys\nsys.exit(3)")
    assert (exited.exit_code, exited.state) == (3, "kept")
    assert (await run(session, "x")).results[0].text() == "5"  # type: ignore[index]


async def test_an_interpreter_that_exits_says_its_state_is_lost_and_the_next_run_starts_fresh(
    session: DockerIsol8,
) -> None:
    await run(session, "x = 5")
    gone = await run(session, "import os\nos._exit(4)")
    assert (gone.exit_code, gone.state) == (4, "lost")
    assert "INTERPRETER STATE LOST: the interpreter ended (exit code 4)" in gone.stderr
    fresh = await run(session, "print('x' in globals())")
    assert (fresh.stdout, fresh.state) == ("False\n", "fresh")


# --- timeouts, memory, processes ---------------------------------------------------------------------
async def test_a_python_timeout_interrupts_the_cell_and_keeps_the_state(session: DockerIsol8) -> None:
    await run(session, "x = 41")
    stuck = await run(session, "import time\nwhile True:\n    time.sleep(0.01)", timeout_ms=1500)
    assert (stuck.timed_out, stuck.exit_code, stuck.state) == (True, 137, "kept")
    assert "KeyboardInterrupt" in stuck.stderr and "STATE LOST" not in stuck.stderr
    assert (await run(session, "x + 1")).results[0].text() == "42"  # type: ignore[index]


async def test_a_cell_that_ignores_the_interrupt_is_killed_and_says_the_state_is_lost(session: DockerIsol8) -> None:
    await run(session, "x = 41")
    events = [
        event
        async for event in session.execute_stream(
            ExecutionRequest(
                code="import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass", timeout_ms=1000
            )
        )
    ]
    exit_event = events[-1]
    assert (exit_event.type, exit_event.timed_out, exit_event.state) == ("exit", True, "lost")
    errors = [event.data for event in events if event.type == "error"]
    assert errors and "INTERPRETER STATE LOST" in errors[0] and "EXECUTION TIMED OUT" in errors[0]
    fresh = await run(session, "print('x' in globals())")
    assert (fresh.stdout, fresh.state) == ("False\n", "fresh")


@pytest.mark.parametrize("runtime", ["node", "bash"])
async def test_timeouts_in_node_and_bash_say_what_became_of_the_state(session: DockerIsol8, runtime: str) -> None:
    await run(session, {"node": "var x = 1", "bash": "x=1"}[runtime], runtime)
    result = await run(session, {"node": "while (true) {}", "bash": "while true; do :; done"}[runtime], runtime,
                       timeout_ms=1000)  # fmt: skip
    assert result.timed_out
    if runtime == "node":  # SIGINT breaks a running script: the context survives
        assert result.state == "kept"
        assert (await run(session, "x", "node")).results[0].text() == "1"  # type: ignore[index]
    else:  # a shell cannot be interrupted without ending it
        assert result.state == "lost" and "INTERPRETER STATE LOST" in result.stderr
        assert (await run(session, "echo ${x:-gone}", "bash")).stdout == "gone\n"


async def test_out_of_memory_says_the_state_is_lost() -> None:
    async with DockerIsol8(mode="persistent", stateful=True, memory_limit="128m") as engine:
        await run(engine, "x = 1")
        result = await run(engine, "hog = b'x' * (400 << 20)")
        assert (result.oom_killed, result.state) == (True, "lost")
        assert "killed at the memory limit" in result.stderr and "OUT OF MEMORY" in result.stderr
        after = await run(engine, "print('x' in globals())")
        assert (after.stdout, after.state) == ("False\n", "fresh")


async def test_processes_a_cell_starts_end_with_it_while_the_interpreter_lives(session: DockerIsol8) -> None:
    started = await run(session, "import subprocess\nchild = subprocess.Popen(['sleep', '600'])\nchild.pid")
    pid = started.results[0].text()  # type: ignore[index]
    after = await run(session, f"import os\nprint(os.path.exists('/proc/{pid}'), child.poll() is not None)")
    assert after.stdout == "False True\n" and after.state == "kept"


async def test_a_fork_bomb_in_a_cell_is_contained_and_the_state_survives(session: DockerIsol8) -> None:
    await run(session, "x = 7")
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = await run(session, bomb, timeout_ms=1500)
    assert result.timed_out
    after = await run(session, "import os\nprint(x, len([p for p in os.listdir('/proc') if p.isdigit()]) < 10)")
    assert after.stdout == "7 True\n", (after.stdout, after.stderr, after.state)


async def test_garbage_on_the_results_channel_ends_the_interpreter_cleanly(session: DockerIsol8) -> None:
    """The cell owns every descriptor of its process: what it writes there cannot wedge the session."""
    flood = (
        "import os, stat\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        "        if stat.S_ISFIFO(os.fstat(fd).st_mode):\n"
        "            os.write(fd, b'not json\\n')\n"
        "    except OSError:\n"
        "        pass\n"
        "import time\ntime.sleep(0.5)"
    )
    result = await run(session, flood, timeout_ms=5000)
    assert result.state == "lost"
    assert (await run(session, "print('ok')")).stdout == "ok\n"


async def test_reset_starts_a_fresh_interpreter_and_keeps_the_files(session: DockerIsol8) -> None:
    await run(session, "x = 1\nopen('/sandbox/kept.txt', 'w').write('kept')")
    await session.reset()
    after = await run(session, "print('x' in globals(), open('/sandbox/kept.txt').read())")
    assert (after.stdout, after.state) == ("False kept\n", "fresh")
    await session.reset()
    await session.reset()  # idempotent, also with no interpreter running


async def test_reset_and_stateful_only_requests_are_refused_clearly() -> None:
    async with DockerIsol8(mode="persistent") as plain:
        with pytest.raises(NotStateful, match="not stateful"):
            await plain.reset()
    with pytest.raises(ValueError, match='stateful needs mode "persistent"'):
        DockerIsol8(stateful=True)
    async with DockerIsol8(mode="persistent", stateful=True) as engine:
        with pytest.raises(Isol8Error, match="takes no stdin"):
            await run(engine, "input()", stdin="x")
        with pytest.raises(Isol8Error, match='"deno" runs each execution as a new process'):
            await run(engine, "console.log(1)", "deno")


async def test_cmd_runs_beside_the_interpreter_without_ending_it(session: DockerIsol8) -> None:
    await run(session, "x = 3")
    command = await session.execute(ExecutionRequest(cmd="echo from-cmd; sleep 30 &"))
    assert command.stdout == "from-cmd\n" and command.state is None
    assert (await run(session, "x")).results[0].text() == "3"  # type: ignore[index]


# --- rich results ------------------------------------------------------------------------------------
async def test_display_protocol_fills_the_bundle_and_the_final_expression_is_the_main_result(
    session: DockerIsol8,
) -> None:
    code = (
        "import base64\n"
        "class Rich:\n"
        "    def _repr_html_(self): return '<table><tr><td>1</td></tr></table>'\n"
        "    def _repr_markdown_(self): return '**bold**'\n"
        "    def _repr_json_(self): return {'a': 1}\n"
        f"    def _repr_png_(self): return base64.b64decode({base64.b64encode(png_1x1()).decode()!r})\n"
        "    def __repr__(self): return 'Rich()'\n"
        "print('before')\n"
        "display(Rich())\n"
        "print('after')\n"
        "Rich()"
    )
    events = [event async for event in session.execute_stream(ExecutionRequest(code=code))]
    kinds = [event.type for event in events if event.type in ("stdout", "result")]
    in_order = [kind for index, kind in enumerate(kinds) if index == 0 or kinds[index - 1] != kind]
    assert in_order == ["stdout", "result", "stdout", "result"]  # a print may come in two writes
    shown, main = (event.result for event in events if event.result is not None)
    assert shown is not None and main is not None
    assert (shown.is_main_result, main.is_main_result) == (False, True)
    assert main.data["text/plain"] == "Rich()" and main.data["text/markdown"] == "**bold**"
    assert main.data["text/html"].startswith("<table>") and main.data["application/json"] == '{"a": 1}'
    assert main.binary("image/png") == png_1x1()
    assert events[-1].state == "fresh"  # the first run of the session started its interpreter


async def test_results_are_masked_like_output_and_bounded_like_files() -> None:
    async with DockerIsol8(mode="persistent", stateful=True, secrets={"TOKEN": "s3cr3t-value"},
                           max_file_size=100_000) as engine:  # fmt: skip
        masked = await run(engine, "import os\nclass H:\n    def _repr_html_(self): return os.environ['TOKEN']\nH()")
        assert masked.results and "s3cr3t-value" not in masked.results[0].data["text/html"]
        assert "***" in masked.results[0].data["text/html"]
        big = await run(engine, "for _ in range(5):\n    display('y' * 40_000)")
        assert len(big.results or []) == 2
        assert "3 RESULT(S) LEFT OUT" in big.stderr and big.state == "kept"


# --- pandas and matplotlib, from a custom image -------------------------------------------------------
@pytest.fixture(scope="module")
def dataviz_image(docker_client: DockerClient) -> str:
    """matplotlib and pandas baked into an image, once per agent version (the tag carries its hash)."""
    base = (docker_client.image_labels("isol8:python") or {}).get(HASH_LABEL, "none")
    tag = f"isol8-test-dataviz:{base[:12]}"
    for image in docker_client.images("isol8.custom=true"):  # the ones built for earlier agents
        for old in image.get("RepoTags") or []:
            if old.startswith("isol8-test-dataviz:") and old != tag:
                docker_client.remove_image(old)
    build_custom(docker_client, "python", ["matplotlib", "pandas"], None, tag)
    return tag


async def test_a_dataframe_comes_back_as_html_and_a_figure_as_png(dataviz_image: str) -> None:
    async with DockerIsol8(mode="persistent", stateful=True, image=dataviz_image, timeout_ms=60_000) as engine:
        table = await run(engine, "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2], 'b': [3, 4]})\ndf")
        assert table.exit_code == 0, table.stderr
        (frame,) = table.results or []
        assert frame.is_main_result and "<table" in frame.data["text/html"] and "a  b" in frame.text()
        plot = await run(
            engine, "import matplotlib.pyplot as plt\nplt.plot(df['a'], df['b'])\nplt.show()\nprint('drawn')"
        )
        assert (plot.exit_code, plot.stderr) == (0, "")
        (figure,) = plot.results or []
        assert figure.binary("image/png").startswith(b"\x89PNG") and not figure.is_main_result
        again = await run(engine, "print(df['b'].sum())")  # the figure was shown and closed: nothing more
        assert (again.stdout, again.results) == ("7\n", [])


async def test_nothing_of_the_interpreter_runs_between_executions(session: DockerIsol8) -> None:
    """A thread a cell leaves behind is stopped with the interpreter until the next run: no work, no
    network, no output outside an execution's time limit."""
    started = await run(
        session,
        "import threading, time\nstamps = []\n"
        "def tick():\n    while True:\n        stamps.append(time.monotonic())\n        time.sleep(0.005)\n"
        "threading.Thread(target=tick, daemon=True).start()\ntime.sleep(0.05)\ntime.monotonic()",
    )
    ended = float(started.results[0].text())  # type: ignore[index]
    await asyncio.sleep(0.6)
    later = await run(session, "begun = time.monotonic()\n[begun, [s for s in stamps if s > " + repr(ended) + "]]")
    begun, between = ast.literal_eval(later.results[0].text())  # type: ignore[index]
    assert begun - ended > 0.5
    assert not [stamp for stamp in between if ended + 0.05 < stamp < begun - 0.05]


async def test_a_module_written_after_the_interpreter_started_imports(session: DockerIsol8) -> None:
    """Packages installed into the session later (pip's user site, made after the interpreter
    started) import in the next cell."""
    first = await run(session, "import site\nx = 1\nsite.getusersitepackages()")
    site = ast.literal_eval(first.results[0].text()) + "/latecomer.py"  # type: ignore[index]
    result = await run(session, "import latecomer\nlatecomer.VALUE + x", files={site: "VALUE = 41"})
    assert result.exit_code == 0, result.stderr
    assert result.results[0].text() == "42"  # type: ignore[index]


async def test_a_caller_leaving_mid_cell_interrupts_it_and_the_state_stays(session: DockerIsol8) -> None:
    await run(session, "x = 9")
    stream = session.execute_stream(
        ExecutionRequest(code="import time\nprint('up')\nwhile True:\n    time.sleep(0.01)")
    )
    first = await anext(stream)
    assert (first.type, first.data) == ("stdout", "up\n")
    await stream.aclose()  # the caller leaves: the cell is interrupted, not the interpreter killed
    after = await run(session, "x")
    assert (after.results[0].text(), after.state) == ("9", "kept")  # type: ignore[index]


@pytest.mark.parametrize("lead", [b"", b"{}\n"], ids=["no-newline", "after-a-line"])
async def test_an_endless_line_on_the_results_channel_is_cut_at_its_bound(lead: bytes) -> None:
    """The agent holds at most maxFileSize (base64) of an unfinished line, also after a whole one: 256 MB
    sent without a newline would otherwise take the container (and the session) down at its 128m."""
    async with DockerIsol8(mode="persistent", stateful=True, max_file_size=100_000, memory_limit="128m") as engine:
        flood = (
            "import os, stat\n"
            "for fd in range(3, 64):\n"
            "    try:\n"
            "        if stat.S_ISFIFO(os.fstat(fd).st_mode):\n"
            f"            os.write(fd, {lead!r})\n"
            "            for _ in range(4096):\n"
            "                os.write(fd, b'x' * 65536)\n"
            "    except OSError:\n"
            "        pass\n"
        )
        result = await run(engine, flood, timeout_ms=20_000)
        assert (result.state, result.oom_killed) == ("lost", False), result.stderr
        after = await run(engine, "print('ok')")
        assert (after.stdout, after.container_id) == ("ok\n", result.container_id)  # the same sandbox
