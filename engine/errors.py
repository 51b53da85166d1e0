"""Every error isol8 raises on purpose, as one hierarchy.

Callers tell failures apart by class, never by message text. Each class carries:

- `status`: the HTTP status `isol8 serve` answers with (engine/server/errors.py reads it);
- `code`: a stable name the server sends in the `Isol8-Error` header beside the reference's
  `{"error": "..."}` body, so the remote client raises the class the server's engine raised
  (`error_class`).

Messages say what happened and what to do, in one line. Every class takes just its message, so a
class can be rebuilt from the wire; the classmethods build the common messages.

    Isol8Error                   400 bad_request
    ├── ConfigError              400 config           an invalid config file or option
    ├── DockerUnavailable        503 docker_unavailable
    ├── ImageMissing             503 image_missing    an image the engine needs is absent or stale
    ├── SandboxError             500 sandbox_error    the container or its agent failed, not the code
    │   ├── SandboxLost          500 sandbox_lost     the container stopped or the agent went silent
    │   │   ├── OutOfMemory      507 out_of_memory    ... because it was killed at its memory limit
    │   │   └── NodeLost         503 node_lost        ... because its Ray node died (engine/cluster.py)
    │   ├── SessionLost          410 session_lost     a persistent session's container (and files) is gone
    │   └── Timeout              504 timeout          a file transfer did not finish by its deadline
    ├── SetupFailed              400 setup_failed     a package install or setup script failed
    ├── FileError                400 file_error
    │   ├── FileNotFound         404 file_not_found
    │   ├── NotARegularFile      400 not_a_regular_file
    │   └── FileTooLarge         413 file_too_large
    ├── InputTooLarge            413 input_too_large  more keys than one interactive run may take
    ├── NotFiltered              400 not_filtered     allow and deny lists for a network that is not filtered
    ├── NotStateful              400 not_stateful     a reset for a session that is not stateful
    ├── SessionNotFound          404 session_not_found
    ├── TooManySessions          429 too_many_sessions
    ├── PolicyRefused            403 policy_refused   the operator's policy does not allow the request
    ├── ClusterUnavailable       503 cluster_unavailable  no Ray cluster to join, or no isol8 node in it
    ├── FetchFailed              502 fetch_failed     a code URL did not resolve, answer or finish in time
    └── AuthError                401 unauthorized     no valid key
        └── Forbidden            403 forbidden        a key that is not valid or may not do this

A run that times out or is killed at its memory limit is not an error: its result (and its stream's
`exit` event) says so with `timed_out` and `oom_killed`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import ValidationError


class Isol8Error(Exception):
    """Base of every error the engine raises on purpose."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    _by_code: ClassVar[dict[str, type[Isol8Error]]] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            Isol8Error._by_code[cls.code] = cls


ERROR_CODE_HEADER = "Isol8-Error"
"""The response header that carries an error's `code`."""


def error_class(code: str | None) -> type[Isol8Error]:
    """The class a wire `code` names; Isol8Error for a code this version does not know."""
    return Isol8Error._by_code.get(code or "", Isol8Error)


class ConfigError(Isol8Error):
    """A config file, option or seccomp profile that cannot be used; one line naming the file, the key
    and the fix. `path` is the file, when there is one."""

    code = "config"

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class DockerUnavailable(Isol8Error):
    status = 503
    code = "docker_unavailable"

    @classmethod
    def at(cls, host: str) -> DockerUnavailable:
        return cls(
            "Docker is not running or not installed. Start the Docker daemon (e.g. `sudo systemctl start "
            f"docker` or `sudo dockerd &`) and check that your user can access {host}."
        )


class ImageMissing(Isol8Error):
    status = 503
    code = "image_missing"

    @classmethod
    def of(cls, image: str) -> ImageMissing:
        return cls(f"Image {image} is missing or outdated. Run `isol8 setup` to build the images.")


class SandboxError(Isol8Error):
    """The sandbox container or its agent failed (not the user's code)."""

    status = 500
    code = "sandbox_error"


class SandboxLost(SandboxError):
    """The container stopped unexpectedly or its agent stopped answering mid-request."""

    code = "sandbox_lost"


class SessionLost(SandboxError):
    """A persistent session's container was lost or replaced: its files and state are gone. Said
    once, on the next call; the call after it starts a new container."""

    status = 410
    code = "session_lost"


