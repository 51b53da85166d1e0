"""The audit log: one JSON record per execution, streaming or not, however it ended.

Records are appended to `<logDir>/executions.log` with one locked `write` of the whole line on an
O_APPEND descriptor, so concurrent executions (in one process or several) never interleave, or
printed to stdout as `AUDIT_LOG: <json>`. Code and output are recorded only when asked, with every
secret of the request (and of the session) masked.

On the server, the caller's tenant and key travel with the call in a context variable
(`acting_for`): one engine serves many tenants, and the engine interface stays the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import Field

from engine.errors import ConfigError
from engine.models import AuditOptions, ExecutionRequest, Model, ResourceUsage, SecurityEvent
from engine.output import Masker

log = logging.getLogger("isol8.audit")

LOG_FILE = "executions.log"
STDOUT_PREFIX = "AUDIT_LOG: "
DAY_S = 86_400


@dataclass(frozen=True)
class Caller:
    """Who asked for an execution, when a server runs it."""

    tenant_id: str
    key_id: str
    session_id: str | None = None  # the server session it runs in (the logs and traces show it)


_CALLER: ContextVar[Caller | None] = ContextVar("isol8_audit_caller", default=None)


@contextlib.contextmanager
def acting_for(tenant_id: str, key_id: str, session_id: str | None = None) -> Iterator[None]:
    """Executions started (execute called, execute_stream's generator created) inside this block are
    recorded as the given tenant's and key's."""
    token = _CALLER.set(Caller(tenant_id, key_id, session_id))
    try:
        yield
    finally:
        _CALLER.reset(token)


def current_caller() -> Caller | None:
    return _CALLER.get()


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditRecord(Model):
    """One execution. `exit_code` is None when no code ran to an exit (refused, or the sandbox
    failed); `error` then says why."""

    execution_id: str
    user_id: str = ""
    timestamp: str  # when the execution started
    runtime: str
    code_hash: str | None = None  # SHA-256 of code or cmd; for codeUrl, the codeHash it had to match
    code_url: str | None = None
    container_id: str | None = None
    exit_code: int | None = None
    phase: str | None = None  # "setup" when a setup step ended the run
    duration_ms: int = 0
    timed_out: bool = False
    oom_killed: bool = False
    error: str | None = None
    resource_usage: ResourceUsage | None = None
    security_events: list[SecurityEvent] | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    tenant_id: str | None = None
    key_id: str | None = None
    code: str | None = None
    setup_script: str | None = None
    stdout: str | None = None
    stderr: str | None = None


def new_record(request: ExecutionRequest, execution_id: str, caller: Caller | None) -> AuditRecord:
    source = request.code if request.code is not None else request.cmd
    if request.code_url is not None:  # fetched later: the hash it must match, when one was given
        code_hash = request.code_hash.strip().lower() if request.code_hash else None
    else:
        code_hash = hashlib.sha256((source or "").encode()).hexdigest()
    return AuditRecord(
        execution_id=execution_id,
        user_id=request.metadata.get("userId", ""),
        timestamp=iso_now(),
        runtime=request.runtime,
        code_hash=code_hash,
        code_url=request.code_url,
        code=source,
        setup_script=request.setup_script,
        metadata=dict(request.metadata),
        tenant_id=caller.tenant_id if caller else None,
        key_id=caller.key_id if caller else None,
    )


class AuditLogger:
    """Writes records when `options.enabled`; starting one creates the directory and applies
    `retentionDays` to it."""

    def __init__(self, options: AuditOptions) -> None:
        self.options = options
        self.path = Path(options.log_dir or os.environ.get("ISOL8_AUDIT_DIR") or ".isol8_audit") / LOG_FILE
        if options.enabled and options.destination != "stdout":
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"Cannot create the audit log directory {self.path.parent} ({exc.strerror or exc}). "
                    "Set audit.logDir to a writable directory."
                ) from exc
            if options.retention_days > 0:
                self._remove_old(options.retention_days)

    @property
    def enabled(self) -> bool:
        return self.options.enabled

    def record(self, record: AuditRecord, secrets: list[str]) -> None:
        """Write `record` (code and output kept only if asked, masked); failures are logged, never raised."""
        if not self.enabled:
            return
        masker = Masker(secrets)
        dropped = {
            "code": not self.options.include_code,
            "setup_script": not self.options.include_code,
            "stdout": not self.options.include_output,
            "stderr": not self.options.include_output,
            "resource_usage": not self.options.track_resources,
        }
        update: dict[str, object] = {name: None for name, drop in dropped.items() if drop}
        for name in ("code", "code_url", "setup_script", "stdout", "stderr", "error"):
            value = getattr(record, name)
            if name not in update and value is not None:
                update[name] = masker.mask_text(value)
        update["metadata"] = {key: masker.mask_text(value) for key, value in record.metadata.items()}
        line = record.model_copy(update=update).to_json() + "\n"
        try:
            if self.options.destination == "stdout":
                sys.stdout.write(STDOUT_PREFIX + line)
                sys.stdout.flush()
            else:
                self._append(line.encode())
        except OSError as exc:
            log.error("audit record %s not written to %s: %s", record.execution_id, self.path, exc)
            return
        if self.options.post_log_script:
            self._run_post_log(self.options.post_log_script)

    def _append(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # other processes' writers wait: one whole line at a time
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)  # also releases the lock

    def _run_post_log(self, script: str) -> None:
        """`[script, path]`, no shell, detached, stdio to /dev/null; its failure is logged."""
        try:
            proc = subprocess.Popen(
                [script, str(self.path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            log.error("audit postLogScript %s could not start: %s", script, exc)
            return
        threading.Thread(target=_reap, args=(proc, script), daemon=True).start()

    def _remove_old(self, days: int) -> None:
        cutoff = time.time() - days * DAY_S
        removed = 0
        for path in [*self.path.parent.glob("*.log"), *self.path.parent.glob("*.jsonl")]:
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        if removed:
            log.info("Audit log cleanup: removed %d old log files", removed)


def _reap(proc: subprocess.Popen[bytes], script: str) -> None:
    if proc.wait():
        log.error("audit postLogScript %s exited with code %d", script, proc.returncode)
