"""Node and Deno run on an interpreter started before their job (its preload waits for the job's
env and cwd, then the file runs as the main module). The semantics must be exactly those of
`node FILE` / `deno run ... FILE`, and nothing of one job may reach the next. Bun starts in a few
milliseconds and runs cold; it is checked here for the same semantics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from engine.engine import DockerIsol8
from engine.models import ExecutionRequest

pytestmark = pytest.mark.docker

# How long the pre-started interpreter has been up when its job begins: far more than a cold start.
UPTIME = {
    "node": "const uptime = process.uptime();",
    "deno": "const uptime = performance.now() / 1000;",
}
WAIT_S = 0.4


@pytest.fixture(params=["persistent", "fast", "secure"])
async def engine_for(request: pytest.FixtureRequest, docker_client: object) -> AsyncIterator[dict[str, DockerIsol8]]:
    """One engine per runtime in the given mode (a session, or a pool of that strategy)."""
    engines: dict[str, DockerIsol8] = {}
    for runtime in ("node", "deno", "bun"):
        if request.param == "persistent":
            engines[runtime] = DockerIsol8(mode="persistent", runtime=runtime)
        else:
            engines[runtime] = DockerIsol8(pool_strategy=request.param, pool_size=1, prewarm=[runtime])
        await engines[runtime].start()
    try:
        yield engines
    finally:
        await asyncio.gather(*(engine.stop() for engine in engines.values()))


async def ready(engine: DockerIsol8) -> None:
    """The next sandbox is up (a pool's refill or scrub has finished: on a loaded machine a start can
    take longer than WAIT_S), and its interpreter has then been waiting for WAIT_S."""
    await engine._pool.settle()
    await asyncio.sleep(WAIT_S)


async def run(engine: DockerIsol8, runtime: str, code: str, **fields: object) -> tuple[str, str, int]:
    await ready(engine)
    result = await engine.execute(ExecutionRequest(code=code, runtime=runtime, **fields))  # type: ignore[arg-type]
    return result.stdout, result.stderr, result.exit_code


@pytest.mark.parametrize("runtime", ["node", "deno"])
async def test_the_job_runs_on_an_interpreter_started_before_it(
    engine_for: dict[str, DockerIsol8], runtime: str
) -> None:
    engine = engine_for[runtime]
    await run(engine, runtime, "console.log('first')")
    stdout, stderr, code = await run(engine, runtime, UPTIME[runtime] + "console.log(uptime > 0.1)")
    assert (stdout, code) == ("true\n", 0), stderr
    # a job that sets a variable the interpreter reads while starting runs on a fresh one
    fresh = "NODE_OPTIONS" if runtime == "node" else "DENO_DIR"
    value = "--no-warnings" if runtime == "node" else "/sandbox/.deno2"
    stdout, stderr, _ = await run(engine, runtime, UPTIME[runtime] + "console.log(uptime < 0.1)", env={fresh: value})
    assert stdout == "true\n", stderr


NODE_CASES = [
    # (extension, code, expected stdout)
    (
        ".mjs",
        "console.log(import.meta.url, process.argv.slice(1).join(' ')); await Promise.resolve(); console.log('tla')",
        "file:///sandbox/main.mjs /sandbox/main.mjs\ntla\n",
    ),
    (
        ".cjs",
        "console.log(require.main === module, __filename, typeof require('fs').readFileSync, process.argv.length)",
        "true /sandbox/main.cjs function 2\n",
    ),
    (".js", "console.log(typeof require, typeof module)", "function object\n"),  # no package.json: CommonJS
]


@pytest.mark.parametrize(("extension", "code", "expected"), NODE_CASES)
async def test_node_module_semantics(
    engine_for: dict[str, DockerIsol8], extension: str, code: str, expected: str
) -> None:
    for _ in range(2):  # the first run may be cold; the second is on the interpreter started for it
        stdout, stderr, exit_code = await run(engine_for["node"], "node", code, file_extension=extension)
        assert (stdout, exit_code) == (expected, 0), stderr


async def test_deno_and_bun_module_semantics(engine_for: dict[str, DockerIsol8]) -> None:
    deno = (
        "const n: number = 2; console.log(import.meta.main, Deno.mainModule, Deno.args.length, n);"
        "await Promise.resolve(); try { Deno.readTextFileSync('/etc/hostname') } catch (e) { console.log(e.name) }"
    )
    bun = "const n: number = 3; console.log(import.meta.main, Bun.main, n, typeof require)"
    for _ in range(2):
        stdout, stderr, _ = await run(engine_for["deno"], "deno", deno)
        assert stdout == "true file:///sandbox/main.mts 0 2\nNotCapable\n", stderr
        stdout, stderr, _ = await run(engine_for["bun"], "bun", bun)
        assert stdout == "true /sandbox/main.ts 3 function\n", stderr


PER_JOB = {
    "node": (
        "const chunks = []; for await (const c of process.stdin) chunks.push(c);"
        "console.log(process.env.JOB, process.env.GONE ?? 'unset', process.cwd(), Buffer.concat(chunks).toString());"
        "process.exitCode = Number(process.env.CODE)"
    ),
    "deno": (
        "const text = await new Response(Deno.stdin.readable).text();"
        "console.log(Deno.env.get('JOB'), Deno.env.get('GONE') ?? 'unset', Deno.cwd(), text);"
        "Deno.exit(Number(Deno.env.get('CODE')))"
    ),
    "bun": (
        "const text = await Bun.stdin.text();"
        "console.log(process.env.JOB, process.env.GONE ?? 'unset', process.cwd(), text);"
        "process.exit(Number(process.env.CODE))"
    ),
}


@pytest.mark.parametrize("runtime", list(PER_JOB))
async def test_env_cwd_stdin_and_exit_code_are_the_jobs(engine_for: dict[str, DockerIsol8], runtime: str) -> None:
    engine = engine_for[runtime]
    first = await run(
        engine, runtime, PER_JOB[runtime], env={"JOB": "one", "GONE": "x", "CODE": "3"}, stdin="in-1", workdir="sub"
    )
    assert first[0] == "one x /sandbox/sub in-1\n" and first[2] == 3, first
    second = await run(engine, runtime, PER_JOB[runtime], env={"JOB": "two", "CODE": "0"}, stdin="in-2")
    assert second[0] == "two unset /sandbox in-2\n" and second[2] == 0, second
    no_stdin = await run(engine, runtime, PER_JOB[runtime], env={"JOB": "three", "CODE": "5"})
    assert no_stdin[0] == "three unset /sandbox \n" and no_stdin[2] == 5, no_stdin


@pytest.mark.parametrize("runtime", list(PER_JOB))
async def test_timeouts_kill_and_caps_cut_on_the_warm_path(engine_for: dict[str, DockerIsol8], runtime: str) -> None:
    engine = engine_for[runtime]
    await ready(engine)
    forever = "setInterval(() => {}, 1000); console.log('up')"
    timed = await engine.execute(ExecutionRequest(code=forever, runtime=runtime, timeout_ms=1500))
    assert timed.timed_out and timed.exit_code == 137 and timed.stdout == "up\n", timed.stderr
    await ready(engine)
    capped = await engine.execute(
        ExecutionRequest(code="console.log('z'.repeat(5000))", runtime=runtime, max_output_size=100)
    )
    assert capped.stdout_truncated and capped.stdout.startswith("z" * 100)
    after = await run(engine, runtime, "console.log('next')")
    assert after[0] == "next\n"


LEAVE = {
    "node": (
        "globalThis.leaked = 'secret-1'; process.env.LEAKED = 'secret-1';"
        "(await import('node:fs')).writeFileSync('/tmp/left', 'secret-1');"
        "setTimeout(() => {}, 60_000).unref(); process.on('exit', () => {}); console.log('left')"
    ),
    "deno": (
        "globalThis.leaked = 'secret-1'; Deno.env.set('LEAKED', 'secret-1');"
        "Deno.writeTextFileSync('/tmp/left', 'secret-1'); Deno.unrefTimer(setTimeout(() => {}, 60_000)); console.log('left')"
    ),
}
LOOK = {
    "node": (
        "import fs from 'node:fs'; import { createRequire } from 'node:module';"
        "const loaded = Object.keys(createRequire(import.meta.url).cache);"
        "console.log(globalThis.leaked ?? 'clean', process.env.LEAKED ?? 'clean', process.env.TOKEN ?? 'clean',"
        "fs.existsSync('/tmp/left') ? fs.readFileSync('/tmp/left', 'utf8') : 'clean', loaded.join(',') || 'clean')"
    ),
    "deno": (
        "let file = 'clean'; try { file = Deno.readTextFileSync('/tmp/left') } catch {}"
        "console.log(globalThis.leaked ?? 'clean', Deno.env.get('LEAKED') ?? 'clean', Deno.env.get('TOKEN') ?? 'clean', file, 'clean')"
    ),
}


@pytest.mark.parametrize("runtime", list(LEAVE))
@pytest.mark.parametrize("strategy", ["fast", "secure"])
async def test_a_job_sees_nothing_of_the_one_before(docker_client: object, runtime: str, strategy: str) -> None:
    async with DockerIsol8(pool_strategy=strategy, pool_size=1, prewarm=[runtime]) as engine:
        left = await engine.execute(
            ExecutionRequest(code=LEAVE[runtime], runtime=runtime, secrets={"TOKEN": "secret-1"})
        )
        assert left.stdout == "left\n", left.stderr
        for _ in range(2):  # the interpreter started for the next job, then the one after
            await ready(engine)
            look = await engine.execute(
                ExecutionRequest(
                    code=LOOK[runtime] + ";" + UPTIME[runtime] + "if (uptime < 0.1) throw new Error('cold')",
                    runtime=runtime,
                )
            )
            assert look.stdout == "clean clean clean clean clean\n", look.stdout + look.stderr


async def test_python_on_the_zygote_imports_the_jobs_own_modules(engine: DockerIsol8) -> None:
    """The zygote was forked from the agent: the agent's own modules must not shadow the job's."""
    files = {f"/sandbox/{name}.py": f'WHO = "the job\'s {name}"\n' for name in ("agent", "protocol", "zygote", "proxy")}
    code = "import agent, protocol, zygote, proxy\nprint(agent.WHO, protocol.WHO, zygote.WHO, proxy.WHO, sep='; ')"
    result = await engine.execute(ExecutionRequest(code=code, files=files))
    assert result.stdout == "the job's agent; the job's protocol; the job's zygote; the job's proxy\n", result.stderr


PYTHON_PROBE = """
import builtins, json, sys
print(json.dumps({
    "path": sys.path, "argv": sys.argv, "name": __name__, "file": __file__,
    "site": "site" in sys.modules, "exit": callable(getattr(builtins, "exit", None)),
    "help": callable(getattr(builtins, "help", None)), "modules": sorted(m for m in ("agent", "zygote", "protocol") if m in sys.modules),
}))
"""


async def test_python_on_the_zygote_sees_what_python3_file_sees(engine: DockerIsol8) -> None:
    """The agent starts without `site`; code forked from its zygote must still get site-packages,
    `exit()` and `help()`, and none of the agent's modules, exactly as a cold `python3 FILE`."""
    forked = await engine.execute(ExecutionRequest(code=PYTHON_PROBE))
    cold = await engine.execute(
        ExecutionRequest(cmd="python3 /sandbox/main.py", files={"/sandbox/main.py": PYTHON_PROBE})
    )
    assert forked.exit_code == cold.exit_code == 0, forked.stderr + cold.stderr
    assert forked.stdout == cold.stdout
    assert '"exit": true' in forked.stdout and "dist-packages" in forked.stdout