class Timeout(SandboxError):
    """A file transfer did not finish by its deadline: the sandbox is replaced."""

    status = 504
    code = "timeout"


class OutOfMemory(SandboxLost):
    """A session's container was killed at its memory limit during a file operation."""

    status = 507
    code = "out_of_memory"


class NodeLost(SandboxLost):
    """The Ray node running the call died (engine/cluster.py): its runs and sessions are gone."""

    status = 503
    code = "node_lost"

    @classmethod
    def of(cls, node_id: str, address: str) -> NodeLost:
        return cls(f"Ray node {node_id[:12]} ({address}) died during the call; retry: new work goes to the nodes left.")


class ClusterUnavailable(Isol8Error):
    """No Ray cluster to join at the address, or none of its nodes offers the `isol8` resource."""

    status = 503
    code = "cluster_unavailable"


class SetupFailed(Isol8Error):
    """A package install or setup script exited non-zero; the message has its exit code and stderr."""

    code = "setup_failed"


class FileError(Isol8Error):
    """A file the engine was asked to move in or out of a sandbox cannot be moved."""

    code = "file_error"


class FileNotFound(FileError):
    """The file does not exist in the sandbox."""

    status = 404
    code = "file_not_found"


class NotARegularFile(FileError):
    """The path names a directory, FIFO, socket or device: only regular files move."""

    code = "not_a_regular_file"


class FileTooLarge(FileError):
    """A file read back is over `maxFileSize`."""

    status = 413
    code = "file_too_large"


class InputTooLarge(Isol8Error):
    """An interactive run's terminal was sent more input than a request's stdin may carry."""

    status = 413
    code = "input_too_large"


class NotFiltered(Isol8Error):
    """Allow and deny lists for an engine whose network is not `filtered`."""

    code = "not_filtered"

    @classmethod
    def of(cls, network: str) -> NotFiltered:
        return cls(f'The network is "{network}": allow and deny lists apply to network "filtered" only.')


class NotStateful(Isol8Error):
    """A request that needs a stateful session's interpreter, sent to an engine without one."""

    code = "not_stateful"

    @classmethod
    def for_reset(cls) -> NotStateful:
        return cls(
            "This session is not stateful: it has no interpreter to reset (each run is a new process). "
            "Create the session with stateful on to keep variables between runs."
        )


class SessionNotFound(Isol8Error):
    """No such session for this caller."""

    status = 404
    code = "session_not_found"

    def __init__(self, message: str = "Session not found") -> None:
        super().__init__(message)


class TooManySessions(Isol8Error):
    """A new session would pass a cap."""

    status = 429
    code = "too_many_sessions"

    @classmethod
    def over(cls, limit: int, tenant_id: str | None = None) -> TooManySessions:
        """The server's `maxSessions`, or the tenant's `maxSessionsPerTenant` when `tenant_id` is set."""
        if tenant_id is None:
            cap = f"this server keeps at most {limit} (server.maxSessions)"
        else:
            cap = f'tenant "{tenant_id}" may keep at most {limit} (server.maxSessionsPerTenant)'
        return cls(f"Too many sessions: {cap}; delete one with DELETE /session/{{id}}")


class PolicyRefused(Isol8Error):
    """A client asked for more than the operator allows."""

    status = 403
    code = "policy_refused"


class FetchFailed(Isol8Error):
    """A `codeUrl` could not be fetched: its host did not resolve, the connection failed, it answered
    with an error status or too many redirects, or it did not finish within `fetchTimeoutMs`."""

    status = 502
    code = "fetch_failed"


class AuthError(Isol8Error):
    """A request without a valid key."""

    status = 401
    code = "unauthorized"


class Forbidden(AuthError):
    """A key that is not valid, or that may not do this."""

    status = 403
    code = "forbidden"


def one_line(exc: BaseException) -> str:
    """An error as the one line the CLI, the workbench and the MCP tools show: a validation error's
    first problem (`where: what`), else the first line of its message, else its type's name."""
    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        message = str(first.get("msg", exc))
        if message.startswith("Value error, "):  # our own validators' messages stand alone
            return message.removeprefix("Value error, ")
        where = ".".join(str(part) for part in first.get("loc", ()))
        return f"{where}: {message}" if where else message
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
