"""The workbench's sessions and the rules for choosing between them, without Textual.

A session is one engine: a persistent container (its files in /sandbox and installed packages
survive runs) of one runtime, or the scratch engine, which starts a fresh container for every run and
runs any runtime. A stateful session also keeps one interpreter whose variables survive runs. The screen
asks the functions below which session runs a runtime, what to select after a delete and when to
start a container ahead of the first run; the bridge creates and stops the engines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.interface import Engine
from engine.models import NetworkMode, parse_size
from engine.runtimes import RUNTIME_NAMES, RUNTIMES

SessionState = Literal["new", "starting", "idle", "running", "error"]

NETWORK_POLICIES: tuple[NetworkMode, ...] = tuple(sorted(get_args(NetworkMode), key=lambda mode: mode == "host"))
"""The engine's network modes as the pickers list them: the one that opens this machine's network last."""
STATEFUL_RUNTIMES: tuple[str, ...] = tuple(name for name in RUNTIME_NAMES if RUNTIMES[name].kernel is not None)
"""The runtimes with a long-lived interpreter, which a stateful session keeps (engine/runtimes.py)."""


def stateless_reason(runtime: str) -> str:
    """Why a session of `runtime` cannot be stateful (the dialog's note, the bridge's refusal)."""
    return (
        f"{runtime} has no long-lived interpreter: each run is a new process. Stateful sessions run "
        f"{', '.join(STATEFUL_RUNTIMES)}."
    )


class RunSettings(BaseModel):
    """A session's run settings (the settings dialog; saved in the project file). None: the engine's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_ms: int | None = Field(default=None, gt=0)
    memory_limit: str | None = None  # the container's: changing it starts a new container
    cpu_limit: float | None = Field(default=None, gt=0)  # likewise
    env: dict[str, str] = Field(default_factory=dict)
    args: list[str] = Field(default_factory=list)  # the program's arguments (sys.argv[1:])
    stdin_file: str | None = None  # a host file (relative to the project folder) fed to each run's stdin
    packages: list[str] = Field(default_factory=list)  # installed before each run

    @field_validator("memory_limit")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value

    def container_limits(self) -> dict[str, object]:
        return {"memory_limit": self.memory_limit, "cpu_limit": self.cpu_limit}


@dataclass(frozen=True)
class SessionSpec:
    """What the new-session dialog asks for (and the project file keeps)."""

    runtime: str
    network: NetworkMode = "none"
    whitelist: tuple[str, ...] = ()
    blacklist: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()  # extra HTTPS (CONNECT) ports besides 443
    settings: RunSettings = field(default_factory=RunSettings)
    stateful: bool = False  # one long-lived interpreter runs the code: variables survive runs


@dataclass(eq=False)
class Session:
    """One engine of this workbench. Equal only to itself: its state changes, what it is does not."""

    id: str
    name: str
    runtime: str | None  # None: scratch, any runtime
    network: NetworkMode
    log_network: bool
    engine: Engine
    created_at: float
    whitelist: tuple[str, ...] = ()
    blacklist: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    settings: RunSettings = field(default_factory=RunSettings)
    stateful: bool = False
    state: SessionState = "new"
    detail: str = ""  # the last failure, shown in the sidebar and the status line
    runs: int = 0
    active_run: int | None = None
    files: tuple[str, ...] = ()  # the files its /sandbox held at the last listing (download suggestions)

    @property
    def scratch(self) -> bool:
        return self.runtime is None

    @property
    def logs_network(self) -> bool:
        return self.network == "filtered" and self.log_network

    def can_run(self, runtime: str) -> bool:
        return self.runtime is None or self.runtime == runtime

    def spec(self) -> SessionSpec | None:
        """What recreates this session (None for scratch, which is always there)."""
        if self.runtime is None:
            return None
        return SessionSpec(
            self.runtime, self.network, self.whitelist, self.blacklist, self.ports, self.settings, self.stateful
        )


def in_order(sessions: Iterable[Session]) -> list[Session]:
    """As the sidebar and the palette list them: scratch first, then oldest first."""
    return sorted(sessions, key=lambda s: (not s.scratch, s.created_at, s.id))


def session_for(runtime: str, sessions: Iterable[Session]) -> Session | None:
    """The persistent session a switch to `runtime` selects: its newest one (None: create one)."""
    candidates = [s for s in in_order(sessions) if s.runtime == runtime]
    return candidates[-1] if candidates else None


def after_removal(remaining: Iterable[Session], runtime: str, scratch: Session) -> Session:
    """What to select once the selected session is deleted: the newest session of the runtime in
    the editor, else scratch (which runs anything)."""
    return session_for(runtime, remaining) or scratch


def should_warm(session: Session, docker_available: bool | None, missing_images: Sequence[str]) -> bool:
    """Start the session's container ahead of its first run: a persistent session without a
    working container, once Docker answers and its image is there."""
    return (
        not session.scratch
        and session.state in ("new", "error")
        and docker_available is True
        and session.runtime not in missing_images
    )
