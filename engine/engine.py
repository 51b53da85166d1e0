"""DockerIsol8: the in-process engine. Validates a request, gets a sandbox, runs, reports."""

from __future__ import annotations

import asyncio
import logging
import posixpath
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Self

from engine.docker import DockerClient
from engine.errors import Isol8Error, SandboxError
from engine.hardening import MANAGED_LABEL, container_config
from engine.models import (
    CleanupReport,
    ExecutionRequest,
    ExecutionResult,
    Isol8Options,
    ResourceUsage,
    StreamEvent,
)
from engine.output import TIMEOUT_MARKER, StreamText, truncation_marker
from engine.runtimes import code_file, get_runtime
from engine.sandbox import Job, Output, Sandbox

log = logging.getLogger("isol8.engine")

# The host-side backstop: the agent enforces the timeout; the engine kills the container if the
# agent has not reported this long after it.
BACKSTOP_GRACE_S = 5.0
# Request fields that override the engine's options for one execution.
LIMIT_FIELDS = ("memory_limit", "cpu_limit", "pids_limit", "sandbox_size", "tmp_size", "max_output_size")


def resolve_workdir(workdir: str | None) -> str:
    if not workdir:
        return "/sandbox"
    resolved = posixpath.normpath(posixpath.join("/sandbox", workdir))
    if resolved != "/sandbox" and not resolved.startswith("/sandbox/"):
        raise Isol8Error("Working directory must be inside /sandbox")
    return resolved


@dataclass
class Outcome:
    """How a run ended; `execute` turns it into an ExecutionResult, streams into an exit event."""

    exit_code: int
    duration_ms: float = 0.0
    timed_out: bool = False
    oom_killed: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    error: str | None = None
    container_id: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    usage: ResourceUsage | None = None


