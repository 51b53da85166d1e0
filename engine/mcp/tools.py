"""The MCP tools: runs, sessions, files and network logs, over the state `isol8 serve` keeps.

Every tool goes through the same pieces as a REST request: the operator's policy
(engine/server/policy.py) turns the arguments into a plan or refuses them, stateless runs share the
long-lived engines, and sessions live in the same registry, namespaced by the caller's tenant (so one
tenant cannot reach another's session by its id) and closed once idle for `cleanup.maxContainerAgeMs`.
Sessions are explicit: `create_session` returns an unguessable id, and a run that names an unknown
one is refused instead of creating it. A stateful session's `run_code` also returns its rich results:
images as image content, HTML and markdown as text content, every bundle in the structured output.
Failures become tool errors with the CLI's one-line message.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import logging
import posixpath
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Literal, TypeVar

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ContentBlock, ImageContent, TextContent
from pydantic import Field, ValidationError

from engine.audit import acting_for
from engine.config import McpSettings
from engine.errors import Isol8Error, SessionNotFound, TooManySessions, one_line
from engine.interface import Engine
from engine.models import (
    ExecutionRequest,
    InterpreterState,
    Isol8Options,
    MimeType,
    Model,
    NetworkFilter,
    NetworkLogEntry,
    NetworkMode,
    Pattern,
    RichResult,
)
from engine.runtimes import RuntimeName, get_runtime
from engine.server.auth import Principal
from engine.server.policy import ClientOptions
from engine.server.sessions import Session, SessionInfo
from engine.server.state import ServerState

log = logging.getLogger("isol8.mcp")

T = TypeVar("T")

PROGRESS_MESSAGE_CHARS = 200
"""A progress notification carries the tail of the output chunk that caused it, at most this long."""
LIST_DEPTH = 4
"""How deep `list_files` descends below the directory it lists."""


# --- outputs -------------------------------------------------------------------------------------------
class NetworkSummary(Model):
    """What a filtered run's requests came to (the full list: `network_log`)."""

    requests: int
    allowed: int
    blocked: int
    blocked_hosts: list[str]


class RunResult(Model):
    stdout: str
    stderr: str
    exit_code: int
    duration_ms: int
    timed_out: bool
    oom_killed: bool
    truncated: bool = Field(description="Output passed the output cap and was cut")
    session_id: str | None = None
    network: NetworkSummary | None = Field(default=None, description="Filtered runs only")
    results: list[RichResult] | None = Field(
        default=None,
        description="Stateful sessions: the values the code displayed, in order, each a MIME bundle "
        "(image/png, image/jpeg and application/pdf base64); isMainResult marks its final expression's",
    )
    state: InterpreterState | None = Field(
        default=None,
        description='Stateful sessions: the interpreter after the run: "fresh", "kept", or "lost" '
        "(its variables are gone; the next run starts a fresh one)",
    )


class SessionCreated(Model):
    session_id: str
    runtime: str
    network: NetworkMode
    stateful: bool


class SessionReset(Model):
    session_id: str
    reset: bool = Field(default=True, description="The interpreter ended: the next run starts a fresh one")


class SessionList(Model):
    sessions: list[SessionInfo]


class Closed(Model):
    session_id: str
    closed: bool = Field(description="False if there was no such session (closing is idempotent)")


class Written(Model):
    path: str
    bytes: int


class FileRead(Model):
    path: str
    content: str
    encoding: Literal["text", "base64"]
    bytes: int = Field(description="Bytes returned (before base64)")
    truncated: bool = Field(description="The file is longer than mcp.maxReadBytes: only its start is returned")


class FileEntry(Model):
    path: str
    type: Literal["file", "directory", "symlink", "other"]
    size: int


class FileList(Model):
    path: str
    entries: list[FileEntry]
    truncated: bool = Field(description="There are more than mcp.maxListEntries entries")


class NetworkLog(Model):
    session_id: str
    entries: list[NetworkLogEntry]


# --- arguments -----------------------------------------------------------------------------------------
SessionId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@+=~-]+$")]
Network = Annotated[
    NetworkMode | None,
    Field(description='"none" (default), "filtered" (through allow/deny lists) or "host"; within the server policy'),
]
Allow = Annotated[list[Pattern], Field(description="Filtered network: host regexes that may be reached")]
Deny = Annotated[list[Pattern], Field(description="Filtered network: host regexes that are blocked (wins)")]
TimeoutMs = Annotated[int | None, Field(gt=0, description="Wall-clock limit (default: mcp.timeoutMs)")]
Memory = Annotated[str | None, Field(description='Memory limit, e.g. "256m" (default: mcp.memoryLimit)')]
Env = Annotated[dict[str, str], Field(description="Environment variables for the program")]
Stdin = Annotated[str | None, Field(description="Text on the program's standard input")]
Packages = Annotated[list[str], Field(description="Packages to install first (pip, npm, ...; needs a network)")]
Encoding = Literal["text", "base64"]


