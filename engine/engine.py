"""DockerIsol8: the in-process engine. Validates a request, gets a sandbox, runs, reports."""

from __future__ import annotations

import asyncio
import codecs
import posixpath
import time
from collections.abc import AsyncIterator
from typing import Any, Self

from engine.docker import DockerClient
from engine.errors import Isol8Error, SandboxError
from engine.hardening import MANAGED_LABEL, container_config
from engine.models import CleanupReport, ExecutionRequest, ExecutionResult, Isol8Options, StreamEvent
from engine.runtimes import code_file, get_runtime
from engine.sandbox import Job, Output, Sandbox

# The host-side backstop: the agent enforces the timeout; the engine kills the container if the
# agent has not reported this long after it.
BACKSTOP_GRACE_S = 5.0
TIMEOUT_MARKER = "--- EXECUTION TIMED OUT ---"


def resolve_workdir(workdir: str | None) -> str:
    if not workdir:
        return "/sandbox"
    resolved = posixpath.normpath(posixpath.join("/sandbox", workdir))
    if resolved != "/sandbox" and not resolved.startswith("/sandbox/"):
        raise Isol8Error("Working directory must be inside /sandbox")
    return resolved


def truncation_marker(total: int, limit: int) -> str:
    return f"\n--- OUTPUT TRUNCATED ({total} bytes, limit: {limit}) ---\n"


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
        """Run to completion; output is returned exactly as produced (capped, never trimmed)."""
        out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        report: dict[str, Any] = {}
        runtime = request.runtime
        container_id = None
        async for item in self._run(request):
            if item.stream == "exit":
                report = item.exit or {}
                container_id = report.get("container_id")
            else:
                out[item.stream] += item.data
        stdout = out["stdout"].decode(errors="replace")
        stderr = out["stderr"].decode(errors="replace")
        limit = self.options.max_output_size
        truncated = False
        if report.get("stdout_bytes", 0) > limit:
            stdout += truncation_marker(report["stdout_bytes"], limit)
            truncated = True
        if report.get("stderr_bytes", 0) > limit:
            stderr += truncation_marker(report["stderr_bytes"], limit)
            truncated = True
        if report.get("timed_out"):
            stderr += ("" if not stderr or stderr.endswith("\n") else "\n") + TIMEOUT_MARKER
        return ExecutionResult(
            stdout=stdout,
            stderr=stderr,
            exit_code=report.get("code", 1),
            duration_ms=round(report.get("duration_ms", 0)),
            timed_out=bool(report.get("timed_out")),
            truncated=truncated,
            runtime=runtime,
            container_id=container_id,
        )

    async def execute_stream(self, request: ExecutionRequest) -> AsyncIterator[StreamEvent]:
        """Yield stdout/stderr events as they happen, then exactly one exit event."""
        decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in ("stdout", "stderr")}
        limit = self.options.max_output_size
        async for item in self._run(request):
            if item.stream != "exit":
                text = decoders[item.stream].decode(item.data)
                if text:
                    yield StreamEvent(type=item.stream, data=text, phase="code")
                continue
            report = item.exit or {}
            for stream in ("stdout", "stderr"):
                tail = decoders[stream].decode(b"", final=True)
                if report.get(f"{stream}_bytes", 0) > limit:
                    tail += truncation_marker(report[f"{stream}_bytes"], limit)
                if tail:
                    yield StreamEvent(type=stream, data=tail, phase="code")
            if report.get("timed_out"):
                yield StreamEvent(type="error", data="EXECUTION TIMED OUT", phase="code")
            elif report.get("error"):
                yield StreamEvent(type="error", data=report["error"], phase="code")
            yield StreamEvent(type="exit", data=str(report.get("code", 1)), phase="code")

    # --- internals --------------------------------------------------------------------------------
    def _job(self, request: ExecutionRequest) -> Job:
        spec = get_runtime(request.runtime)
        files: dict[str, bytes] = {}
        if request.cmd is not None:
            argv = ["bash", "-c", request.cmd]
        else:
            path = code_file(spec, request.file_extension)
            files[path] = (request.code or "").encode()
            argv = spec.argv(path)
        return Job(
            argv=argv,
            env=dict(request.env),
            cwd=resolve_workdir(request.workdir),
            timeout_ms=request.timeout_ms or self.options.timeout_ms,
            max_output=self.options.max_output_size,
            files=files,
            stdin=request.stdin.encode() if request.stdin is not None else None,
        )

    async def _run(self, request: ExecutionRequest) -> AsyncIterator[Output]:
        job = self._job(request)
        image = self.options.image or get_runtime(request.runtime).image
        async with self._slots:
            sandbox = await self._launch(image, request.runtime)
            started = time.monotonic()
            try:
                async with asyncio.timeout(job.timeout_ms / 1000 + BACKSTOP_GRACE_S):
                    async for item in sandbox.run(job):
                        if item.exit is not None:
                            item.exit["container_id"] = sandbox.container_id
                        yield item
            except TimeoutError:
                # The agent did not report in time (wedged or killed): the container goes.
                yield Output(
                    "exit",
                    exit={
                        "code": 137,
                        "timed_out": True,
                        "duration_ms": (time.monotonic() - started) * 1000,
                        "container_id": sandbox.container_id,
                    },
                )
            except SandboxError as exc:
                state = await asyncio.to_thread(self.docker.state, sandbox.container_id)
                if state.get("OOMKilled"):
                    raise SandboxError(
                        "The sandbox ran out of memory and was killed. Raise --memory."
                    ) from exc
                raise
            finally:
                self._dispose(sandbox)

    async def _launch(self, image: str, runtime: str) -> Sandbox:
        config = container_config(self.options, image, runtime)
        sandbox = await Sandbox.launch(self.docker, config)
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
