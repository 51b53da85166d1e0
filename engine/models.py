"""The engine's boundary types: what callers send in and what they get back.

Attributes are snake_case in Python and camelCase in JSON (`exitCode`, `durationMs`), so the wire
format matches the reference system's clients. Validation happens here, once.
"""

from __future__ import annotations

import base64
import posixpath
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from engine.limits import parse_size
from engine.runtimes import RUNTIME_NAMES, RuntimeName, unknown_runtime

MAX_STDIN_BYTES = 64 << 20
"""Largest `stdin` a request may carry (it travels in memory; use `files` for more)."""
MAX_FILE_SIZE = 64 << 20
"""Default `maxFileSize`: the most bytes read back from a sandbox by one `get_file`, or by one
execution's `output_paths` together (counted as they are read, so the engine's memory is bounded)."""
FILE_ROOTS = ("/sandbox", "/tmp")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def sandbox_path(path: str) -> str:
    """`path` if it is an absolute path inside /sandbox or /tmp without `..`; else ValueError."""
    norm = posixpath.normpath(path) if path.startswith("/") else ""
    inside = any(norm == root or norm.startswith(root + "/") for root in FILE_ROOTS)
    if not inside or ".." in path.split("/") or "\0" in path or norm in FILE_ROOTS:
        raise ValueError(f'File path must be a file inside /sandbox or /tmp, without "..": "{path}"')
    return norm


def _from_base64(value: object) -> object:
    return base64.b64decode(value, validate=True) if isinstance(value, str) else value


def _check_pattern(pattern: str) -> str:
    """A bad pattern is refused here, not inside the container's proxy."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f'"{pattern}" is not a valid regular expression ({exc})') from None
    return pattern


Pattern = Annotated[str, AfterValidator(_check_pattern)]
Port = Annotated[int, Field(ge=1, le=65535)]

FileBytes = Annotated[
    bytes,
    BeforeValidator(_from_base64),
    PlainSerializer(lambda data: base64.b64encode(data).decode(), return_type=str, when_used="json"),
]
"""Bytes in Python, base64 in JSON (binary-safe on the wire)."""

NetworkMode = Literal["none", "host", "filtered"]
SeccompMode = Literal["strict", "unconfined", "custom"]
PoolStrategy = Literal["secure", "fast"]


def valid_env(env: dict[str, str]) -> dict[str, str]:
    """Environment variables a process can be given: a name without `=` or NUL, a value without NUL."""
    for name, value in env.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise ValueError(f'Invalid environment variable name or value: "{name}"')
    return env


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


CONTAINER_LIMITS = ("memory_limit", "cpu_limit", "pids_limit", "sandbox_size", "tmp_size")
"""Limits that shape the container (the output cap is per job)."""


class TerminalSize(Model):
    """The window of an interactive run's pseudo-terminal, in character cells."""

    rows: int = Field(ge=1, le=1000)
    cols: int = Field(ge=1, le=1000)