@contextlib.contextmanager
def tool_errors() -> Iterator[None]:
    """Failures as tool errors with the CLI's one line; a bug in isol8 is logged, not shown."""
    try:
        yield
    except ToolError:
        raise
    except (Isol8Error, ValidationError, ValueError) as exc:
        raise ToolError(one_line(exc)) from None
    except Exception as exc:
        log.error("MCP tool failed", exc_info=exc)
        raise ToolError("Internal error in the isol8 MCP server; its log has the details") from None


def _summary(entries: list[NetworkLogEntry]) -> NetworkSummary:
    blocked = [entry for entry in entries if entry.action == "BLOCK"]
    return NetworkSummary(
        requests=len(entries),
        allowed=len(entries) - len(blocked),
        blocked=len(blocked),
        blocked_hosts=sorted({entry.host for entry in blocked}),
    )


def _directory(path: str) -> str:
    """`path` if it is /sandbox or a directory path inside it, without `..`."""
    norm = posixpath.normpath(path) if path.startswith("/") else ""
    if (norm != "/sandbox" and not norm.startswith("/sandbox/")) or ".." in path.split("/") or "\0" in path:
        raise Isol8Error(f'list_files lists /sandbox or a directory inside it, without "..": "{path}"')
    return norm


_KINDS: dict[str, Literal["file", "directory", "symlink"]] = {"f": "file", "d": "directory", "l": "symlink"}


