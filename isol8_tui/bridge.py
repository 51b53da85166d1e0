"""The workbench's only door to the engine: sessions, runs and files, reported as Textual messages.

Widgets never call the engine or Docker. Screens start the coroutines below in workers; each one
talks to the engine through its public API and reports what happened by posting messages to
`EngineBridge.target` (the main screen), so every widget change happens in a message handler.

Blocking Docker calls (ping, image checks and builds) live on the `Backend`; they run in thread
workers. The real backend uses `engine`; the tests and screenshots use a deterministic fake that lives
with them (tests/tui/fake_engine.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

from textual.message import Message
from textual.message_pump import MessagePump

from engine import ExecutionRequest, Isol8Options, NetworkFilter, NetworkLogEntry
from engine.config import Isol8Config
from engine.errors import DockerUnavailable, ImageMissing, Isol8Error, PolicyRefused, SandboxLost
from engine.interface import Engine
from engine.models import InterpreterState, RichResult
from engine.runtimes import RUNTIME_NAMES, RUNTIMES, detect_runtime
from engine.terminal import Terminal
from isol8_tui.output import one_line
from isol8_tui.sessions import STATEFUL_RUNTIMES, RunSettings, Session, SessionSpec, SessionState, stateless_reason

log = logging.getLogger("isol8.tui")

Stream = Literal["stdout", "stderr"]

LISTING_COMMAND = (
    "find /sandbox -mindepth 1 -maxdepth 6 -printf '%y\\t%s\\t%TY-%Tm-%Td %TH:%TM\\t%P\\n' 2>/dev/null"
    " | sort -t \"$(printf '\\t')\" -k4 | head -n 1000"
)
"""Lists /sandbox as `type<TAB>size<TAB>modified<TAB>relative path` lines (GNU find, in every image)."""


def runtime_for_path(path: str | Path) -> str | None:
    """The runtime a file's extension selects (engine.runtimes.detect_runtime), or None when no
    runtime claims it."""
    try:
        return detect_runtime(str(path)).name
    except Isol8Error:
        return None


def request_file_name(runtime: str, path: Path | None) -> str | None:
    """The file's own name, so it runs as /sandbox/<name> and tracebacks name it: when its extension is one
    of the runtime's and the engine takes the name (a plain file name)."""
    if path is None or path.suffix.lower() not in RUNTIMES[runtime].extensions:
        return None
    try:
        return ExecutionRequest(code="", file_name=path.name).file_name
    except ValueError:
        return None


def request_extension(runtime: str, path: Path | None) -> str | None:
    """The file's own extension when it is one of the runtime's (`.cjs` makes Node use CommonJS)."""
    if path is not None and path.suffix.lower() in RUNTIMES[runtime].extensions:
        return path.suffix.lower()
    return None


# --- what Docker looks like to the workbench ------------------------------------------------------------


class Backend(Protocol):
    """Engines plus the blocking Docker checks; the blocking methods run in thread workers only."""

    def clock(self) -> float:
        """Seconds on a monotonic clock (durations, session ages)."""
        ...

    def create_engine(self, options: Isol8Options) -> Engine: ...

    def ping(self) -> None:
        """Raise DockerUnavailable when the daemon does not answer (blocking)."""
        ...

    def missing_images(self, runtimes: Sequence[str]) -> list[str]:
        """The runtimes whose image is missing or outdated (blocking)."""
        ...

    def build_images(self, runtimes: Sequence[str], progress: Callable[[str], None]) -> None:
        """Build the runtimes' images, reporting progress lines (blocking; minutes on a first build)."""
        ...


class RealBackend:
    """The engine and the Docker daemon of this machine (the checks and builds are engine.readiness's)."""

    def clock(self) -> float:
        return time.monotonic()

    def create_engine(self, options: Isol8Options) -> Engine:
        from engine import DockerIsol8

        return DockerIsol8(options)

    def ping(self) -> None:
        from engine.docker import DockerClient

        DockerClient().ping()

    def missing_images(self, runtimes: Sequence[str]) -> list[str]:
        from engine import readiness

        return readiness.stale_images(runtimes)

    def build_images(self, runtimes: Sequence[str], progress: Callable[[str], None]) -> None:
        from engine import readiness

        readiness.build(runtimes, progress)


