"""DockerIsol8: the in-process engine. Validates a request, gets a sandbox, runs, reports.

One execution is up to four jobs on the same sandbox, sharing one timeout budget: package
install, the image's setup script, the request's setup script (phase `setup`), then the code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import posixpath
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from engine import metrics, tracing
from engine.audit import AuditLogger, AuditRecord, Caller, current_caller, new_record
from engine.docker import DockerClient
from engine.errors import (
    Isol8Error,
    NotFiltered,
    NotStateful,
    OutOfMemory,
    SandboxError,
    SandboxLost,
    SessionLost,
    SetupFailed,
)
from engine.hardening import MANAGED_LABEL, OWNER_LABEL, container_config, owner_alive
from engine.images.custom import find_custom, label
from engine.models import (
    BINARY_MIME_TYPES,
    CONTAINER_LIMITS,
    MIME_TYPES,
    CleanupReport,
    ExecutionRequest,
    ExecutionResult,
    InterpreterState,
    Isol8Options,
    NetworkFilter,
    NetworkLogEntry,
    PoolState,
    RequestLimits,
    ResourceUsage,
    RichResult,
    SecurityEvent,
    StreamEvent,
    sandbox_path,
)
from engine.output import TIMEOUT_MARKER, Masker, StreamText, truncation_marker
from engine.packages import validate_packages
from engine.pool import Pool
from engine.remote_code import fetch_code
from engine.runtimes import code_file, get_runtime
from engine.sandbox import Job, Output, Sandbox
from engine.terminal import TERMINAL_TYPE, Terminal

log = logging.getLogger("isol8.engine")

# The host-side backstop: the agent enforces the timeout; the engine kills the container if the
# agent has not reported this long after it.
BACKSTOP_GRACE_S = 2.0
STALE_AFTER_S = 60  # a launch takes well under a second: older unstarted containers are leftovers
AGENT_SILENT = "The sandbox agent did not answer in time; its container was removed."
SETUP_FILE = "/sandbox/.isol8-setup.sh"
BURST_CAP = 8
ABANDONED = "The caller left before the run ended (cancelled or disconnected); the run was killed."
Phase = Literal["setup", "code"]


def resolve_workdir(workdir: str | None) -> str:
    if not workdir:
        return "/sandbox"
    resolved = posixpath.normpath(posixpath.join("/sandbox", workdir))
    if resolved != "/sandbox" and not resolved.startswith("/sandbox/"):
        raise Isol8Error("Working directory must be inside /sandbox")
    return resolved


@dataclass
class Step:
    """One job of an execution, and how its failure is reported."""

    phase: Phase
    job: Job
    failure: str = ""  # e.g. "Setup script failed": a non-zero exit stops the execution


@dataclass
class Outcome:
    """How a run ended; `execute` turns it into an ExecutionResult, streams into an exit event."""

    exit_code: int
    phase: Phase = "code"
    duration_ms: float = 0.0
    timed_out: bool = False
    oom_killed: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    error: str | None = None
    failed: str | None = None  # a setup step's failure message (the code did not run)
    container_id: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    usage: ResourceUsage | None = None
    state: InterpreterState | None = None  # a stateful session's interpreter after the run
    results_dropped: int = 0  # rich results over maxFileSize, left out


class DockerIsol8:
    """Runs code in hardened containers. Use as `async with DockerIsol8(...) as engine:`.

    Ephemeral mode (default): a fresh container per execution. Persistent mode: one container for
    the engine's life, started by the first call that needs it; `/sandbox` and `/tmp` carry over.
    """

    def __init__(self, options: Isol8Options | None = None, **kwargs: Any) -> None:
        self.options = options or Isol8Options(**kwargs)
        self.docker = DockerClient()
        self._slots = asyncio.Semaphore(self.options.max_concurrent)
        self._live: set[Sandbox] = set()
        self._cleanup: set[asyncio.Task[None]] = set()
        self._session: Sandbox | None = None
        self._session_runtime: str | None = self.options.runtime
        self._session_lock = asyncio.Lock()
        self._session_notice: str | None = None  # why the last session's state is gone, told once
        self._session_secrets: set[str] = set()  # every secret a session was given, masked for its life
        self._installed: set[str] = set()
        self.persisted: list[str] = []  # containers left running because of `persist`
        # A burst keeps at most BURST_CAP containers warm, and never more than can run at once.
        burst_cap = min(BURST_CAP, self.options.max_concurrent)
        self._pool = Pool(self.docker, self.options.pool_strategy, self.options.pool_size, burst_cap)
        self._audit = AuditLogger(self.options.audit)

    async def start(self) -> None:
        """Check Docker, remove stale leftovers, and in ephemeral mode warm the `prewarm` runtimes."""
        await asyncio.to_thread(self.docker.ping)
        await asyncio.to_thread(self._remove_stale)
        if self.options.mode == "ephemeral" and not self.options.persist and self.options.prewarm:
            images = [self.options.image or get_runtime(runtime).image for runtime in self.options.prewarm]
            await self._pool.prewarm(
                [
                    container_config(self.options, image, rt)
                    for image, rt in zip(images, self.options.prewarm, strict=True)
                ]
            )

    def _remove_stale(self) -> None:
        """Leftovers of engines that died at the wrong moment (a container created but never
        started, or started after its engine was gone): their owner process no longer exists.
        Containers left on purpose (`persist`) are kept; unlabelled stopped ones go after a minute."""
        cutoff = time.time() - STALE_AFTER_S
        for container in self.docker.managed_containers():
            labels = container.get("Labels") or {}
            if labels.get("isol8.mode") == "persist":
                continue
            owner = labels.get(OWNER_LABEL)
            dead_owner = owner is not None and not owner_alive(owner)
            stopped = container["State"] in ("created", "exited", "dead") and container["Created"] < cutoff
            if dead_owner or stopped:
                self.docker.remove(container["Id"])

    async def stop(self) -> None:
        """Remove every container this engine created, also ones mid-run; safe to call again."""
        self._session = None
        for sandbox in list(self._live):
            self._release(sandbox, reusable=False)
        await self._pool.close()
        if self._cleanup:
            await asyncio.gather(*self._cleanup, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def pool_state(self) -> list[PoolState]:
        """Warm containers per image (ready, busy, starting), plus a running persistent session."""
        states = {state.image: state for state in self._pool.state()}
        if self._session is not None:
            image = self._session.image
            states.setdefault(image, PoolState(image=image)).busy += 1
        return sorted(states.values(), key=lambda state: state.image)

    @property
    def container_id(self) -> str | None:
        """The persistent container's id, once it exists."""
        return self._session.container_id if self._session else None

    # --- public API -------------------------------------------------------------------------------
    async def execute(self, request: ExecutionRequest) -> ExecutionResult:
        """Run to completion; output is returned exactly as produced (capped and masked, never trimmed).

        A failing package install or setup script raises SetupFailed with its exit code and stderr.
        """
        text: dict[str, list[str]] = {"stdout": [], "stderr": []}
        setup_stderr: list[str] = []
        network: list[NetworkLogEntry] = []
        results: list[RichResult] = []
        outcome = Outcome(exit_code=1)
        execution_id = str(uuid.uuid4())
        observed = self._observed(request, execution_id, current_caller(), tracing.current())
        async with contextlib.aclosing(observed) as events:
            async for item in events:
                if isinstance(item, Outcome):
                    outcome = item
                elif item.entry is not None:
                    network.append(item.entry)
                elif item.result is not None:
                    results.append(item.result)
                elif item.phase == "setup":
                    if item.type == "stderr":
                        setup_stderr.append(item.data)
                elif item.type in text:
                    text[item.type].append(item.data)
        if outcome.failed:
            raise SetupFailed(f"{outcome.failed} (exit code {outcome.exit_code}): {''.join(setup_stderr).strip()}")
        stderr = "".join(text["stderr"])
        for marker in _end_markers(outcome, request, self.options):
            stderr += ("" if not stderr or stderr.endswith("\n") else "\n") + marker
        return ExecutionResult(
            stdout="".join(text["stdout"]),
            stderr=stderr,
            exit_code=outcome.exit_code,
            duration_ms=round(outcome.duration_ms),
            timed_out=outcome.timed_out,
            oom_killed=outcome.oom_killed,
            truncated=outcome.stdout_truncated or outcome.stderr_truncated,
            stdout_truncated=outcome.stdout_truncated,
            stderr_truncated=outcome.stderr_truncated,
            execution_id=execution_id,
            runtime=request.runtime,
            container_id=outcome.container_id,
            files=outcome.files if request.output_paths else None,
            resource_usage=outcome.usage,
            network_logs=network if self.options.log_network and self.options.network == "filtered" else None,
            security_events=[_blocked(entry) for entry in network if entry.action == "BLOCK"] or None,
            results=results if outcome.state is not None else None,
            state=outcome.state,
        )

    def execute_stream(
        self, request: ExecutionRequest, terminal: Terminal | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """Yield output events as they happen (phase `setup`, then `code`), then exactly one exit.

        With a `terminal`, the code step runs on a pseudo-terminal and takes its input as it comes
        (engine/terminal.py). Leaving the loop early (break, cancellation) kills the run and frees
        its container. The audit log's caller is the one current when this is called.
        """
        return self._stream(request, current_caller(), tracing.current(), terminal)

    async def _stream(
        self, request: ExecutionRequest, caller: Caller | None, parent: tracing.Span, terminal: Terminal | None
    ) -> AsyncGenerator[StreamEvent, None]:
        observed = self._observed(request, str(uuid.uuid4()), caller, parent, terminal)
        async with contextlib.aclosing(observed) as events:
            async for item in events:
                if isinstance(item, Outcome):
                    for event in _closing_events(item):
                        yield event
                elif item.type != "network" or self.options.log_network:
                    yield item

    async def set_network_filter(self, network_filter: NetworkFilter) -> None:
        """New allow and deny lists for this engine's filtered network: a live session's proxy
        applies them to its next request (also of a run in progress, without a restart); every
        container started later has them."""
        if self.options.network != "filtered":
            raise NotFiltered.of(self.options.network)
        self.options = self.options.model_copy(update={"network_filter": network_filter})
        if self._session is not None and self._session.alive:
            self._session.control("network", {"policy": network_filter.model_dump_json()})
        log.debug("network filter now %s", network_filter.model_dump_json())

    async def reset(self) -> None:
        """End the stateful session's interpreter (its variables go, /sandbox stays); the next run
        starts a fresh one. Waits for a run in progress to end first."""
        if not self.options.stateful:
            raise NotStateful.for_reset()
        async with self._session_lock:
            sandbox = self._session
            if sandbox is None or not sandbox.alive:
                return
            async with self._session_guard(sandbox):
                await sandbox.reset_kernel()

    async def put_file(self, path: str, content: str | bytes) -> None:
        """Write a file into the persistent sandbox (binary-safe; parents created). A failed write
        leaves nothing behind; only regular files (or new paths) can be written."""
        target = _sandbox_path(path)
        with tracing.current().child("isol8.files", op="put"):
            await self._put_file(target, _bytes(content))

    async def _put_file(self, target: str, content: bytes) -> None:
        async with self._session_lock:
            sandbox = await self._file_session()
            async with self._session_guard(sandbox):
                await sandbox.put_file(target, content)

    async def get_file(self, path: str) -> bytes:
        """Read a regular file from the persistent sandbox, at most `max_file_size` bytes."""
        target = _sandbox_path(path)
        with tracing.current().child("isol8.files", op="get"):
            return await self._get_file(target)

    async def _get_file(self, target: str) -> bytes:
        async with self._session_lock:
            sandbox = await self._file_session()
            async with self._session_guard(sandbox):
                return await sandbox.get_file(target, self.options.max_file_size)

    # --- planning ---------------------------------------------------------------------------------
    def _options_for(self, request: ExecutionRequest) -> Isol8Options:
        values = {name: getattr(request, name) for name in RequestLimits.model_fields}
        overrides = {name: value for name, value in values.items() if value is not None}
        return self.options.model_copy(update=overrides) if overrides else self.options

    def _image_for(self, runtime: str, packages: list[str]) -> tuple[str, list[str], str | None]:
        """(image, packages still to install, the image's setup script)."""
        if self.options.image:
            labels = self.docker.image_labels(self.options.image) or {}
            return self.options.image, packages, label(labels, "setup") or None
        if packages:
            custom = find_custom(self.docker, runtime, packages)
            if custom:
                log.debug("using %s for %s: nothing to install", custom.tag, packages)
                return custom.tag, [], None
        return get_runtime(runtime).image, packages, None

    def _steps(
        self,
        request: ExecutionRequest,
        options: Isol8Options,
        packages: list[str],
        image_setup: str | None,
        terminal: Terminal | None = None,
    ) -> list[Step]:
        spec = get_runtime(request.runtime)
        env = {**self.options.secrets, **request.secrets, **request.env}
        files = {path: _bytes(content) for path, content in request.files.items()}

        def job(argv: list[str], **extra: Any) -> Job:
            base = {
                "env": env,
                "cwd": "/sandbox",
                "timeout_ms": 0,
                "max_output": options.max_output_size,
                "max_file_size": options.max_file_size,
                "prestart": True,  # the code step follows: its interpreter can start meanwhile
            }
            return Job(argv=argv, **{**base, **extra})

        steps = []
        if packages:
            steps.append(
                Step(
                    "setup",
                    job(get_runtime(request.runtime).install_argv(packages), files=files),
                    "Package install failed",
                )
            )
            files = {}
        for script in (image_setup, request.setup_script):
            if script:
                setup_files = {**files, SETUP_FILE: script.encode()}
                steps.append(Step("setup", job(["bash", SETUP_FILE], files=setup_files), "Setup script failed"))
                files = {}
        warm_argv = None
        kernel = spec.kernel if self.options.stateful and request.cmd is None else None
        if request.cmd is not None:
            argv = ["bash", "-c", request.cmd]
        else:
            path = code_file(spec, request.file_extension, request.file_name)
            files[path] = (request.code or "").encode()
            argv = [*spec.argv(path), *request.args]
            warm_argv = spec.warm_argv(path, env) if not request.args else None  # the warm paths take no args
        interactive = terminal is not None  # a new process on the terminal: no zygote, no warm start
        if kernel is not None:  # the session's interpreter runs the file: no zygote, no warm start
            # Its working directory persists between runs; `workdir` moves it.
            cell = {**kernel.spec(), "cwd": resolve_workdir(request.workdir) if request.workdir else None}
            return [*steps, Step("code", job(argv, files=files, kernel=cell, prestart=False))]
        code = job(
            argv,
            env={"TERM": TERMINAL_TYPE, **env} if interactive else env,
            cwd=resolve_workdir(request.workdir),
            files=files,
            stdin=_bytes(request.stdin) if request.stdin is not None else None,
            output_paths=list(request.output_paths),
            python_file=argv[-1]
            if spec.name == "python" and request.cmd is None and not request.args and not interactive
            else None,
            warm_argv=None if interactive else warm_argv,
            terminal=terminal,
            # A session runs its next execution on this uid; a pool's scrub starts it for the next one.
            prestart=self.options.mode == "persistent",
        )
        steps.append(Step("code", code))
        return steps

    # --- running ----------------------------------------------------------------------------------
    async def _observed(
        self,
        request: ExecutionRequest,
        execution_id: str,
        caller: Caller | None,
        parent: tracing.Span,
        terminal: Terminal | None = None,
    ) -> AsyncGenerator[StreamEvent | Outcome, None]:
        """`_audited`, counted in the metrics, logged as one `execution` event and traced as one span
        (with a child span per phase), however the run ends."""
        tenant = caller.tenant_id if caller else None
        session = caller.session_id if caller else None
        span = tracing.start(
            "isol8.execution",
            parent,
            execution_id=execution_id,
            runtime=request.runtime,
            tenant=tenant,
            session=session,
        )
        started = time.monotonic()
        outcome: Outcome | None = None
        error: str | None = None
        try:
            async with contextlib.aclosing(self._audited(request, execution_id, caller, span, terminal)) as events:
                async for item in events:
                    if isinstance(item, Outcome):
                        outcome = item
                    elif item.entry is not None:
                        metrics.record_network(item.entry)
                    yield item
        except BaseException as exc:
            abandoned = isinstance(exc, (GeneratorExit, asyncio.CancelledError))
            error = ABANDONED if abandoned else str(exc) or type(exc).__name__
            raise
        finally:
            seconds = time.monotonic() - started
            if outcome is not None and error is None:
                result = metrics.outcome_of(
                    0 if outcome.failed is None and outcome.exit_code == 0 else 1, outcome.timed_out, outcome.oom_killed
                )
                error = outcome.failed or outcome.error
            else:
                result = "error"
            metrics.record_execution(request.runtime, result, seconds)
            span.set(outcome=result, exit_code=outcome.exit_code if outcome else None)
            if error:
                span.fail(error)
            span.end()
            log.info(
                "execution %s %s: %s in %.0f ms",
                execution_id,
                request.runtime,
                result,
                seconds * 1000,
                extra={
                    "event": "execution",
                    "execution_id": execution_id,
                    "tenant": tenant,
                    "session": session,
                    "runtime": request.runtime,
                    "outcome": result,
                    "duration_ms": round(seconds * 1000),
                },
            )

    async def _audited(
        self,
        request: ExecutionRequest,
        execution_id: str,
        caller: Caller | None,
        span: tracing.Span,
        terminal: Terminal | None = None,
    ) -> AsyncGenerator[StreamEvent | Outcome, None]:
        """`_events`, recorded in the audit log however the run ends (refused, failed, abandoned).
        Without an audit log nothing is built for it: this is every execution's path."""
        if not self._audit.enabled:
            async with contextlib.aclosing(self._events(await self._fetched(request), span, terminal)) as events:
                async for item in events:
                    yield item
            return
        record = new_record(request, execution_id, caller)
        keep_output = self._audit.options.include_output
        text: dict[str, list[str]] = {"stdout": [], "stderr": []}
        blocked: list[SecurityEvent] = []
        started = time.monotonic()
        ended = False
        try:
            if request.code_url is not None:
                request = await self._fetched(request)
                code = request.code or ""
                record.code, record.code_hash = code, hashlib.sha256(code.encode()).hexdigest()
            async with contextlib.aclosing(self._events(request, span, terminal)) as events:
                async for item in events:
                    if isinstance(item, Outcome):
                        _close_record(record, item)
                        ended = True
                    elif item.entry is not None and item.entry.action == "BLOCK":
                        blocked.append(_blocked(item.entry))
                    elif keep_output and item.type in text:
                        text[item.type].append(item.data)
                    yield item
        except BaseException as exc:
            if not ended:
                record.duration_ms = round((time.monotonic() - started) * 1000)
                abandoned = isinstance(exc, (GeneratorExit, asyncio.CancelledError))
                record.error = ABANDONED if abandoned else str(exc) or type(exc).__name__
            raise
        finally:
            record.security_events = blocked or None
            if keep_output:
                record.stdout, record.stderr = "".join(text["stdout"]), "".join(text["stderr"])
            secrets = [*self.options.secrets.values(), *request.secrets.values(), *self._session_secrets]
            self._audit.record(record, secrets)

    async def _fetched(self, request: ExecutionRequest) -> ExecutionRequest:
        """A `code_url` request with its code fetched here, on the host, before any container."""
        if request.code_url is None:
            return request
        code = await fetch_code(request, self._options_for(request).remote_code)
        return request.model_copy(update={"code": code})

    async def _events(
        self, request: ExecutionRequest, span: tracing.Span, terminal: Terminal | None = None
    ) -> AsyncGenerator[StreamEvent | Outcome, None]:
        """Masked, decoded output events of every step, then the Outcome of the last one run."""
        options = self._options_for(request)
        spec = get_runtime(request.runtime)
        packages = validate_packages(request.install_packages)
        if self.options.mode == "persistent":
            self._check_session_runtime(spec.name)
            self._check_session_limits(request)
        if self.options.stateful and request.cmd is None:
            _check_stateful(request, spec.name, spec.kernel is not None, terminal is not None)
            packages = [p for p in packages if p not in self._installed]
        image, packages, image_setup = await asyncio.to_thread(self._image_for, spec.name, packages)
        log.debug("run: runtime %s, mode %s, image %s", spec.name, self.options.mode, image)
        if packages:
            spec.install_argv(packages)  # refuses runtimes that cannot install, before any container
            if options.network == "none":
                raise Isol8Error(
                    'Installing packages needs network access: use network "filtered" with the registry '
                    'hosts allowed (e.g. `--net filtered`), or "host".'
                )
        if self.options.mode == "persistent" and self._session is not None:
            image_setup = None  # ran when the session's container started
        steps = self._steps(request, options, packages, image_setup, terminal)
        secrets = [*self.options.secrets.values(), *request.secrets.values()]
        if self.options.mode == "persistent":  # a later run may print an earlier secret from a file
            self._session_secrets.update(secrets)
            secrets = sorted(self._session_secrets)
        span.set(image=image)
        async with self._sandbox(options, image, spec.name, span) as sandbox:
            # One budget for every step, counted from when the sandbox is ready.
            deadline = time.monotonic() + (request.timeout_ms or options.timeout_ms) / 1000
            for step in steps:
                step.job.timeout_ms = max(1, round((deadline - time.monotonic()) * 1000))
                outcome = Outcome(exit_code=1)
                name = "install" if step.failure == "Package install failed" else step.phase
                phase_span = span.child(f"isol8.{name}", files=len(step.job.files))
                with phase_span:
                    events = self._step_events(sandbox, step, options, secrets)
                    async with contextlib.aclosing(events):
                        async for item in events:
                            if isinstance(item, Outcome):
                                outcome = item
                                phase_span.set(exit_code=item.exit_code, timed_out=item.timed_out)
                            else:
                                yield item
                if step.phase == "setup" and (outcome.exit_code != 0 or outcome.timed_out or outcome.oom_killed):
                    if not (outcome.timed_out or outcome.oom_killed):
                        outcome.failed = step.failure
                    yield outcome
                    return
                if step.failure == "Package install failed":
                    self._installed.update(packages)
                if step.phase == "code":
                    yield outcome

    async def _step_events(
        self, sandbox: Sandbox, step: Step, options: Isol8Options, secrets: list[str]
    ) -> AsyncGenerator[StreamEvent | Outcome, None]:
        """One job's output, masked and decoded, with the truncation markers; then its Outcome."""
        streams = {"stdout": StreamText(secrets), "stderr": StreamText(secrets)}
        log.debug(
            "%s job to %s: %s, files %s", step.phase, sandbox.container_id[:12], step.job.argv[0], [*step.job.files]
        )
        masker = Masker(secrets)
        async with contextlib.aclosing(self._run_job(sandbox, step.job)) as outputs:
            async for item in outputs:
                if item.entry is not None:
                    entry = NetworkLogEntry.model_validate(_masked(item.entry, masker))
                    yield StreamEvent(type="network", data=entry.host, phase=step.phase, entry=entry)
                    continue
                if item.result is not None:
                    result = _rich_result(item.result, masker)
                    if result is not None:
                        yield StreamEvent(type="result", data=result.text(), phase=step.phase, result=result)
                    continue
                if item.exit is None:
                    data = streams[item.stream].feed(item.data)
                    if data:
                        yield StreamEvent(type=item.stream, data=data, phase=step.phase)
                    continue
                if item.file_errors:  # the run is over and its exit read: the sandbox is in step
                    raise item.file_errors[0]
                outcome = _outcome(item, options.max_output_size, step.phase)
                log.debug("%s job exited %d in %.0f ms", step.phase, outcome.exit_code, outcome.duration_ms)
                for name, stream in streams.items():
                    cut = getattr(outcome, f"{name}_truncated")
                    tail = stream.finish(cut)
                    if cut:
                        tail += truncation_marker(item.exit[f"{name}_bytes"], options.max_output_size)
                    if tail:
                        yield StreamEvent(type=name, data=tail, phase=step.phase)
                if outcome.error:
                    outcome.error = streams["stderr"].masker.mask_text(outcome.error)
                yield outcome

    async def _run_job(self, sandbox: Sandbox, job: Job) -> AsyncGenerator[Output, None]:
        started = time.monotonic()
        grace = BACKSTOP_GRACE_S + (job.kernel or {}).get("grace_ms", 0) / 1000  # an interrupted cell's too
        try:
            async with (
                asyncio.timeout(job.timeout_ms / 1000 + grace),
                contextlib.aclosing(sandbox.run(job)) as outputs,
            ):
                async for item in outputs:
                    if item.exit is not None:
                        item.exit["container_id"] = sandbox.container_id
                    yield item
        except (TimeoutError, SandboxError) as exc:
            lost = await self._lost(sandbox, exc, started)
            if job.kernel is not None and lost.exit is not None:
                lost.exit["kernel"] = "lost"  # the container went, and its interpreter with it
            yield lost
        except (GeneratorExit, asyncio.CancelledError):
            # The consumer left mid-run: stop the job so the sandbox is free (or goes) at once.
            await asyncio.shield(self._abort(sandbox))
            raise

    @contextlib.asynccontextmanager
    async def _sandbox(
        self, options: Isol8Options, image: str, runtime: str, span: tracing.Span
    ) -> AsyncIterator[Sandbox]:
        """The execution's sandbox, once a slot (or the session) is free: phases `queue`, `sandbox`."""
        queue = span.child("isol8.queue")
        queued = time.monotonic()
        if self.options.mode == "persistent":
            with queue:  # ended once the session is free; on the way out if the wait failed
                async with self._session_lock:
                    metrics.QUEUE_SECONDS.labels(runtime).observe(time.monotonic() - queued)
                    queue.end()
                    yield await self._session_sandbox(options, image, runtime, span)
            return
        with queue:
            async with self._slots:
                metrics.QUEUE_SECONDS.labels(runtime).observe(time.monotonic() - queued)
                queue.end()
                config = container_config(options, image, runtime)
                with span.child("isol8.sandbox", image=image):
                    if options.persist:
                        sandbox = await Sandbox.launch(self.docker, config)
                    else:
                        sandbox = await self._pool.acquire(config)
                self._live.add(sandbox)
                try:
                    yield sandbox
                finally:
                    self._release(sandbox, sandbox.reusable)

    async def _session_sandbox(self, options: Isol8Options, image: str, runtime: str, span: tracing.Span) -> Sandbox:
        """The session's container (started if there is none yet); the caller holds the session lock."""
        if self._session is not None and not self._session.alive:
            self._forget_session(
                "The persistent container stopped (the Docker daemon restarted, or it was removed); "
                "its files are gone. Run again to start a new one."
            )
        self._tell_session_notice()
        if self._session is None:
            with span.child("isol8.sandbox", image=image):
                self._session = await self._launch(options, image, runtime)
            self._session_runtime = runtime
        return self._session

    async def _file_session(self) -> Sandbox:
        if self.options.mode != "persistent" or (self._session is None and self._session_runtime is None):
            raise Isol8Error("No active container. Call execute() first in persistent mode.")
        self._tell_session_notice()
        if self._session is None:
            runtime = self._session_runtime or "python"
            self._session = await self._launch(self.options, get_runtime(runtime).image, runtime)
        return self._session

    def _check_session_runtime(self, runtime: str) -> None:
        current = self._session_runtime
        if current is not None and current != runtime:
            raise Isol8Error(
                f'Cannot switch runtime from "{current}" to "{runtime}". Each persistent container supports '
                "a single runtime. Create a new engine for a different runtime."
            )

    def _check_session_limits(self, request: ExecutionRequest) -> None:
        changed = [
            name for name in CONTAINER_LIMITS if getattr(request, name) not in (None, getattr(self.options, name))
        ]
        if changed and self._session is not None:
            raise Isol8Error(
                f"{', '.join(changed)} cannot change once the persistent container runs. "
                "Set it on the engine, or create a new engine."
            )

    @contextlib.asynccontextmanager
    async def _session_guard(self, sandbox: Sandbox) -> AsyncIterator[None]:
        """A file operation's sandbox that can no longer be trusted (its deadline passed, its agent
        broke the protocol) is replaced; the error raised already says the files are gone. A
        container killed at its memory limit says so (OutOfMemory)."""
        try:
            yield
        except SandboxLost as exc:
            state = await asyncio.to_thread(self._container_state, sandbox.container_id)
            self._forget_session(None)
            if state.get("OOMKilled"):
                raise OutOfMemory(
                    f"The session's container was killed at its memory limit ({self.options.memory_limit}); "
                    "its files are gone. Raise memoryLimit and run again."
                ) from exc
            raise
        except Isol8Error:
            if not sandbox.reusable:
                self._forget_session(None)
            raise
        except BaseException:  # cancelled mid-operation: settle the stream before anyone else uses it
            await asyncio.shield(self._abort(sandbox))
            raise

    def _forget_session(self, notice: str | None) -> None:
        """Drop the session's sandbox; the next call starts a new one, first telling `notice`."""
        if self._session is not None:
            self._release(self._session, reusable=False)
        self._session = None
        self._session_notice = notice

    def _tell_session_notice(self) -> None:
        notice, self._session_notice = self._session_notice, None
        if notice:
            raise SessionLost(notice)

    async def _lost(self, sandbox: Sandbox, exc: Exception, started: float) -> Output:
        """The agent went silent (wedged past the backstop) or its container died."""
        if sandbox is self._session:
            self._session = None  # its state is gone (the report says why); the next call starts anew
        self._release(sandbox, reusable=False)
        state = await asyncio.to_thread(self._container_state, sandbox.container_id)
        report: dict[str, Any] = {
            "code": 137,
            "duration_ms": (time.monotonic() - started) * 1000,
            "container_id": sandbox.container_id,
        }
        if state.get("OOMKilled"):
            report["oom_killed"] = True
        elif isinstance(exc, TimeoutError):
            report["timed_out"] = True
            report["error"] = AGENT_SILENT
        else:
            raise exc
        log.debug("sandbox %s lost: %s", sandbox.container_id[:12], report)
        return Output("exit", exit=report)

    def _container_state(self, container_id: str) -> dict[str, Any]:
        """Docker's state of a container, or {} when the daemon itself is down or restarting."""
        try:
            return self.docker.state(container_id)
        except Exception:
            return {}

    async def _abort(self, sandbox: Sandbox) -> None:
        """A consumer left mid-request: a pooled sandbox goes; a session's is brought back in step
        (its job killed, its stream read to the request's end), or replaced, and the next call says so."""
        if sandbox is not self._session:
            self._release(sandbox, reusable=False)
            return
        try:
            await sandbox.recover()
        except SandboxError:
            self._forget_session(
                "The session's container did not recover from an abandoned run and was replaced; "
                "its files are gone. Run again to start a new one."
            )

    async def _launch(self, options: Isol8Options, image: str, runtime: str) -> Sandbox:
        """A container for a persistent session (pool containers come from the pool)."""
        sandbox = await Sandbox.launch(self.docker, container_config(options, image, runtime))
        self._live.add(sandbox)
        return sandbox

    def _release(self, sandbox: Sandbox, reusable: bool) -> None:
        """Hand a sandbox back: to the pool, to a debugging user (`persist`), or to removal."""
        if sandbox not in self._live:
            return
        self._live.discard(sandbox)
        log.debug(
            "sandbox %s released (persist: %s, pooled: %s)",
            sandbox.container_id[:12],
            self.options.persist,
            bool(sandbox.pool_key),
        )
        if self.options.persist:
            sandbox.detach()
            self.persisted.append(sandbox.container_id)
        elif sandbox.pool_key:
            self._pool.release(sandbox, reusable)
        else:
            task = asyncio.get_running_loop().create_task(sandbox.destroy())
            self._cleanup.add(task)
            task.add_done_callback(self._cleanup.discard)


def _close_record(record: AuditRecord, outcome: Outcome) -> None:
    """The audit record of a run that reached its Outcome."""
    record.exit_code = outcome.exit_code
    record.phase = outcome.phase
    record.duration_ms = round(outcome.duration_ms)
    record.timed_out = outcome.timed_out
    record.oom_killed = outcome.oom_killed
    record.container_id = outcome.container_id
    record.resource_usage = outcome.usage
    record.error = f"{outcome.failed} (exit code {outcome.exit_code})" if outcome.failed else outcome.error


def _closing_events(outcome: Outcome) -> list[StreamEvent]:
    """An `error` event when the run ended abnormally, then the one `exit` event."""
    message = None
    if outcome.timed_out:
        message = "SETUP SCRIPT TIMED OUT" if outcome.phase == "setup" else "EXECUTION TIMED OUT"
        message += f" ({outcome.error})" if outcome.error else ""
    elif outcome.oom_killed:
        message = "OUT OF MEMORY"
    elif outcome.failed:
        message = f"{outcome.failed} (exit code {outcome.exit_code})"
    elif outcome.error:
        message = outcome.error
    if outcome.state == "lost":
        message = f"{message}; {state_lost(outcome)}" if message else state_lost(outcome)
    events = [StreamEvent(type="error", data=message, phase=outcome.phase)] if message else []
    truncated = outcome.stdout_truncated or outcome.stderr_truncated
    exit_event = StreamEvent(
        type="exit",
        data=str(outcome.exit_code),
        phase=outcome.phase,
        truncated=truncated,
        timed_out=outcome.timed_out,
        oom_killed=outcome.oom_killed,
        state=outcome.state,
    )
    events.append(exit_event)
    return events


def _blocked(entry: NetworkLogEntry) -> SecurityEvent:
    return SecurityEvent(
        type="network_blocked",
        message=f"Security event: network_blocked ({entry.method} {entry.host}: {entry.rule})",
        details={"method": entry.method, "host": entry.host, "port": entry.port, "rule": entry.rule},
        timestamp=entry.timestamp,
    )


def _masked(entry: dict[str, Any], masker: Masker) -> dict[str, Any]:
    """A network log entry with every secret masked in every text field (host, path, headers)."""

    def masked(value: Any) -> Any:
        if isinstance(value, str):
            return masker.mask_text(value)
        return [masked(item) for item in value] if isinstance(value, list) else value

    return {key: masked(value) for key, value in entry.items()}


def _bytes(content: str | bytes) -> bytes:
    return content.encode() if isinstance(content, str) else content


def _sandbox_path(path: str) -> str:
    try:
        return sandbox_path(path)
    except ValueError as exc:
        raise Isol8Error(str(exc)) from None


def _outcome(item: Output, limit: int, phase: Phase) -> Outcome:
    report = item.exit or {}
    usage = ResourceUsage(
        cpu_time_ms=report.get("cpu_time_ms"),
        peak_memory_bytes=report.get("peak_memory_bytes"),
        network_bytes_in=report.get("network_bytes_in"),
        network_bytes_out=report.get("network_bytes_out"),
    )
    return Outcome(
        exit_code=report.get("code", 1),
        phase=phase,
        duration_ms=report.get("duration_ms", 0.0),
        timed_out=bool(report.get("timed_out")),
        oom_killed=bool(report.get("oom_killed")) and not report.get("timed_out"),
        stdout_truncated=report.get("stdout_bytes", 0) > limit,
        stderr_truncated=report.get("stderr_bytes", 0) > limit,
        error=report.get("error"),
        container_id=report.get("container_id"),
        files=item.files,
        usage=usage,
        state=report.get("kernel"),
        results_dropped=int(report.get("results_dropped") or 0),
    )


def _end_markers(outcome: Outcome, request: ExecutionRequest, options: Isol8Options) -> list[str]:
    """The lines a buffered result's stderr ends with, saying why the run ended abnormally (and
    what became of a stateful session's interpreter and results)."""
    markers = [*_state_markers(outcome, options)]
    if outcome.timed_out:
        return [TIMEOUT_MARKER, *([outcome.error] if outcome.error else []), *markers]
    if outcome.oom_killed:
        limit = request.memory_limit or options.memory_limit
        return [f"--- OUT OF MEMORY (limit: {limit}) ---", *markers]
    if outcome.error:
        return [outcome.error, *markers]
    return markers


def _state_markers(outcome: Outcome, options: Isol8Options) -> list[str]:
    markers = []
    if outcome.results_dropped:
        markers.append(
            f"--- {outcome.results_dropped} RESULT(S) LEFT OUT: the run's results passed maxFileSize "
            f"({options.max_file_size} bytes); display less, or raise maxFileSize ---"
        )
    if outcome.state == "lost":
        markers.append(f"--- {state_lost(outcome)} ---")
    return markers


def state_lost(outcome: Outcome) -> str:
    """Why a stateful session's interpreter is gone, and what that means, in one line."""
    if outcome.oom_killed:
        why = "the interpreter was killed at the memory limit"
    elif outcome.timed_out:
        why = "the run reached its timeout and the interpreter was killed with it"
    elif outcome.error:
        why = "the interpreter could not run the code"
    else:
        why = f"the interpreter ended (exit code {outcome.exit_code})"
    return (
        f"INTERPRETER STATE LOST: {why}; its variables are gone (files in /sandbox remain). "
        "The next run starts a fresh interpreter"
    )


def _rich_result(event: dict[str, Any], masker: Masker) -> RichResult | None:
    """A displayed value from the interpreter (the user's own process: anything it sends that is not
    a bundle of known types is left out), its text types masked like output."""
    data = event.get("data")
    if not isinstance(data, dict):
        return None
    known = {mime: value for mime, value in data.items() if mime in MIME_TYPES and isinstance(value, str)}
    masked = {mime: value if mime in BINARY_MIME_TYPES else masker.mask_text(value) for mime, value in known.items()}
    if not masked:
        return None
    return RichResult.model_validate({"data": masked, "is_main_result": bool(event.get("main"))})


def _check_stateful(request: ExecutionRequest, runtime: str, has_kernel: bool, interactive: bool) -> None:
    """What a stateful session's interpreter cannot take, refused before any container."""
    if not has_kernel:
        raise Isol8Error(
            f'A stateful session runs python, node or bash; "{runtime}" runs each execution as a new process. '
            "Use a session without stateful for it."
        )
    if request.stdin is not None or interactive:
        raise Isol8Error(
            "A stateful session's interpreter takes no stdin and no terminal: pass the data in files, "
            "or run it with cmd."
        )
    if request.args:
        raise Isol8Error("A stateful session's code runs in its interpreter, which takes no args: set variables.")


def cleanup(images: bool = False) -> CleanupReport:
    """Remove every container labelled isol8.managed=true (and isol8's images with `images`)."""
    docker = DockerClient()
    docker.ping()
    report = CleanupReport()
    for container in docker.managed_containers():
        try:
            docker.remove(container["Id"])
            report.containers_removed += 1
        except Exception as exc:
            report.containers_failed += 1
            report.errors.append(f"Failed to remove container {container['Id'][:12]}: {exc}")
    if images:
        # Newest first: a child image (runtime layer) always comes after its parent (the base).
        managed = sorted(docker.images(f"{MANAGED_LABEL}=true"), key=lambda i: i["Created"], reverse=True)
        for image in managed:
            try:
                if docker.remove_image(image["Id"]):
                    report.images_removed += 1
            except Exception as exc:
                report.images_failed += 1
                report.errors.append(f"Failed to remove image {image['Id'][7:19]}: {exc}")
    return report