class RequestLimits(Model):
    """Per-request limits; None means the engine's option."""

    memory_limit: str | None = None
    cpu_limit: float | None = Field(default=None, gt=0)
    pids_limit: int | None = Field(default=None, gt=0)
    sandbox_size: str | None = None
    tmp_size: str | None = None
    max_output_size: int | None = Field(default=None, gt=0)

    @field_validator("memory_limit", "sandbox_size", "tmp_size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value


class ExecutionRequest(RequestLimits):
    """One execution. Exactly one of `code`, `code_url` (fetched on the engine's host under the
    `remote_code` policy, then run as `code`) and `cmd`. `metadata` goes to the audit record;
    `agent_flags` is accepted for the reference's clients and ignored (its `agent` runtime is not
    one of ours)."""

    code: str | None = None
    code_url: str | None = None
    code_hash: str | None = None
    allow_insecure_code_url: bool = False
    cmd: str | None = None
    runtime: str = "python"
    timeout_ms: int | None = Field(default=None, gt=0)
    env: dict[str, str] = Field(default_factory=dict)
    file_extension: str | None = None
    file_name: str | None = None  # the code's own name in /sandbox (tracebacks name it); else main<ext>
    args: list[str] = Field(default_factory=list, max_length=256)  # after the code file: sys.argv[1:]
    stdin: str | bytes | None = Field(default=None, max_length=MAX_STDIN_BYTES)
    workdir: str | None = None
    install_packages: list[str] = Field(default_factory=list)
    setup_script: str | None = None
    files: dict[str, str | bytes] = Field(default_factory=dict)
    output_paths: list[str] = Field(default_factory=list)
    secrets: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)
    agent_flags: str | None = None

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, runtime: str) -> str:
        if runtime not in RUNTIME_NAMES:
            raise ValueError(unknown_runtime(runtime))
        return runtime

    @field_validator("files")
    @classmethod
    def _file_paths(cls, files: dict[str, str | bytes]) -> dict[str, str | bytes]:
        return {sandbox_path(path): content for path, content in files.items()}

    @field_validator("output_paths")
    @classmethod
    def _output_paths(cls, paths: list[str]) -> list[str]:
        return [sandbox_path(path) for path in paths]

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ExecutionRequest:
        given = sum(source is not None for source in (self.code, self.code_url, self.cmd))
        if given > 1:
            raise ValueError(
                "ExecutionRequest.code, ExecutionRequest.codeUrl, and ExecutionRequest.cmd are mutually "
                "exclusive — provide exactly one."
            )
        if given == 0:
            raise ValueError("ExecutionRequest must include exactly one of: code, codeUrl, or cmd.")
        if self.args and self.cmd is not None:
            raise ValueError("ExecutionRequest.args go to the code's file; a cmd carries its own.")
        if self.file_name is not None:
            if self.cmd is not None:
                raise ValueError("ExecutionRequest.fileName names the code's file; a cmd has none.")
            if self.file_extension is not None:
                raise ValueError("ExecutionRequest.fileName carries its extension: leave fileExtension out.")
        return self

    @field_validator("env", "secrets")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        return valid_env(env)

    @field_validator("cmd", "workdir")
    @classmethod
    def _no_nul(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A command line and a path cannot hold a NUL byte: refused here, not by the sandbox."""
        if value is not None and "\0" in value:
            raise ValueError(f"{to_camel(info.field_name or '')} cannot contain a NUL byte")
        return value

    @field_validator("args")
    @classmethod
    def _args(cls, args: list[str]) -> list[str]:
        """Each argument a string of at most 4096 characters without a NUL (they are an argv, never a shell line)."""
        for arg in args:
            if "\0" in arg or len(arg) > 4096:
                raise ValueError("Each of ExecutionRequest.args is at most 4096 characters, without a NUL byte.")
        return args

    @field_validator("file_name")
    @classmethod
    def _file_name(cls, name: str | None) -> str | None:
        """A plain file name (no folder, no leading dot, so never /sandbox's own dot files)."""
        if name is not None and not _FILE_NAME.fullmatch(name):
            raise ValueError(
                f'Invalid file name: "{name}". Use letters, digits, ".", "_" and "-", starting with a letter or '
                'digit, at most 128 characters (e.g. "train.py").'
            )
        return name

    @field_validator("file_extension")
    @classmethod
    def _extension(cls, ext: str | None) -> str | None:
        if ext is None:
            return None
        ext = ext if ext.startswith(".") else f".{ext}"
        if not ext[1:].isalnum():
            raise ValueError(f'Invalid file extension: "{ext}". Use e.g. ".py" or ".cjs".')
        return ext


class ResourceUsage(Model):
    """Measured in the container: CPU from its cgroup, peak memory of the job's process tree,
    network bytes on its interfaces (None where it has no network)."""

    cpu_time_ms: float | None = None
    peak_memory_bytes: int | None = None
    network_bytes_in: int | None = None
    network_bytes_out: int | None = None


class NetworkLogEntry(Model):
    """One request through the filtered network's proxy (CONNECT for HTTPS, where `path` is None).
    `headers`: a plain-HTTP request's header fields as sent, credentials' values masked."""

    timestamp: str
    method: str
    host: str
    port: int
    path: str | None = None
    action: Literal["ALLOW", "BLOCK"]
    rule: str | None = None  # the pattern that decided, or None when no list applied
    status: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    duration_ms: float = 0.0
    headers: list[tuple[str, str]] | None = None


class SecurityEvent(Model):
    type: str
    message: str
    details: dict[str, str | int | None] = Field(default_factory=dict)
    timestamp: str


MimeType = Literal[
    "text/plain",
    "text/html",
    "text/markdown",
    "text/latex",
    "image/png",
    "image/jpeg",
    "image/svg+xml",
    "application/json",
    "application/pdf",
]
"""What a rich result may hold (the code-interpreter model's MIME bundle)."""
MIME_TYPES: frozenset[str] = frozenset(get_args(MimeType))
BINARY_MIME_TYPES: frozenset[str] = frozenset({"image/png", "image/jpeg", "application/pdf"})
"""Bundle values that are bytes, held base64-encoded (as Jupyter holds them); the others are text
(`application/json` as its JSON text) and are masked like output."""

InterpreterState = Literal["fresh", "kept", "lost"]
"""A stateful session's interpreter after a run: `fresh` (a new interpreter ran it: nothing of
earlier runs' variables), `kept` (earlier runs' variables were there, and still are), `lost` (it
ended during the run, e.g. killed at the memory limit or after a timeout it did not survive: its
variables are gone and the next run starts a fresh one). Files in /sandbox survive in every case."""


class RichResult(Model):
    """One displayed value: a MIME bundle (binary types base64, see BINARY_MIME_TYPES), and whether it
    is the run's main result (the value of the code's final expression)."""

    data: dict[MimeType, str]
    is_main_result: bool = False

    def text(self) -> str:
        return self.data.get("text/plain", "")

    def binary(self, mime: MimeType) -> bytes:
        """A binary value's bytes (KeyError when the bundle has no `mime`)."""
        return base64.b64decode(self.data[mime])


class ExecutionResult(Model):
    stdout: str
    stderr: str
    exit_code: int
    duration_ms: int
    timed_out: bool = False
    oom_killed: bool = False
    truncated: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    execution_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    runtime: str
    timestamp: str = Field(default_factory=lambda: datetime.now(UTC).isoformat().replace("+00:00", "Z"))
    container_id: str | None = None
    files: dict[str, FileBytes] | None = None
    resource_usage: ResourceUsage | None = None
    network_logs: list[NetworkLogEntry] | None = None
    security_events: list[SecurityEvent] | None = None
    results: list[RichResult] | None = None  # a stateful session's displayed values, in order
    state: InterpreterState | None = None  # a stateful session's interpreter after the run


class StreamEvent(Model):
    """`exit` events also say, as the result does, whether output was cut (`truncated`), the run
    timed out (`timed_out`) or was killed at its memory limit (`oom_killed`). `network` events
    (filtered mode with network logging) carry one request in `entry` as it happens; `data` is then
    its host. `result` events (stateful sessions) carry one displayed value in `result`, as it is
    displayed; `data` is then its text. A stateful session's `exit` says what became of its
    interpreter (`state`)."""

    type: Literal["stdout", "stderr", "exit", "error", "network", "result"]
    data: str
    phase: Literal["setup", "code"] | None = None
    truncated: bool | None = None
    timed_out: bool | None = None
    oom_killed: bool | None = None
    entry: NetworkLogEntry | None = None
    result: RichResult | None = None
    state: InterpreterState | None = None


DEFAULT_BLOCKED_CODE_HOSTS = (
    r"^localhost$",
    r"^127(?:\.[0-9]{1,3}){3}$",
    r"^\[::1\]$",
    r"^::1$",
    r"^10(?:\.[0-9]{1,3}){3}$",
    r"^172\.(?:1[6-9]|2[0-9]|3[0-1])(?:\.[0-9]{1,3}){2}$",
    r"^192\.168(?:\.[0-9]{1,3}){2}$",
    r"^169\.254(?:\.[0-9]{1,3}){2}$",
    r"^metadata\.google\.internal$",
    r"^169\.254\.169\.254$",
)
"""The reference's default `remoteCode.blockedHosts`. Names only: every resolved address is checked too."""


class RemoteCodePolicy(Model):
    """Whether and from where `code_url` may be fetched (on the engine's host: an SSRF surface, so
    off by default). Host patterns are case-insensitive regular expressions."""

    enabled: bool = False
    allowed_schemes: list[str] = Field(default_factory=lambda: ["https"])
    allowed_hosts: list[Pattern] = Field(default_factory=list)
    blocked_hosts: list[Pattern] = Field(default_factory=lambda: list(DEFAULT_BLOCKED_CODE_HOSTS))
    max_code_size: int = Field(default=10 << 20, gt=0)
    fetch_timeout_ms: int = Field(default=30_000, gt=0)
    require_hash: bool = False
    enable_cache: bool = True  # accepted for the reference's configs; nothing is cached
    cache_ttl: int = Field(default=3600, ge=0)  # likewise


class AuditOptions(Model):
    """The audit log: one JSON object per execution, appended to `<log_dir>/executions.log` (or
    printed to stdout). Code and output are recorded only when asked, with secrets masked."""

    enabled: bool = False
    destination: Literal["filesystem", "file", "stdout"] = "filesystem"
    log_dir: str | None = None  # default: $ISOL8_AUDIT_DIR, else ./.isol8_audit
    post_log_script: str | None = None
    track_resources: bool = True
    retention_days: int = Field(default=90, ge=0)
    include_code: bool = False
    include_output: bool = False


class NetworkFilter(Model):
    """The filtered network's policy, enforced by the in-container proxy (engine/agent/proxy.py).

    Patterns are regular expressions matched against the whole canonical host name (lower case,
    no trailing dot, IP literals as dotted quads; an internationalised name in its ASCII and its
    Unicode form), case-insensitively; the blacklist wins; an empty whitelist allows every host
    not blacklisted. HTTPS (CONNECT) may reach port 443 and the `ports` listed here; plain HTTP any
    port. A host named by a whitelist pattern may resolve to a private, loopback or link-local
    address only while `whitelist_reaches_private` is true (a server turns it off for the
    whitelists its clients send)."""

    whitelist: list[Pattern] = Field(default_factory=list)
    blacklist: list[Pattern] = Field(default_factory=list)
    ports: list[Port] = Field(default_factory=list)
    whitelist_reaches_private: bool = True


class PoolState(Model):
    """Warm containers for one image: ready to take, serving an execution, being started."""

    image: str
    ready: int = 0
    busy: int = 0
    starting: int = 0


class SecurityOptions(Model):
    """Container hardening knobs. `runtime` names another OCI runtime (e.g. gVisor's `runsc`)."""

    seccomp: SeccompMode = "strict"
    custom_profile_path: str | None = None
    runtime: str | None = None

    @model_validator(mode="after")
    def _custom_needs_profile(self) -> SecurityOptions:
        if self.seccomp == "custom" and not self.custom_profile_path:
            raise ValueError('customProfilePath is required when seccomp is "custom"')
        return self


class Isol8Options(Model):
    """Engine options (library callers, the CLI and the config file all end up here)."""

    mode: Literal["ephemeral", "persistent"] = "ephemeral"
    # Persistent mode: `code` runs on one long-lived interpreter (python, node, bash) that keeps its
    # variables between executions, and returns rich results (engine/agent/kernel*.py).
    stateful: bool = False
    runtime: RuntimeName | None = None  # persistent mode: lets put_file/get_file start the container
    persist: bool = False  # debugging: leave containers running after the engine stops
    network: NetworkMode = "none"
    network_filter: NetworkFilter = Field(default_factory=NetworkFilter)
    log_network: bool = False
    docker_network: str | None = None  # filtered mode: the Docker network to join (default: bridge)
    timeout_ms: int = Field(default=30_000, gt=0)
    memory_limit: str = "512m"
    cpu_limit: float = Field(default=1.0, gt=0)
    pids_limit: int = Field(default=64, gt=0)
    sandbox_size: str = "512m"
    tmp_size: str = "256m"
    max_output_size: int = Field(default=1 << 20, gt=0)
    max_file_size: int = Field(default=MAX_FILE_SIZE, gt=0)  # bytes read back by one get_file or one run
    security: SecurityOptions = Field(default_factory=SecurityOptions)
    secrets: dict[str, str] = Field(default_factory=dict)
    image: str | None = None
    max_concurrent: int = Field(default=10, ge=1)
    pool_strategy: PoolStrategy = "secure"
    pool_size: int = Field(default=1, ge=0)  # warm containers kept per image (and settings)
    prewarm: list[RuntimeName] = Field(default_factory=list)  # runtimes warmed by start()
    remote_code: RemoteCodePolicy = Field(default_factory=RemoteCodePolicy)
    audit: AuditOptions = Field(default_factory=AuditOptions)
    debug: bool = False

    @field_validator("memory_limit", "sandbox_size", "tmp_size")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value

    @model_validator(mode="after")
    def _stateful_is_a_session(self) -> Isol8Options:
        if self.stateful and self.mode != "persistent":
            raise ValueError('stateful needs mode "persistent": an interpreter that keeps state is a session\'s')
        return self


class CleanupReport(Model):
    containers_removed: int = 0
    containers_failed: int = 0
    images_removed: int = 0
    images_failed: int = 0
    errors: list[str] = Field(default_factory=list)
