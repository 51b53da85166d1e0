"""A deterministic stand-in for the engine and Docker, for the workbench's tests, snapshots and
screenshots (it lives with the tests, not in the installed package).

`FakeEngine` implements `engine.interface.Engine` and raises the engine's error types; the contract
test (test_contract.py) runs one scenario on it and on the real engine, so the two cannot drift. Instead of running code it reads it line by line
and plays what a few familiar statements would do, in every runtime's spelling:

    print("hi") / console.log("hi") / echo hi                 -> stdout
    print("x", file=sys.stderr) / console.error("x") / >&2    -> stderr
    urlopen("http://h/p") / fetch("https://h") / curl URL      -> a request through the session's
                                                                  network policy (network events)
    time.sleep(2) / sleep 2                                   -> 2 s of virtual time (timeouts apply)
    while True / setInterval                                  -> runs until stopped
    raise ValueError("m") / throw new Error("m")              -> a traceback on stderr, exit 1
    sys.exit(3) / process.exit(3) / exit 3                    -> that exit code
    open("/sandbox/a.txt", "w").write("x")                    -> a file in the session's /sandbox
    for i in range(N): print(i)                               -> N lines (capped like the engine)
    bytearray(10**10)                                         -> killed: out of memory
    os.kill(1, 9)                                             -> the container dies

On a terminal (`execute_stream(request, terminal)`) everything arrives as stdout with `\r\n` line
ends, and `input("prompt")` prints its prompt, then takes the terminal's keys up to enter, echoing
them as a terminal does (backspace as `\b \b`); `print("got", input())` then prints `got <answer>`;
ctrl+c (or `signal`) raises KeyboardInterrupt, ctrl+d at the line's start (or `close`) EOFError.

Time is virtual (`FakeClock`): every line costs 1 ms, so durations and ages never depend on the
machine. Nothing here touches Docker.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal, Self
from urllib.parse import urlsplit

from engine import (
    ExecutionRequest,
    ExecutionResult,
    Isol8Options,
    NetworkFilter,
    NetworkLogEntry,
    PoolState,
    StreamEvent,
)
from engine.errors import DockerUnavailable, FileNotFound, ImageMissing, Isol8Error, NotFiltered, SandboxLost
from engine.models import sandbox_path
from engine.runtimes import RUNTIMES, code_file
from engine.terminal import EndOfInput, Interrupt, Keys, Terminal

EPOCH = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

_STRING = r"""(?P<q>["'`])(?P<text>.*?)(?P=q)"""
_PRINT = re.compile(rf"^(?:print\(f?|console\.(?P<fn>log|error|warn|info)\(){_STRING}(?P<rest>.*)\)\s*;?$")
_ECHO = re.compile(r"^echo\s+(?P<text>.*?)(?P<err>\s*>&2)?\s*$")
_URL = re.compile(r"""(?:urlopen|fetch|requests\.get|curl[^'"]*?)\(?\s*["']?(?P<url>https?://[^\s"')]+)""")
_SLEEP = re.compile(r"(?:time\.sleep\(|^sleep\s+|Bun\.sleep\(|setTimeout\(.*?,\s*)(?P<n>[\d.]+)")
_EXIT = re.compile(r"(?:sys\.exit\(|process\.exit\(|Deno\.exit\(|^exit\s+)(?P<n>\d+)")
_RAISE = re.compile(rf"^(?:raise\s+(?P<py>\w+)\(|throw\s+new\s+(?P<js>\w+)\()(?:{_STRING})?")
_WRITE = re.compile(r"""open\(\s*["'](?P<path>/(?:sandbox|tmp)/[^"']+)["'].*?\.write\(\s*["'](?P<text>.*?)["']""")
_RANGE = re.compile(r"^for\s+\w+\s+in\s+range\((?P<n>\d+)\)\s*:\s*print\(")
_OOM = re.compile(r"bytearray\(\s*10\s*\*\*\s*(?P<e>\d+)")
_INPUT = re.compile(rf"input\((?:{_STRING})?")
_PRINT_INPUT = re.compile(rf"^print\({_STRING}\s*,\s*input\(")
_ESCAPE = re.compile(r"\\(?:033|x1b|u001b)")


class FakeClock:
    """Virtual seconds, advanced only by the fake engine."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms / 1000


class FakeBackend:
    """Engines plus Docker checks, all in memory; flip `docker_up` or `missing` to play failures."""

    def __init__(self, *, docker_up: bool = True, missing: Sequence[str] = ()) -> None:
        self.time = FakeClock()
        self.docker_up = docker_up
        self.missing = set(missing)
        self.engines: list[FakeEngine] = []
        self.built: list[str] = []

    def clock(self) -> float:
        return self.time()

    def create_engine(self, options: Isol8Options) -> FakeEngine:
        engine = FakeEngine(options, self)
        self.engines.append(engine)
        return engine

    def ping(self) -> None:
        if not self.docker_up:
            raise DockerUnavailable.at("unix:///var/run/docker.sock")

    def missing_images(self, runtimes: Sequence[str]) -> list[str]:
        self.ping()
        return [runtime for runtime in runtimes if runtime in self.missing]

    def build_images(self, runtimes: Sequence[str], progress: Callable[[str], None]) -> None:
        self.ping()
        progress("base image isol8:base is up to date")
        for runtime in runtimes:
            progress(f"building isol8:{runtime}")
            progress(f"Step 1/3 : FROM isol8:base ({runtime})")
            progress("Step 2/3 : COPY agent /opt/isol8/agent")
            progress("Step 3/3 : LABEL isol8.build.hash")
            self.missing.discard(runtime)
            self.built.append(runtime)


class FakeEngine:
    """`engine.interface.Engine` over an in-memory sandbox."""

    def __init__(self, options: Isol8Options, backend: FakeBackend) -> None:
        self.options = options
        self.backend = backend
        self.files: dict[str, bytes] = {}
        self.container = False  # a persistent container "exists"
        self.running = 0
        self.holding = False  # a run waits in an endless loop
        self.started = False
        self.stopped = False
        self.requests: list[ExecutionRequest] = []

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.backend.ping()
        self.started = True

    async def stop(self) -> None:
        self.stopped = True
        self.container = False
        self.files.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def pool_state(self) -> list[PoolState]:
        if self.options.mode == "persistent" and self.container:
            return [PoolState(image=f"isol8:{self.options.runtime}", busy=1)]
        if self.running:
            return [PoolState(image="isol8:scratch", busy=self.running)]
        return []

    async def set_network_filter(self, network_filter: NetworkFilter) -> None:
        if self.options.network != "filtered":
            raise NotFiltered.of(self.options.network)
        self.options = self.options.model_copy(update={"network_filter": network_filter})

    # --- files ---------------------------------------------------------------------------------------------
    async def put_file(self, path: str, content: str | bytes) -> None:
        self._session_check()
        self._check_path(path)
        self.container = True
        self.files[path] = content.encode() if isinstance(content, str) else content

    async def get_file(self, path: str) -> bytes:
        self._session_check()
        self._check_path(path)
        if path not in self.files:
            raise FileNotFound(f"File not found in the sandbox: {path}")
        return self.files[path]

    def _session_check(self) -> None:
        self.backend.ping()
        if self.options.mode != "persistent":
            raise Isol8Error("No active container. Call execute() first in persistent mode.")

    @staticmethod
    def _check_path(path: str) -> None:
        try:
            sandbox_path(path)
        except ValueError as exc:
            raise Isol8Error(str(exc)) from None

    # --- runs ------------------------------------------------------------------------------------------------
    async def execute(self, request: ExecutionRequest) -> ExecutionResult:
        out: dict[str, list[str]] = {"stdout": [], "stderr": []}
        exit_code, truncated = 1, False
        start = self.backend.clock()
        async for event in self.execute_stream(request):
            if event.type in out:
                out[event.type].append(event.data)
            elif event.type == "exit":
                exit_code, truncated = int(event.data), bool(event.truncated)
        return ExecutionResult(
            stdout="".join(out["stdout"]),
            stderr="".join(out["stderr"]),
            exit_code=exit_code,
            duration_ms=round((self.backend.clock() - start) * 1000),
            truncated=truncated,
            runtime=request.runtime,
        )

    async def execute_stream(
        self, request: ExecutionRequest, terminal: Terminal | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        self.backend.ping()
        if request.runtime in self.backend.missing:
            raise ImageMissing.of(RUNTIMES[request.runtime].image)
        if self.options.mode == "persistent" and self.options.runtime not in (None, request.runtime):
            raise Isol8Error(
                f'Cannot switch runtime from "{self.options.runtime}" to "{request.runtime}". Each persistent '
                "container supports a single runtime. Create a new engine for a different runtime."
            )
        self.requests.append(request)
        self.running += 1
        if self.options.mode == "persistent":
            self.container = True
        else:
            self.files = {}
        try:
            if request.cmd is not None:
                async for event in self._command(request.cmd):
                    yield event
                return
            self.files[code_file(RUNTIMES[request.runtime], request.file_extension, request.file_name)] = (
                request.code or ""
            ).encode()
            async for event in self._play(request, terminal):
                if terminal is not None and event.type in ("stdout", "stderr"):
                    event = StreamEvent(type="stdout", data=event.data.replace("\n", "\r\n"), phase=event.phase)
                yield event
        finally:
            self.running -= 1

    async def _command(self, cmd: str) -> AsyncGenerator[StreamEvent, None]:
        if cmd.startswith("find /sandbox"):
            lines = []
            for path in sorted(self.files):
                if path.startswith("/sandbox/"):
                    stamp = EPOCH.strftime("%Y-%m-%d %H:%M")
                    lines.append(f"f\t{len(self.files[path])}\t{stamp}\t{path.removeprefix('/sandbox/')}\n")
            if lines:
                yield StreamEvent(type="stdout", data="".join(lines), phase="code")
        elif cmd != "true":
            yield StreamEvent(type="stdout", data=f"{cmd}\n", phase="code")
        yield _exit(0, False)

    async def _play(self, request: ExecutionRequest, terminal: Terminal | None) -> AsyncGenerator[StreamEvent, None]:
        limit = request.max_output_size or self.options.max_output_size
        budget_ms = request.timeout_ms or self.options.timeout_ms
        elapsed_ms = 0.0
        written = {"stdout": 0, "stderr": 0}
        truncated = False
        for number, raw in enumerate((request.code or "").splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith(("#", "//")):
                continue
            self.backend.time.advance(1)
            elapsed_ms += 1
            await asyncio.sleep(0)  # lets the UI breathe and a stop land between statements
            sleep = _SLEEP.search(line)
            if sleep:
                wanted = float(sleep["n"]) * (1 if "setTimeout" in line or "Bun.sleep" in line else 1000)
                if elapsed_ms + wanted > budget_ms:
                    self.backend.time.advance(budget_ms - elapsed_ms)
                    yield StreamEvent(type="error", data="EXECUTION TIMED OUT", phase="code")
                    yield _exit(137, truncated, timed_out=True)
                    return
                self.backend.time.advance(wanted)
                elapsed_ms += wanted
                continue
            if line.startswith("while True") or "setInterval(" in line or line.startswith("while true"):
                self.holding = True
                try:
                    await asyncio.Event().wait()  # runs until the consumer closes the stream
                finally:
                    self.holding = False
            asked = _INPUT.search(line) if terminal is not None else None
            if terminal is not None and asked is not None:
                if asked["text"]:
                    yield StreamEvent(type="stdout", data=asked["text"], phase="code")
                answer: list[str] = []
                async for echo in _read_line(terminal, answer):
                    yield StreamEvent(type="stdout", data=echo, phase="code")
                if answer and answer[-1] in ("\x03", "\x04"):
                    path = code_file(RUNTIMES[request.runtime], request.file_extension, request.file_name)
                    error = "KeyboardInterrupt" if answer[-1] == "\x03" else "EOFError: EOF when reading a line"
                    trace = f'Traceback (most recent call last):\n  File "{path}", line {number}, in <module>\n'
                    yield StreamEvent(type="stderr", data=f"{trace}    {raw.strip()}\n{error}\n", phase="code")
                    yield _exit(130 if answer[-1] == "\x03" else 1, truncated)
                    return
                echoed = _PRINT_INPUT.match(line)
                if echoed:
                    yield StreamEvent(type="stdout", data=f"{echoed['text']} {''.join(answer)}\n", phase="code")
                continue
            oom = _OOM.search(line)
            if oom and int(oom["e"]) >= 9:
                yield StreamEvent(type="error", data="OUT OF MEMORY", phase="code")
                yield _exit(137, truncated, oom_killed=True)
                return
            if "os.kill(1, 9)" in line:
                self.container = False
                raise SandboxLost(
                    "The sandbox container 0123456789ab stopped unexpectedly. Retry; if it persists, run "
                    "`isol8 setup --force` and check `docker info`."
                )
            url = _URL.search(line)
            if url:
                async for event in self._request(url["url"], line):
                    yield event
                continue
            write = _WRITE.search(line)
            if write:
                self.files[write["path"]] = write["text"].encode()
                continue
            many = _RANGE.match(line)
            if many:
                text = "".join(f"{i}\n" for i in range(int(many["n"])))
                for chunk_start in range(0, len(text), 64 * 1024):
                    chunk = text[chunk_start : chunk_start + 64 * 1024]
                    room = limit - written["stdout"]
                    if room <= 0:
                        truncated = True
                        break
                    written["stdout"] += len(chunk[:room])
                    yield StreamEvent(type="stdout", data=chunk[:room], phase="code")
                    await asyncio.sleep(0)
                if truncated:
                    yield StreamEvent(
                        type="stdout",
                        data=f"\n--- OUTPUT TRUNCATED (exceeded {limit} bytes) ---\n",
                        phase="code",
                    )
                continue
            shown = _output(line, request.runtime)
            if shown:
                stream, text = shown
                written[stream] += len(text)
                yield StreamEvent(type=stream, data=text, phase="code")
                continue
            code = _EXIT.search(line)
            if code:
                yield _exit(int(code["n"]), truncated)
                return
            failure = _RAISE.match(line)
            if failure:
                yield StreamEvent(
                    type="stderr",
                    data=_traceback(
                        code_file(RUNTIMES[request.runtime], request.file_extension, request.file_name),
                        number,
                        raw,
                        failure,
                    ),
                    phase="code",
                )
                yield _exit(1, truncated)
                return
        yield _exit(0, truncated)

    async def _request(self, url: str, line: str) -> AsyncGenerator[StreamEvent, None]:
        parts = urlsplit(url)
        host = parts.hostname or ""
        https = parts.scheme == "https"
        network = self.options.network
        if network == "none":
            yield StreamEvent(
                type="stderr",
                data=f"error: {host}: Temporary failure in name resolution (network is off)\n",
                phase="code",
            )
            return
        action: Literal["ALLOW", "BLOCK"] = "ALLOW"
        rule: str | None = None
        port = parts.port or (443 if https else 80)
        if network == "filtered":
            rules = self.options.network_filter
            blocked = next((p for p in rules.blacklist if re.fullmatch(p, host, re.IGNORECASE)), None)
            allowed = next((p for p in rules.whitelist if re.fullmatch(p, host, re.IGNORECASE)), None)
            if blocked is not None:  # the rules as the real proxy names them
                action, rule = "BLOCK", f"blacklist:{blocked}"
            elif rules.whitelist and allowed is None:
                action, rule = "BLOCK", "not in whitelist"
            elif https and port not in (443, *rules.ports):
                action, rule = "BLOCK", f"port {port} not allowed"
            else:
                rule = f"whitelist:{allowed}" if allowed else None
        status = 200 if action == "ALLOW" else 403
        self.backend.time.advance(20)
        if network == "filtered" and self.options.log_network:
            stamp = EPOCH + timedelta(seconds=self.backend.clock())
            entry = NetworkLogEntry(
                timestamp=stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                method="CONNECT" if https else "GET",
                host=host,
                port=port,
                path=None if https else (parts.path or "/"),
                action=action,
                rule=rule,
                status=status,
                bytes_in=1256 if action == "ALLOW" else 0,
                bytes_out=96 if action == "ALLOW" else 0,
                duration_ms=20.0 if action == "ALLOW" else 0.4,
            )
            yield StreamEvent(type="network", data=host, entry=entry)
        if line.startswith(("print(", "console.log(", "echo")):
            yield StreamEvent(type="stdout", data=f"{status} {host}\n", phase="code")
        elif action == "BLOCK":
            yield StreamEvent(
                type="stderr", data=f"HTTP Error 403: {host} is blocked by the network filter\n", phase="code"
            )


async def _read_line(terminal: Terminal, answer: list[str]) -> AsyncGenerator[str, None]:
    """The keys up to enter, echoed as a terminal's line discipline echoes them; `answer` gets the line,
    or ends with \\x03 (interrupted) or \\x04 (end of input)."""
    while True:
        item = await terminal.next_input()
        if isinstance(item, Interrupt):
            answer.append("\x03")
            return
        if isinstance(item, EndOfInput):
            answer.append("\x04")
            return
        if not isinstance(item, Keys):
            continue  # a resize
        for key in item.data.decode(errors="replace"):
            if key in ("\r", "\n"):
                yield "\n"
                return
            if key == "\x03":
                yield "^C"  # as a terminal echoes it: the traceback follows on the same line
                answer.append(key)
                return
            if key == "\x04" and not answer:
                answer.append(key)
                return
            if key == "\x7f":
                if answer:
                    answer.pop()
                    yield "\b \b"
            elif key.isprintable():
                answer.append(key)
                yield key


def _exit(code: int, truncated: bool, *, timed_out: bool = False, oom_killed: bool = False) -> StreamEvent:
    """The run's one `exit` event, flagged as the engine flags it."""
    return StreamEvent(
        type="exit", data=str(code), phase="code", truncated=truncated, timed_out=timed_out, oom_killed=oom_killed
    )


def _output(line: str, runtime: str) -> tuple[Literal["stdout", "stderr"], str] | None:
    match = _PRINT.match(line)
    if match:
        to_stderr = match["fn"] in ("error", "warn") or "sys.stderr" in (match["rest"] or "")
        return ("stderr" if to_stderr else "stdout"), _ESCAPE.sub("\x1b", match["text"]) + "\n"
    if runtime == "bash":
        echo = _ECHO.match(line)
        if echo:
            return ("stderr" if echo["err"] else "stdout"), echo["text"].strip("\"'") + "\n"
    return None


def _traceback(path: str, number: int, raw: str, failure: re.Match[str]) -> str:
    """As the runtime prints it, naming the file the code was written to."""
    message = failure["text"] or ""
    if failure["py"]:
        return (
            "Traceback (most recent call last):\n"
            f'  File "{path}", line {number}, in <module>\n'
            f"    {raw.strip()}\n"
            f"{failure['py']}: {repr(message) if failure['py'] == 'KeyError' else message}\n"  # as Python prints it
        )
    return f"file://{path}:{number}\n{raw.strip()}\n^\n\n{failure['js']}: {message}\n    at file://{path}:{number}:7\n"