@dataclass
class PoolFigures:
    """What the top bar says about containers."""

    ready: int = 0
    busy: int = 0
    starting: int = 0
    sessions: int = 0  # held by persistent sessions


# --- the /sandbox listing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxEntry:
    """One line of the /sandbox listing."""

    kind: Literal["file", "dir", "link", "other"]
    size: int
    modified: str
    path: str  # absolute, e.g. /sandbox/out/data.csv


# --- messages (past tense: what happened) -----------------------------------------------------------------


@dataclass
class RunStarted(Message, bubble=False):
    run_id: int
    session_id: str
    runtime: str
    trigger: str  # "key", "button", "watch", "palette"
    started_at: float


@dataclass
class OutputReceived(Message, bubble=False):
    run_id: int
    stream: Stream
    text: str
    phase: str = "code"


@dataclass
class NetworkRequestCaptured(Message, bubble=False):
    run_id: int
    entry: NetworkLogEntry


@dataclass
class ResultReceived(Message, bubble=False):
    """A stateful session's run displayed a value (a MIME bundle)."""

    run_id: int
    result: RichResult


@dataclass
class RunNoticed(Message, bubble=False):
    """The engine's `error` event: why a run ended abnormally (timeout, out of memory, ...)."""

    run_id: int
    text: str


@dataclass
class RunFinished(Message, bubble=False):
    run_id: int
    session_id: str
    exit_code: int | None
    duration_ms: float
    timed_out: bool = False
    oom_killed: bool = False
    truncated: bool = False
    cancelled: bool = False
    error: str | None = None
    docker_down: bool = False  # the error is DockerUnavailable
    image_missing: bool = False  # the error is ImageMissing
    interpreter: InterpreterState | None = None  # a stateful session's interpreter after the run
    interpreter_lost: str = ""  # why it was lost (the engine's notice)


@dataclass
class InterpreterReset(Message, bubble=False):
    """A stateful session's interpreter was ended (its next run starts a fresh one), or why not."""

    session_id: str
    error: str | None = None


@dataclass
class SessionChanged(Message, bubble=False):
    session_id: str


@dataclass
class DockerChecked(Message, bubble=False):
    available: bool
    message: str = ""


@dataclass
class ImagesChecked(Message, bubble=False):
    missing: list[str]


@dataclass
class ImageBuildProgressed(Message, bubble=False):
    line: str


@dataclass
class ImageBuildFinished(Message, bubble=False):
    error: str | None


@dataclass
class SandboxListed(Message, bubble=False):
    session_id: str
    entries: list[SandboxEntry] | None
    error: str | None = None


@dataclass
class FileTransferred(Message, bubble=False):
    session_id: str
    direction: Literal["upload", "download"]
    source: str
    target: str
    size: int = 0
    error: str | None = None


@dataclass
class WatchedFileChanged(Message, bubble=False):
    path: Path
    exists: bool
    detected_at: float


# --- the bridge ------------------------------------------------------------------------------------------


