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

In a stateful session (`Isol8Options(stateful=True)`) `code` runs on one "interpreter" that keeps its
variables between runs (`reset()` ends it; the exit event says `fresh` or `kept`, an OOM `lost`):

    x = 41 / let x = 41; / X=41 (bash)                        -> a variable (literals and arithmetic)
    x + 1 as the last line                                    -> the main result, text/plain "42"
    df = pd.DataFrame({"city": ["Lisbon"], "temp": [21]})     -> a table: text/html (pandas' <table>)
                                                                 and text/plain, when displayed
    display(df) / display(Markdown("**hi**"))                 -> a result that is not the main one
    plt.plot([1, 2, 3])                                       -> a figure: image/png at the run's end
    a name never assigned                                     -> NameError / ReferenceError

On a terminal (`execute_stream(request, terminal)`) everything arrives as stdout with `\r\n` line
ends, and `input("prompt")` prints its prompt, then takes the terminal's keys up to enter, echoing
them as a terminal does (backspace as `\b \b`); `print("got", input())` then prints `got <answer>`;
ctrl+c (or `signal`) raises KeyboardInterrupt, ctrl+d at the line's start (or `close`) EOFError.

Time is virtual (`FakeClock`): every line costs 1 ms, so durations and ages never depend on the
machine. Nothing here touches Docker.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import re
import struct
import zlib
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Self
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
from engine.errors import (
    DockerUnavailable,
    FileNotFound,
    ImageMissing,
    Isol8Error,
    NotFiltered,
    NotStateful,
    SandboxLost,
)
from engine.models import InterpreterState, MimeType, RichResult, sandbox_path
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
_ASSIGN = re.compile(r"^(?:(?:let|const|var)\s+)?(?P<name>[A-Za-z_]\w*)\s*=(?!=)\s*(?P<expr>.+?)\s*;?$")
_BASH_ASSIGN = re.compile(r"^(?P<name>[A-Za-z_]\w*)=(?P<value>\S*)$")
_BASH_VARIABLE = re.compile(r"\$\{?(?P<name>[A-Za-z_]\w*)\}?")
_DISPLAY = re.compile(r"^display\((?P<expr>.+)\)\s*;?$")
_FIGURE = re.compile(r"^plt\.(?!show|close|savefig)\w+\(")
LOST = (
    "INTERPRETER STATE LOST: the interpreter was killed at the memory limit; its variables are gone "
    "(files in /sandbox remain). The next run starts a fresh interpreter"
)
"""How the engine says a stateful session's interpreter was lost (in the `error` event before `exit`)."""


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
        self.namespace: dict[str, object] | None = None  # a stateful session's variables; None: no interpreter

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.backend.ping()
        self.started = True

    async def stop(self) -> None:
        self.stopped = True
        self.container = False
        self.files.clear()
        self.namespace = None

    async def reset(self) -> None:
        if not self.options.stateful:
            raise NotStateful.for_reset()
        self.namespace = None

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
        results: list[RichResult] = []
        state: InterpreterState | None = None
        start = self.backend.clock()
        async for event in self.execute_stream(request):
            if event.type in out:
                out[event.type].append(event.data)
            elif event.type == "result" and event.result is not None:
                results.append(event.result)
            elif event.type == "exit":
                exit_code, truncated, state = int(event.data), bool(event.truncated), event.state
        return ExecutionResult(
            stdout="".join(out["stdout"]),
            stderr="".join(out["stderr"]),
            exit_code=exit_code,
            duration_ms=round((self.backend.clock() - start) * 1000),
            truncated=truncated,
            runtime=request.runtime,
            results=results if state is not None else None,
            state=state,
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
        if self.options.stateful and request.cmd is None:
            if terminal is not None or request.stdin is not None:
                raise Isol8Error(
                    "A stateful session's interpreter takes no stdin and no terminal: pass the data in files, "
                    "or run it with cmd."
                )
            if request.args:
                raise Isol8Error(
                    "A stateful session's code runs in its interpreter, which takes no args: set variables."
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
            play = self._play(request, terminal)
            if self.options.stateful:
                play = self._stateful(request, play)
            async for event in play:
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
        lines = (request.code or "").splitlines()
        last = max((n for n, raw in enumerate(lines, start=1) if _statement(raw)), default=0)
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not _statement(raw):
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
                notice = "OUT OF MEMORY" if self.namespace is None else f"OUT OF MEMORY; {LOST}"
                yield StreamEvent(type="error", data=notice, phase="code")
                yield _exit(137, truncated, oom_killed=True)
                return
            if "os.kill(1, 9)" in line:
                self.container = False
                self.namespace = None
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
            if self.namespace is not None:
                played = self._interpret(request, line, number, number == last)
                if played is not None:
                    for event in played:
                        yield event
                    if played and played[-1].type == "exit":
                        return
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

    async def _stateful(
        self, request: ExecutionRequest, play: AsyncGenerator[StreamEvent, None]
    ) -> AsyncGenerator[StreamEvent, None]:
        """A run on the session's interpreter: it starts one when there is none (`fresh`), shows the
        figures left open at the end, and loses its variables when the run is killed."""
        kept = self.namespace is not None
        if self.namespace is None:
            self.namespace = {}
        self.figures = 0
        async for event in play:
            if event.type == "exit" and event.oom_killed:
                self.namespace = None
                event = event.model_copy(update={"state": "lost"})
            elif event.type == "exit":
                for _ in range(self.figures):
                    yield _result(_Figure(), main=False)
                event = event.model_copy(update={"state": "kept" if kept else "fresh"})
            yield event

    def _interpret(self, request: ExecutionRequest, line: str, number: int, last: bool) -> list[StreamEvent] | None:
        """One line on the interpreter: the events it gives (ending with `exit` when it fails), or None
        when it is not one of the interpreter's statements (the other rules play it)."""
        namespace = self.namespace if self.namespace is not None else {}
        runtime = request.runtime
        try:
            if runtime == "bash":
                assigned = _BASH_ASSIGN.match(line)
                if assigned:
                    namespace[assigned["name"]] = assigned["value"].strip("\"'")
                    return []
                if line.startswith("echo") and "$" in line:
                    expanded = _BASH_VARIABLE.sub(lambda m: str(namespace.get(m["name"], "")), line)
                    shown = _output(expanded, runtime)
                    return [StreamEvent(type=shown[0], data=shown[1], phase="code")] if shown else None
                return None
            if _FIGURE.match(line):
                self.figures = max(self.figures, 1)
                return []
            displayed = _DISPLAY.match(line)
            if displayed:
                value = _evaluate(displayed["expr"], namespace)
                return None if value is _UNKNOWN else [_result(value, main=False)]
            assigned = _ASSIGN.match(line)
            if assigned:
                value = _evaluate(assigned["expr"], namespace)
                namespace[assigned["name"]] = _Opaque(assigned["expr"]) if value is _UNKNOWN else value
                return []
            value = _evaluate(line, namespace)
            if value is _UNKNOWN:
                return None
            return [_result(value, main=True)] if last else []
        except _Undefined as undefined:
            path = code_file(RUNTIMES[runtime], request.file_extension, request.file_name)
            return [
                StreamEvent(type="stderr", data=_undefined(path, number, line, undefined.name, runtime), phase="code"),
                _exit(1, False),
            ]

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


def _statement(raw: str) -> bool:
    line = raw.strip()
    return bool(line) and not line.startswith(("#", "//"))


class _Undefined(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


_UNKNOWN = object()
"""What `_evaluate` makes of an expression it does not play (a call, an attribute, ...)."""


@dataclass(frozen=True)
class _Frame:
    """A pandas DataFrame, as far as its display goes: columns of equal length."""

    columns: dict[str, list[object]]

    def html(self) -> str:
        """As pandas' `_repr_html_` writes its <table>."""
        head = "".join(f"      <th>{name}</th>\n" for name in self.columns)
        body = ""
        for index, row in enumerate(self.rows()):
            cells = "".join(f"      <td>{value}</td>\n" for value in row)
            body += f"    <tr>\n      <th>{index}</th>\n{cells}    </tr>\n"
        return (
            '<table border="1" class="dataframe">\n  <thead>\n    <tr style="text-align: right;">\n'
            f"      <th></th>\n{head}    </tr>\n  </thead>\n  <tbody>\n{body}  </tbody>\n</table>"
        )

    def text(self) -> str:
        """As pandas prints it: the index on the left, each column right-aligned."""
        rows = self.rows()
        index = max((len(str(i)) for i in range(len(rows))), default=0)
        widths = [max([len(name), *(len(str(row[c])) for row in rows)]) for c, name in enumerate(self.columns)]
        lines = [" " * index + "".join(f"  {name:>{w}}" for name, w in zip(self.columns, widths, strict=True))]
        for i, row in enumerate(rows):
            lines.append(f"{i:<{index}}" + "".join(f"  {v!s:>{w}}" for v, w in zip(row, widths, strict=True)))
        return "\n".join(lines)

    def rows(self) -> list[list[object]]:
        return [list(values) for values in zip(*self.columns.values(), strict=True)]


@dataclass(frozen=True)
class _Markdown:
    text: str


@dataclass(frozen=True)
class _Opaque:
    """A value the fake does not compute (its expression is all it knows)."""

    expr: str


class _Figure:
    """A matplotlib figure left open: a small PNG plot."""


def _evaluate(expr: str, namespace: dict[str, object]) -> object:
    """The value of a literal, a variable, arithmetic over them, `DataFrame({...})` or `Markdown("...")`;
    _UNKNOWN for anything else; _Undefined for a name never assigned."""
    try:
        tree = ast.parse(expr.strip().rstrip(";"), mode="eval")
    except SyntaxError:
        return _UNKNOWN
    return _value(tree.body, namespace)


_OPERATORS: dict[type[ast.operator], Callable[[Any, Any], object]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a**b,
}


def _value(node: ast.expr, namespace: dict[str, object]) -> object:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in namespace:
            raise _Undefined(node.id)
        return namespace[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _value(node.left, namespace), _value(node.right, namespace)
        if _UNKNOWN in (left, right):
            return _UNKNOWN
        try:
            return _OPERATORS[type(node.op)](left, right)
        except (TypeError, ZeroDivisionError, OverflowError):
            return _UNKNOWN
    if isinstance(node, (ast.List, ast.Tuple, ast.Dict, ast.Set, ast.UnaryOp)):
        try:
            return ast.literal_eval(node)
        except ValueError:
            return _UNKNOWN
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
        callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        try:
            argument = ast.literal_eval(node.args[0])
        except ValueError:
            return _UNKNOWN
        if callee == "DataFrame" and isinstance(argument, dict):
            return _Frame({str(name): list(values) for name, values in argument.items()})
        if callee == "Markdown" and isinstance(argument, str):
            return _Markdown(argument)
    return _UNKNOWN


def _result(value: object, main: bool) -> StreamEvent:
    """A displayed value's event, its bundle as the real interpreter fills it."""
    data: dict[MimeType, str]
    if isinstance(value, _Frame):
        data = {"text/plain": value.text(), "text/html": value.html()}
    elif isinstance(value, _Markdown):
        data = {"text/plain": "<IPython.core.display.Markdown object>", "text/markdown": value.text}
    elif isinstance(value, _Figure):
        data = {"text/plain": "<Figure size 640x480 with 1 Axes>", "image/png": base64.b64encode(_png()).decode()}
    elif isinstance(value, _Opaque):
        data = {"text/plain": f"<{value.expr}>"}
    else:
        data = {"text/plain": repr(value)}
    result = RichResult(data=data, is_main_result=main)
    return StreamEvent(type="result", data=result.text(), result=result)


def _png(width: int = 64, height: int = 48) -> bytes:
    """A small line plot as a PNG (white, a blue rising line, a grey axis): the same bytes every time."""
    rows = []
    for y in range(height):
        row = bytearray(b"\x00")  # filter: none
        for x in range(width):
            on_line = abs((height - 1 - y) - x * (height - 1) // (width - 1)) <= 1
            row += b"\x1f\x77\xb4" if on_line else b"\x80\x80\x80" if x == 0 or y == height - 1 else b"\xff\xff\xff"
        rows.append(bytes(row))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + chunk(b"IEND", b"")
    )


def _undefined(path: str, number: int, line: str, name: str, runtime: str) -> str:
    """A name never assigned, as the runtime reports it."""
    if runtime == "python":
        return (
            "Traceback (most recent call last):\n"
            f'  File "{path}", line {number}, in <module>\n'
            f"    {line}\n"
            f"NameError: name '{name}' is not defined\n"
        )
    return (
        f"file://{path}:{number}\n{line}\n^\n\nReferenceError: {name} is not defined\n    at file://{path}:{number}:1\n"
    )


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