class Toolbox:
    """The tools of one MCP server, over `state` (the same state `isol8 serve` keeps for REST)."""

    def __init__(self, state: ServerState, settings: McpSettings, identify: Callable[[Context], Principal]) -> None:
        self.state = state
        self.settings = settings
        self.identify = identify
        # The last run's network log per (tenant, session id); a closed or pruned session's goes with it.
        self._network: dict[tuple[str, str], list[NetworkLogEntry]] = {}

    # --- runs ------------------------------------------------------------------------------------------
    async def run_code(
        self,
        ctx: Context,
        code: Annotated[str, Field(description="The program's source")],
        runtime: Annotated[RuntimeName | None, Field(description="Interpreter (default: mcp.runtime)")] = None,
        session_id: Annotated[SessionId | None, Field(description="Run in this session (from create_session)")] = None,
        timeout_ms: TimeoutMs = None,
        memory_limit: Memory = None,
        packages: Packages = [],  # noqa: B006 (a schema default; never mutated)
        network: Network = None,
        allow: Allow = [],  # noqa: B006
        deny: Deny = [],  # noqa: B006
        stdin: Stdin = None,
        env: Env = {},  # noqa: B006
    ) -> Annotated[CallToolResult, RunResult]:
        """Run code in a fresh hardened container (or in a session's), and return its output and exit code.
        In a stateful session the code runs on the session's interpreter (variables persist) and its
        results come back too: images as image content, HTML and markdown as text.
        Progress notifications carry the output as it streams."""
        with tool_errors():
            request = ExecutionRequest(
                code=code,
                runtime=runtime or self.settings.runtime,
                install_packages=packages,
                stdin=stdin,
                env=env,
            )
            result = await self._run(ctx, request, session_id, timeout_ms, memory_limit, network, allow, deny)
            return _with_content(result)

    async def run_command(
        self,
        ctx: Context,
        command: Annotated[str, Field(description="A shell command line, run by the image's shell")],
        runtime: Annotated[RuntimeName | None, Field(description="Whose image (default: mcp.runtime)")] = None,
        session_id: Annotated[SessionId | None, Field(description="Run in this session (from create_session)")] = None,
        timeout_ms: TimeoutMs = None,
        memory_limit: Memory = None,
        network: Network = None,
        allow: Allow = [],  # noqa: B006
        deny: Deny = [],  # noqa: B006
        stdin: Stdin = None,
        env: Env = {},  # noqa: B006
    ) -> RunResult:
        """Run a shell command in a runtime's hardened image (or in a session's container)."""
        with tool_errors():
            request = ExecutionRequest(cmd=command, runtime=runtime or self.settings.runtime, stdin=stdin, env=env)
            return await self._run(ctx, request, session_id, timeout_ms, memory_limit, network, allow, deny)

    async def _run(
        self,
        ctx: Context,
        request: ExecutionRequest,
        session_id: str | None,
        timeout_ms: int | None,
        memory_limit: str | None,
        network: NetworkMode | None,
        allow: list[str],
        deny: list[str],
    ) -> RunResult:
        caller = self.identify(ctx)
        settings = self.settings
        limits = {"timeout_ms": timeout_ms or settings.timeout_ms, "max_output_size": settings.max_output_size}
        if session_id is not None:
            if network is not None or allow or deny or memory_limit is not None:
                raise Isol8Error(
                    "network, allow, deny and memory_limit are fixed when a session is created: "
                    "pass them to create_session, or leave session_id out for a fresh sandbox"
                )
            plan = self.state.policy.plan(request.model_copy(update=limits), None)
            async with self._session(caller, session_id) as session:
                filtered = session.engine.options.network == "filtered"
                result, entries = await self._stream(ctx, caller, session.engine, plan.request, filtered)
                if filtered:
                    self._network[(caller.tenant_id, session_id)] = entries
            result.session_id = session_id
            return result
        options = self._options(network, allow, deny, memory_limit)
        plan = self.state.policy.plan(request.model_copy(update=limits), options)
        filtered = plan.engine_options.network == "filtered"
        async with self.state.engines.use(plan.engine_options) as engine:
            result, _ = await self._stream(ctx, caller, engine, plan.request, filtered)
            return result

    def _options(
        self, network: NetworkMode | None, allow: list[str], deny: list[str], memory_limit: str | None
    ) -> ClientOptions:
        """The client options a REST client would send for these arguments (the policy checks them)."""
        mode = network or self.settings.network
        if (allow or deny) and mode != "filtered":
            raise Isol8Error('allow and deny lists need network "filtered"')
        return ClientOptions(
            network=mode,
            network_filter=NetworkFilter(whitelist=allow, blacklist=deny) if allow or deny else None,
            log_network=mode == "filtered",
            memory_limit=memory_limit or self.settings.memory_limit,
        )

    async def _stream(
        self, ctx: Context, caller: Principal, engine: Engine, request: ExecutionRequest, filtered: bool
    ) -> tuple[RunResult, list[NetworkLogEntry]]:
        """Run `request` on `engine`, reporting progress as output streams: the result and the requests it made."""
        output: dict[str, list[str]] = {"stdout": [], "stderr": []}
        network: list[NetworkLogEntry] = []
        results: list[RichResult] = []
        errors: list[str] = []
        exit_event = None
        streamed = 0
        started = time.monotonic()
        with acting_for(caller.tenant_id, caller.key_id or "master"):
            events = engine.execute_stream(request)
        async with contextlib.aclosing(events) as stream:
            async for event in stream:
                if event.entry is not None:
                    network.append(event.entry)
                elif event.type in output:
                    # Install and setup output goes with stderr, as the CLI prints it.
                    output["stdout" if event.type == "stdout" and event.phase != "setup" else "stderr"].append(
                        event.data
                    )
                    streamed += len(event.data)
                    await ctx.report_progress(streamed, message=event.data[-PROGRESS_MESSAGE_CHARS:])
                elif event.type == "error":  # a timeout, an OOM kill, a failed install: after stderr
                    errors.append(event.data)
                elif event.result is not None:
                    results.append(event.result)
                elif event.type == "exit":
                    exit_event = event
        if exit_event is None:  # the engine promises one `exit`; never report a made-up success
            raise Isol8Error("The run ended without an exit status; run it again")
        stderr = "".join(output["stderr"])
        for line in errors:
            stderr += ("" if not stderr or stderr.endswith("\n") else "\n") + line + "\n"
        result = RunResult(
            stdout="".join(output["stdout"]),
            stderr=stderr,
            exit_code=int(exit_event.data),
            duration_ms=round((time.monotonic() - started) * 1000),
            timed_out=bool(exit_event.timed_out),
            oom_killed=bool(exit_event.oom_killed),
            truncated=bool(exit_event.truncated),
            network=_summary(network) if filtered else None,
            results=results if exit_event.state is not None else None,
            state=exit_event.state,
        )
        return result, network

    # --- sessions --------------------------------------------------------------------------------------
    async def create_session(
        self,
        ctx: Context,
        runtime: Annotated[RuntimeName | None, Field(description="Interpreter (default: mcp.runtime)")] = None,
        network: Network = None,
        allow: Allow = [],  # noqa: B006
        deny: Deny = [],  # noqa: B006
        memory_limit: Memory = None,
        stateful: Annotated[
            bool,
            Field(
                description="run_code keeps one interpreter (python, node, bash) whose variables survive "
                "between runs (a notebook's kernel), and returns rich results (images, HTML); reset_session "
                "starts it afresh"
            ),
        ] = False,
    ) -> SessionCreated:
        """Start a persistent sandbox: files and installed packages carry over between the runs that
        name its id (variables too, with stateful). Closed by close_session, or once idle for the
        server's idle time."""
        with tool_errors():
            caller = self.identify(ctx)
            chosen = runtime or self.settings.runtime
            if stateful and get_runtime(chosen).kernel is None:
                raise Isol8Error(
                    f'A stateful session runs python, node or bash; "{chosen}" runs each execution as a new '
                    "process: create the session without stateful"
                )
            options = self._options(network, allow, deny, memory_limit).model_copy(update={"stateful": stateful})
            probe = ExecutionRequest(cmd="true", runtime=chosen, timeout_ms=self.settings.timeout_ms)
            plan = self.state.policy.plan(probe, options)
            session_id = secrets.token_urlsafe(16)
            create = plan.session_options()
            async with self._new_session(caller, session_id, create) as session:
                try:  # checks Docker now, not at the first run
                    await session.engine.start()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await self.state.sessions.delete(caller.tenant_id, session_id)
                    raise
            return SessionCreated(
                session_id=session_id, runtime=chosen, network=create.network, stateful=create.stateful
            )

    @contextlib.asynccontextmanager
    async def _new_session(self, caller: Principal, session_id: str, create: Isol8Options) -> AsyncIterator[Session]:
        """The registry's new session, its caps said in MCP's terms (the registry names the REST route)."""
        try:
            async with self.state.sessions.use(caller.tenant_id, session_id, create) as session:
                yield session
        except TooManySessions:
            server = self.state.config.server
            raise TooManySessions(
                f"Too many sessions: this server keeps at most {server.max_sessions} (server.maxSessions), "
                f"{server.max_sessions_per_tenant} per tenant (server.maxSessionsPerTenant); "
                "close one with close_session"
            ) from None

    async def close_session(self, ctx: Context, session_id: SessionId) -> Closed:
        """Stop a session and remove its container and files (no error if it is already gone)."""
        with tool_errors():
            tenant = self.identify(ctx).tenant_id
            self._network.pop((tenant, session_id), None)
            return Closed(session_id=session_id, closed=await self.state.sessions.delete(tenant, session_id))

    async def reset_session(self, ctx: Context, session_id: SessionId) -> SessionReset:
        """End a stateful session's interpreter: its variables go, its files stay, and the next run
        starts a fresh one (after a run in progress ends)."""
        with tool_errors():
            caller = self.identify(ctx)
            async with self._session(caller, session_id) as session:
                await session.engine.reset()
            return SessionReset(session_id=session_id)

    async def list_sessions(self, ctx: Context) -> SessionList:
        """The caller's sessions (another tenant's are never listed)."""
        with tool_errors():
            return SessionList(sessions=self.state.sessions.list_for(self.identify(ctx).tenant_id))

    @contextlib.asynccontextmanager
    async def _session(self, caller: Principal, session_id: str) -> AsyncIterator[Session]:
        try:
            async with self.state.sessions.use(caller.tenant_id, session_id) as session:
                yield session
        except SessionNotFound:
            self._network.pop((caller.tenant_id, session_id), None)
            idle = self.state.config.cleanup.max_container_age_ms // 1000
            raise SessionNotFound(
                f'Session "{session_id}" not found (closed, or idle for over {idle} s): '
                "create one with create_session and use its id"
            ) from None

    # --- files -----------------------------------------------------------------------------------------
    async def write_file(
        self,
        ctx: Context,
        session_id: SessionId,
        path: Annotated[str, Field(description="Absolute path inside /sandbox or /tmp")],
        content: str,
        encoding: Annotated[Encoding, Field(description='"text" (UTF-8) or "base64" (binary)')] = "text",
    ) -> Written:
        """Write a file into a session (parents are created; an existing file is replaced)."""
        with tool_errors():
            caller = self.identify(ctx)
            data = _decode(content, encoding)
            async with self._session(caller, session_id) as session:
                await session.engine.put_file(path, data)
            return Written(path=path, bytes=len(data))

    async def read_file(
        self,
        ctx: Context,
        session_id: SessionId,
        path: Annotated[str, Field(description="Absolute path inside /sandbox or /tmp")],
        encoding: Annotated[Encoding, Field(description='"text" (UTF-8) or "base64" (any bytes)')] = "text",
    ) -> FileRead:
        """Read a file of a session, at most mcp.maxReadBytes of it."""
        with tool_errors():
            caller = self.identify(ctx)
            async with self._session(caller, session_id) as session:
                data = await session.engine.get_file(path)
            limit = self.settings.max_read_bytes
            truncated = len(data) > limit
            data = data[:limit]
            if encoding == "base64":
                return FileRead(
                    path=path, content=base64.b64encode(data).decode(), encoding=encoding, bytes=len(data),
                    truncated=truncated,
                )  # fmt: skip
            try:  # a cut file may end inside a character: that partial character is left out
                text = codecs.getincrementaldecoder("utf-8")().decode(data, final=not truncated)
            except UnicodeDecodeError:
                raise Isol8Error(f'{path} is not UTF-8 text: read it with encoding "base64"') from None
            return FileRead(path=path, content=text, encoding=encoding, bytes=len(data), truncated=truncated)

    async def list_files(
        self,
        ctx: Context,
        session_id: SessionId,
        path: Annotated[str, Field(description="/sandbox or a directory inside it")] = "/sandbox",
    ) -> FileList:
        """List a session's files below a directory (four levels deep, at most mcp.maxListEntries)."""
        with tool_errors():
            caller = self.identify(ctx)
            directory = _directory(path)
            limit = self.settings.max_list_entries
            # The directory travels in the environment, never in the command line.
            listing = ExecutionRequest(
                cmd=f'find "$ISOL8_LIST" -mindepth 1 -maxdepth {LIST_DEPTH} -printf "%y\\t%s\\t%p\\0" '
                f"| head -z -n {limit + 1}",
                env={"ISOL8_LIST": directory},
                timeout_ms=self.settings.timeout_ms,
            )
            async with self._session(caller, session_id) as session:
                with acting_for(caller.tenant_id, caller.key_id or "master"):
                    result = await session.engine.execute(listing)
            if result.exit_code != 0:
                raise Isol8Error(f"Cannot list {directory}: {result.stderr.strip() or 'find failed'}")
            records = [record.split("\t", 2) for record in result.stdout.split("\0") if record]
            entries = [
                FileEntry(path=name, type=_KINDS.get(kind, "other"), size=int(size)) for kind, size, name in records
            ]
            return FileList(path=directory, entries=entries[:limit], truncated=len(entries) > limit)

    async def network_log(self, ctx: Context, session_id: SessionId) -> NetworkLog:
        """The requests a filtered session's last run made, allowed and blocked, with the rule that decided."""
        with tool_errors():
            caller = self.identify(ctx)
            key = (caller.tenant_id, session_id)
            async with self._session(caller, session_id) as session:
                if session.engine.options.network != "filtered":
                    raise Isol8Error(
                        f'Session "{session_id}" has network "{session.engine.options.network}": only a '
                        'filtered session logs requests (create_session with network "filtered")'
                    )
            return NetworkLog(session_id=session_id, entries=self._network.get(key, []))