class EngineBridge:
    """Owns the sessions' engines and reports their events to `target` as messages."""

    def __init__(
        self,
        backend: Backend,
        config: Isol8Config | None = None,
        session_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.backend = backend
        self.config = config or Isol8Config()
        self.session_overrides = dict(session_overrides or {})
        self.sessions: dict[str, Session] = {}
        self.target: MessagePump | None = None
        self._next_id = 0
        self._names: dict[str, int] = {}
        self._options: dict[str, Isol8Options] = {}  # each session's engine options, by session id

    def post(self, message: Message) -> None:
        if self.target is not None:
            self.target.post_message(message)

    # --- sessions ------------------------------------------------------------------------------------
    def create_scratch(self) -> Session:
        options = self.config.engine_options()
        return self._add("scratch", None, options)

    def create_session(self, spec: SessionSpec) -> Session:
        """A persistent engine; its container starts with `warm_up` or the first run. Bad patterns or
        ports, or stateful for a runtime without an interpreter, raise ValueError (the dialog checks
        them first). The config's `network.whitelistReachesPrivate` still applies."""
        if spec.stateful and spec.runtime not in STATEFUL_RUNTIMES:
            raise ValueError(stateless_reason(spec.runtime))
        network_filter = NetworkFilter(
            whitelist=list(spec.whitelist),
            blacklist=list(spec.blacklist),
            ports=list(spec.ports),
            whitelist_reaches_private=self.config.network.whitelist_reaches_private,
        )
        options = self.config.engine_options(
            mode="persistent",
            runtime=spec.runtime,
            network=spec.network,
            network_filter=network_filter,
            log_network=True,
            stateful=spec.stateful,
            **{**self.session_overrides, **spec.settings.container_limits()},
        )
        count = self._names.get(spec.runtime, 0) + 1
        self._names[spec.runtime] = count
        session = self._add(f"{spec.runtime}-{count}", spec.runtime, options)
        session.settings = spec.settings
        return session

    async def configure(self, session: Session, settings: RunSettings) -> None:
        """New run settings; new memory or CPU limits take a new container (the old one, with its files,
        is stopped)."""
        before = session.settings
        session.settings = settings
        if session.scratch or settings.container_limits() == before.container_limits():
            return
        old = session.engine
        limits = {
            name: value if value is not None else getattr(self.config.defaults, name)
            for name, value in settings.container_limits().items()
        }
        options = self._options[session.id].model_copy(update=limits)
        self._options[session.id] = options
        session.engine = self.backend.create_engine(options)
        self._set_state(session, "new")
        with contextlib.suppress(Exception):
            await old.stop()

    def _add(self, name: str, runtime: str | None, options: Isol8Options) -> Session:
        self._next_id += 1
        session = Session(
            id=f"s{self._next_id}",
            name=name,
            runtime=runtime,
            network=options.network,
            log_network=options.log_network,
            whitelist=tuple(options.network_filter.whitelist),
            blacklist=tuple(options.network_filter.blacklist),
            ports=tuple(options.network_filter.ports),
            stateful=options.stateful,
            engine=self.backend.create_engine(options),
            created_at=self.backend.clock(),
        )
        self.sessions[session.id] = session
        self._options[session.id] = options
        return session

    async def allow_host(self, session: Session, entry: NetworkLogEntry) -> str:
        """Add a blocked request's host (exactly) to a filtered session's allow list, applied by its
        live proxy at once and kept for its later containers; the pattern added. PolicyRefused when
        that would not let it through (or it was not blocked by the allow list)."""
        options = self._options[session.id]
        lists = options.network_filter
        rule = entry.rule or ""
        refusal = (
            f"the session's network is {session.network}, not filtered" if session.network != "filtered"
            else "it was allowed" if entry.action == "ALLOW"
            else f"it is on the deny list ({rule.removeprefix('blacklist:')}), which wins over the allow list"
            if rule.startswith("blacklist:")
            else f"it was blocked by its port ({rule}), not its host" if rule.startswith("port ")
            else "it resolves to a private address and network.whitelistReachesPrivate is false"
            if rule.startswith("private address") and not lists.whitelist_reaches_private
            else ""
        )  # fmt: skip
        if refusal:
            raise PolicyRefused(f"{entry.host} is not added to {session.name}'s allow list: {refusal}.")
        pattern = f"^{re.escape(entry.host)}$"
        if pattern not in lists.whitelist:
            lists = lists.model_copy(update={"whitelist": [*lists.whitelist, pattern]})
            await session.engine.set_network_filter(lists)
            self._options[session.id] = options.model_copy(update={"network_filter": lists})
            session.whitelist = tuple(lists.whitelist)
        return pattern

    async def warm_up(self, session: Session) -> None:
        """Start the session's container now so the first run does not wait for it."""
        if session.scratch or session.state not in ("new", "error"):
            return
        self._set_state(session, "starting")
        try:
            await session.engine.start()
            await session.engine.execute(ExecutionRequest(cmd="true", runtime=session.runtime))
        except DockerUnavailable as exc:
            self._set_state(session, "error", str(exc))
            self.post(DockerChecked(False, str(exc)))
            return
        except Isol8Error as exc:
            self._set_state(session, "error", str(exc))
            return
        except Exception as exc:  # never let a session take the app down
            log.exception("warm-up of %s failed", session.name)
            self._set_state(session, "error", f"Unexpected error: {exc}")
            return
        if session.active_run is None:
            self._set_state(session, "idle")

    async def reset(self, session: Session) -> None:
        """End a stateful session's interpreter (the engine waits for a run in flight to end); a session
        that is not stateful is refused with the engine's reason (NotStateful)."""
        try:
            await session.engine.reset()
        except Isol8Error as exc:
            self.post(InterpreterReset(session.id, one_line(exc)))
            return
        except Exception as exc:
            log.exception("reset of %s failed", session.name)
            self.post(InterpreterReset(session.id, f"Unexpected error: {exc}"))
            return
        self.post(InterpreterReset(session.id))

    async def delete_session(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        with contextlib.suppress(Exception):
            await session.engine.stop()

    async def shutdown(self) -> None:
        """Stop every engine (removes their containers)."""
        sessions = list(self.sessions.values())
        self.sessions.clear()
        results = await asyncio.gather(*(s.engine.stop() for s in sessions), return_exceptions=True)
        for session, result in zip(sessions, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("stopping %s failed: %s", session.name, result)

    def pool_figures(self) -> PoolFigures:
        """The scratch engine's warm pool and the sessions' own containers (in-memory; no Docker call).
        A persistent engine counts its container as busy; here it is a session's, busy or not."""
        figures = PoolFigures()
        for session in self.sessions.values():
            try:
                states = session.engine.pool_state()
            except Exception:
                continue
            for state in states:
                if session.scratch:
                    figures.ready += state.ready
                    figures.busy += state.busy
                    figures.starting += state.starting
                else:
                    figures.sessions += state.ready + state.busy + state.starting
        return figures

    def _set_state(self, session: Session, state: SessionState, detail: str = "") -> None:
        session.state = state
        session.detail = detail
        self.post(SessionChanged(session.id))

    # --- runs ------------------------------------------------------------------------------------------
    async def run(
        self,
        session: Session,
        request: ExecutionRequest,
        run_id: int,
        trigger: str = "key",
        terminal: Terminal | None = None,
    ) -> None:
        """Stream one run's events as messages; cancelling the caller kills the run (the stream is closed).
        With a `terminal` the run is interactive (engine/terminal.py): its output all arrives as stdout."""
        started = self.backend.clock()
        session.runs += 1
        session.active_run = run_id
        self._set_state(session, "running")
        self.post(RunStarted(run_id, session.id, request.runtime, trigger, started))
        exit_code: int | None = None
        flags = {"timed_out": False, "oom_killed": False, "truncated": False}
        error: str | None = None
        docker_down = image_missing = cancelled = False
        interpreter: InterpreterState | None = None
        notice = ""  # the last `error` event: why the interpreter was lost, when it was
        try:
            async with contextlib.aclosing(session.engine.execute_stream(request, terminal)) as events:
                async for event in events:
                    if event.type == "stdout" or event.type == "stderr":
                        self.post(OutputReceived(run_id, event.type, event.data, event.phase or "code"))
                    elif event.type == "network" and event.entry is not None:
                        self.post(NetworkRequestCaptured(run_id, event.entry))
                    elif event.type == "result" and event.result is not None:
                        self.post(ResultReceived(run_id, event.result))
                    elif event.type == "error":
                        notice = event.data
                        self.post(RunNoticed(run_id, event.data))
                    elif event.type == "exit":
                        exit_code = int(event.data)
                        interpreter = event.state
                        flags = {
                            "timed_out": bool(event.timed_out),
                            "oom_killed": bool(event.oom_killed),
                            "truncated": bool(event.truncated),
                        }
        except asyncio.CancelledError:
            cancelled = True
            raise
        except DockerUnavailable as exc:
            error, docker_down = str(exc), True
        except Isol8Error as exc:
            error, image_missing = str(exc), isinstance(exc, ImageMissing)
            if isinstance(exc, SandboxLost) and not session.scratch:
                error += " The session's next run starts a new container; its files and state are gone."
        except Exception as exc:
            log.exception("run %s failed", run_id)
            error = f"Unexpected error: {exc}"
        finally:
            duration_ms = (self.backend.clock() - started) * 1000
            if session.active_run == run_id:
                session.active_run = None
                if session.id in self.sessions:
                    self._set_state(session, "error" if error else "idle", error or "")
            self.post(
                RunFinished(
                    run_id,
                    session.id,
                    exit_code,
                    duration_ms,
                    cancelled=cancelled,
                    error=error,
                    docker_down=docker_down,
                    image_missing=image_missing,
                    interpreter=interpreter,
                    interpreter_lost=notice if interpreter == "lost" else "",
                    **flags,
                )
            )
            if docker_down:
                self.post(DockerChecked(False, error or ""))

    # --- files -----------------------------------------------------------------------------------------
    async def list_sandbox(self, session: Session) -> None:
        if session.scratch or session.runtime is None:
            self.post(SandboxListed(session.id, None, "Scratch runs are ephemeral: there is no /sandbox to list."))
            return
        try:
            result = await session.engine.execute(ExecutionRequest(cmd=LISTING_COMMAND, runtime=session.runtime))
        except Exception as exc:
            self.post(SandboxListed(session.id, None, one_line(exc)))
            return
        if result.exit_code != 0 and not result.stdout:
            self.post(SandboxListed(session.id, None, result.stderr.strip() or f"listing exited {result.exit_code}"))
            return
        self.post(SandboxListed(session.id, parse_listing(result.stdout)))

    async def upload(self, session: Session, source: Path, target: str) -> None:
        try:
            data = await asyncio.to_thread(source.read_bytes)
            await session.engine.put_file(target, data)
        except Exception as exc:
            self.post(FileTransferred(session.id, "upload", str(source), target, error=one_line(exc)))
            return
        self.post(FileTransferred(session.id, "upload", str(source), target, size=len(data)))

    async def download(self, session: Session, source: str, target: Path) -> None:
        try:
            data = await session.engine.get_file(source)
            await asyncio.to_thread(_write_file, target, data)
        except Exception as exc:
            self.post(FileTransferred(session.id, "download", source, str(target), error=one_line(exc)))
            return
        self.post(FileTransferred(session.id, "download", source, str(target), size=len(data)))

    # --- Docker ----------------------------------------------------------------------------------------
    def check_docker(self, runtimes: Sequence[str] = RUNTIME_NAMES) -> None:
        """Blocking (thread worker): is Docker up, and which images are missing."""
        try:
            missing = self.backend.missing_images(runtimes)
        except DockerUnavailable as exc:
            self.post(DockerChecked(False, str(exc)))
            return
        except Exception as exc:
            self.post(DockerChecked(False, one_line(exc)))
            return
        self.post(DockerChecked(True))
        self.post(ImagesChecked(missing))

    def build_images(self, runtimes: Sequence[str]) -> None:
        """Blocking (thread worker): build the images, reporting each progress line."""
        try:
            self.backend.build_images(runtimes, lambda line: self.post(ImageBuildProgressed(line)))
        except Exception as exc:
            self.post(ImageBuildFinished(one_line(exc)))
            return
        self.post(ImageBuildFinished(None))

    def ping(self) -> None:
        """Blocking (thread worker): report Docker's status."""
        try:
            self.backend.ping()
        except Exception as exc:
            self.post(DockerChecked(False, one_line(exc)))
            return
        self.post(DockerChecked(True))


def parse_listing(text: str) -> list[SandboxEntry]:
    kinds: dict[str, Literal["file", "dir", "link", "other"]] = {"f": "file", "d": "dir", "l": "link"}
    entries = []
    for line in text.splitlines():
        parts = line.split("\t", 3)
        if len(parts) != 4 or not parts[1].isdigit():
            continue
        kind, size, modified, relative = parts
        path = str(PurePosixPath("/sandbox") / relative)
        entries.append(SandboxEntry(kinds.get(kind, "other"), int(size), modified, path))
    return entries


def _write_file(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