class DockerIsol8:
    """Runs code in hardened containers. Use as `async with DockerIsol8(...) as engine:`."""

    def __init__(self, options: Isol8Options | None = None, **kwargs: Any) -> None:
        self.options = options or Isol8Options(**kwargs)
        self.docker = DockerClient()
        self._slots = asyncio.Semaphore(self.options.max_concurrent)
        self._live: set[Sandbox] = set()
        self._cleanup: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await asyncio.to_thread(self.docker.ping)

    async def stop(self) -> None:
        """Remove every container this engine created; safe to call more than once."""
        for sandbox in list(self._live):
            self._dispose(sandbox)
        if self._cleanup:
            await asyncio.gather(*self._cleanup, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # --- public API -------------------------------------------------------------------------------
    async def execute(self, request: ExecutionRequest) -> ExecutionResult:
        """Run to completion; output is returned exactly as produced (capped and masked, never trimmed)."""
        text = {"stdout": [], "stderr": []}
        outcome = Outcome(exit_code=1)
        async for item in self._events(request):
            if isinstance(item, Outcome):
                outcome = item
            elif item.type in text:
                text[item.type].append(item.data)
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
            runtime=request.runtime,
            container_id=outcome.container_id,
            files=outcome.files if request.output_paths else None,
            resource_usage=outcome.usage,
        )

    async def execute_stream(self, request: ExecutionRequest) -> AsyncIterator[StreamEvent]:
        """Yield stdout/stderr events as they happen, then exactly one exit event.

        Leaving the loop early (break, cancellation) kills the run and removes its container.
        """
        async for item in self._events(request):
            if not isinstance(item, Outcome):
                yield item
                continue
            if item.timed_out:
                yield StreamEvent(type="error", data="EXECUTION TIMED OUT", phase="code")
            elif item.oom_killed:
                yield StreamEvent(type="error", data="OUT OF MEMORY", phase="code")
            elif item.error:
                yield StreamEvent(type="error", data=item.error, phase="code")
            truncated = item.stdout_truncated or item.stderr_truncated
            yield StreamEvent(type="exit", data=str(item.exit_code), phase="code", truncated=truncated)

    # --- internals --------------------------------------------------------------------------------
    def _options_for(self, request: ExecutionRequest) -> Isol8Options:
        overrides = {
            name: getattr(request, name) for name in LIMIT_FIELDS if getattr(request, name) is not None
        }
        return self.options.model_copy(update=overrides) if overrides else self.options

    def _job(self, request: ExecutionRequest, options: Isol8Options) -> Job:
        spec = get_runtime(request.runtime)
        files = {path: _bytes(content) for path, content in request.files.items()}
        if request.cmd is not None:
            argv = ["bash", "-c", request.cmd]
        else:
            path = code_file(spec, request.file_extension)
            files[path] = (request.code or "").encode()
            argv = spec.argv(path)
        return Job(
            argv=argv,
            env={**self.options.secrets, **request.secrets, **request.env},
            cwd=resolve_workdir(request.workdir),
            timeout_ms=request.timeout_ms or options.timeout_ms,
            max_output=options.max_output_size,
            files=files,
            stdin=_bytes(request.stdin) if request.stdin is not None else None,
            output_paths=list(request.output_paths),
        )

    async def _events(self, request: ExecutionRequest) -> AsyncIterator[StreamEvent | Outcome]:
        """Masked, decoded output events, then the Outcome (which carries the end markers)."""
        options = self._options_for(request)
        job = self._job(request, options)
        secrets = [*self.options.secrets.values(), *request.secrets.values()]
        streams = {"stdout": StreamText(secrets), "stderr": StreamText(secrets)}
        async for item in self._run(job, request.runtime, options):
            if item.exit is None:
                data = streams[item.stream].feed(item.data)
                if data:
                    yield StreamEvent(type=item.stream, data=data, phase="code")  # type: ignore[arg-type]
                continue
            outcome = _outcome(item, options.max_output_size)
            for name, stream in streams.items():
                cut = getattr(outcome, f"{name}_truncated")
                tail = stream.finish(cut)
                if cut:
                    tail += truncation_marker(item.exit[f"{name}_bytes"], options.max_output_size)
                if tail:
                    yield StreamEvent(type=name, data=tail, phase="code")  # type: ignore[arg-type]
            if outcome.error:
                outcome.error = streams["stderr"].masker.mask_text(outcome.error)
            yield outcome

    async def _run(self, job: Job, runtime: str, options: Isol8Options) -> AsyncIterator[Output]:
        image = options.image or get_runtime(runtime).image
        async with self._slots:
            sandbox = await self._launch(options, image, runtime)
            started = time.monotonic()
            try:
                async with asyncio.timeout(job.timeout_ms / 1000 + BACKSTOP_GRACE_S):
                    async for item in sandbox.run(job):
                        if item.exit is not None:
                            item.exit["container_id"] = sandbox.container_id
                        yield item
            except (TimeoutError, SandboxError) as exc:
                yield await self._lost(sandbox, exc, started)
            finally:
                self._dispose(sandbox)

    async def _lost(self, sandbox: Sandbox, exc: Exception, started: float) -> Output:
        """The agent went silent (wedged past the backstop) or its container died."""
        state = await asyncio.to_thread(self.docker.state, sandbox.container_id)
        report: dict[str, Any] = {
            "code": 137,
            "duration_ms": (time.monotonic() - started) * 1000,
            "container_id": sandbox.container_id,
        }
        if state.get("OOMKilled"):
            report["oom_killed"] = True
        elif isinstance(exc, TimeoutError):
            report["timed_out"] = True
        else:
            raise exc
        log.debug("sandbox %s lost: %s", sandbox.container_id[:12], report)
        return Output("exit", exit=report)

    async def _launch(self, options: Isol8Options, image: str, runtime: str) -> Sandbox:
        config = container_config(options, image, runtime)
        started = time.monotonic()
        sandbox = await Sandbox.launch(self.docker, config)
        log.debug(
            "sandbox %s ready in %.1f ms", sandbox.container_id[:12], (time.monotonic() - started) * 1000
        )
        self._live.add(sandbox)
        return sandbox

    def _dispose(self, sandbox: Sandbox) -> None:
        """Remove the container in the background; `stop()` waits for it."""
        if sandbox not in self._live:
            return
        self._live.discard(sandbox)
        task = asyncio.get_running_loop().create_task(sandbox.destroy())
        self._cleanup.add(task)
        task.add_done_callback(self._cleanup.discard)


def _bytes(content: str | bytes) -> bytes:
    return content.encode() if isinstance(content, str) else content


def _outcome(item: Output, limit: int) -> Outcome:
    report = item.exit or {}
    usage = ResourceUsage(
        cpu_time_ms=report.get("cpu_time_ms"),
        peak_memory_bytes=report.get("peak_memory_bytes"),
        network_bytes_in=report.get("network_bytes_in"),
        network_bytes_out=report.get("network_bytes_out"),
    )
    return Outcome(
        exit_code=report.get("code", 1),
        duration_ms=report.get("duration_ms", 0.0),
        timed_out=bool(report.get("timed_out")),
        oom_killed=bool(report.get("oom_killed")) and not report.get("timed_out"),
        stdout_truncated=report.get("stdout_bytes", 0) > limit,
        stderr_truncated=report.get("stderr_bytes", 0) > limit,
        error=report.get("error"),
        container_id=report.get("container_id"),
        files=item.files,
        usage=usage,
    )


def _end_markers(outcome: Outcome, request: ExecutionRequest, options: Isol8Options) -> list[str]:
    """The lines a buffered result's stderr ends with, saying why the run ended abnormally."""
    if outcome.timed_out:
        return [TIMEOUT_MARKER]
    if outcome.oom_killed:
        limit = request.memory_limit or options.memory_limit
        return [f"--- OUT OF MEMORY (limit: {limit}) ---"]
    if outcome.error:
        return [outcome.error]
    return []


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