IMAGE_TYPES: tuple[MimeType, ...] = ("image/png", "image/jpeg")
"""Bundle values sent as MCP image content (already base64, as the content wants them)."""
TEXT_TYPES: tuple[MimeType, ...] = ("text/markdown", "text/html")
"""Bundle values sent as text content, the first a bundle has; else its text/plain."""


def _with_content(result: RunResult) -> CallToolResult:
    """`result` as structured output, with content for the model: the result's JSON (its results
    left to the blocks after it), then each rich result's images and its markdown, HTML or text."""
    blocks: list[ContentBlock] = [TextContent(type="text", text=result.model_dump_json(indent=2, exclude={"results"}))]
    for rich in result.results or []:
        images = [
            ImageContent(type="image", data=rich.data[mime], mime_type=mime)
            for mime in IMAGE_TYPES
            if mime in rich.data
        ]
        text = next((rich.data[mime] for mime in TEXT_TYPES if mime in rich.data), None)
        if text is None and not images:
            text = rich.data.get("text/plain")
        blocks.extend(images)
        if text is not None:
            blocks.append(TextContent(type="text", text=text))
    return CallToolResult(content=blocks, structured_content=result.model_dump(mode="json", by_alias=True))


def _decode(content: str, encoding: Encoding) -> bytes:
    if encoding == "text":
        return content.encode()
    try:
        return base64.b64decode(content, validate=True)
    except ValueError as exc:
        raise Isol8Error(f"content: not valid base64 ({exc}); send the bytes base64-encoded") from None
