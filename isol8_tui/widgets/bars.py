"""The top bar (session, watch, pool, Docker) and the run bar (runtime, network for new sessions,
run/stop, status). Each holds its state in reactives (the main screen binds its own to them) and
renders its own text; the run bar reports the user's choices as messages."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Literal

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.message import Message
from textual.reactive import reactive, var
from textual.widgets import Button, Checkbox, Select, Static

from engine.models import InterpreterState, NetworkMode
from engine.runtimes import RUNTIME_NAMES
from isol8_tui.bridge import PoolFigures, RunFinished
from isol8_tui.keys import key_labels
from isol8_tui.sessions import NETWORK_POLICIES, Session


def format_duration(ms: float) -> str:
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    minutes, seconds = divmod(ms / 1000, 60)
    return f"{int(minutes)}m{seconds:04.1f}s"


def format_pool(figures: PoolFigures) -> str:
    """The warm pool's figures (the scratch engine's containers) and the sessions' own containers."""
    pool = f"pool ready {figures.ready} · busy {figures.busy} · starting {figures.starting}"
    return f"{pool} · sessions {figures.sessions}"


def short(text: str, limit: int = 90) -> str:
    """The first line of `text`, cut to `limit` characters."""
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


# --- the top bar ---------------------------------------------------------------------------------------------


class SessionTarget(Static):
    """Which session runs the code."""

    session: reactive[Session | None] = reactive(None, layout=True)
    runtime: reactive[str] = reactive("python", layout=True)

    def render(self) -> Content:
        session = self.session
        if session is None:
            return Content()
        if session.scratch:
            return Content.from_markup(
                "▸ [b]scratch[/] [dim]$runtime · fresh container per run[/]", runtime=self.runtime
            )
        stateful = " · stateful" if session.stateful else ""
        return Content.from_markup(
            "▸ [b]$name[/] [dim]net $network$stateful[/]", name=session.name, network=session.network, stateful=stateful
        )


class WatchStatus(Static):
    """Whether saving the file (or any change on disk) re-runs it."""

    enabled: reactive[bool] = reactive(False, layout=True)
    watching: reactive[Path | None] = reactive(None, layout=True)

    def __init__(self, debounce_ms: int, *, id: str) -> None:
        super().__init__(id=id)
        self.debounce_ms = debounce_ms

    def render(self) -> Content:
        if not self.enabled:
            return Content.from_markup("[dim]watch off[/]")
        if self.watching is None:
            return Content.from_markup("[dim]watch: save to start[/]")
        return Content.from_markup(f"[$accent]watching[/] [dim]{self.debounce_ms} ms[/]")


class PoolStatus(Static):
    """The warm pool (ready, busy, starting) and the containers the sessions hold."""

    pool: reactive[PoolFigures] = reactive(PoolFigures, layout=True)

    def render(self) -> Content:
        return Content.from_markup(format_pool(self.pool))


class DockerStatus(Static):
    """Docker up, down, not checked yet, or building images."""

    available: reactive[bool | None] = reactive(None, layout=True)
    building: reactive[bool] = reactive(False, layout=True)

    def render(self) -> Content:
        if self.building:
            return Content.from_markup("[b $warning]docker ◌ building images[/]")
        if self.available is None:
            return Content.from_markup("[dim]docker …[/]")
        if self.available:
            return Content.from_markup("[$success]docker ●[/]")
        return Content.from_markup("[b $error]docker ✗ down[/]")


class TopBar(Horizontal):
    """App name, the session that runs the code, watch state; Docker and the container pool."""

    session: var[Session | None] = var(None)
    runtime: var[str] = var("python")
    watch_enabled: var[bool] = var(False)
    watching: var[Path | None] = var(None)
    pool: var[PoolFigures] = var(PoolFigures)
    docker_available: var[bool | None] = var(None)
    building_images: var[bool] = var(False)

    def __init__(self, debounce_ms: int) -> None:
        super().__init__(id="topbar")
        self._debounce_ms = debounce_ms

    def compose(self) -> ComposeResult:
        yield Static("[b]◆ isol8[/] workbench", id="brand")
        yield SessionTarget(id="target").data_bind(TopBar.session, TopBar.runtime)
        yield WatchStatus(self._debounce_ms, id="watch").data_bind(
            enabled=TopBar.watch_enabled, watching=TopBar.watching
        )
        yield PoolStatus(id="pool").data_bind(TopBar.pool)
        yield DockerStatus(id="docker").data_bind(available=TopBar.docker_available, building=TopBar.building_images)


# --- the run bar ---------------------------------------------------------------------------------------------

StatusState = Literal["idle", "running", "ok", "failed", "stopped", "error"]


@dataclass(frozen=True)
class RunStatus:
    """What the run bar says: ready, the run in flight, how the last run ended, or why nothing runs."""

    state: StatusState = "idle"
    session: str = ""  # running: the session's name
    started_at: float = 0.0  # running: on the backend's clock
    duration_ms: float = 0.0  # running: so far; stopped, ok, failed: the run's
    exit_code: int | None = None
    timed_out: bool = False
    oom_killed: bool = False
    truncated: bool = False
    error: str = ""  # error: why
    interpreter: InterpreterState | None = None  # a stateful session's interpreter after the run
    interpreter_lost: str = ""  # why it was lost

    @classmethod
    @classmethod
    def running(cls, session: str, started_at: float) -> RunStatus:
        return cls("running", session=session, started_at=started_at)

    @classmethod
    def failure(cls, error: str) -> RunStatus:
        return cls("error", error=error)

    @classmethod
    def finished(cls, run: RunFinished) -> RunStatus:
        if run.cancelled:
            return cls("stopped", duration_ms=run.duration_ms)
        if run.error:
            return cls.failure(run.error)
        ok = run.exit_code == 0 and not (run.timed_out or run.oom_killed)
        return cls(
            "ok" if ok else "failed",
            duration_ms=run.duration_ms,
            exit_code=run.exit_code,
            timed_out=run.timed_out,
            oom_killed=run.oom_killed,
            truncated=run.truncated,
            interpreter=run.interpreter,
            interpreter_lost=run.interpreter_lost,
        )

    def at(self, now: float) -> RunStatus:
        """A running status with its elapsed time as of `now`."""
        return replace(self, duration_ms=(now - self.started_at) * 1000)


class StatusLine(Static):
    """The state of the last run: running, exit code, duration and the abnormal-end markers."""

    status: reactive[RunStatus] = reactive(RunStatus)

    def render(self) -> Content:
        status = self.status
        duration = format_duration(status.duration_ms)
        if status.state == "idle":
            return Content.from_markup("[dim]ready · $run runs[/]", run=key_labels(self)["run"])
        if status.state == "running":
            return Content.from_markup(
                "[b $warning]● running[/] $name · $duration", name=status.session, duration=duration
            )
        if status.state == "stopped":
            return Content.from_markup("[b]■ stopped[/] after $duration", duration=duration)
        if status.state == "error":
            return Content.from_markup("[b $error]✗ $reason[/]", reason=short(status.error))
        code = status.exit_code if status.exit_code is not None else "?"
        head = f"[b $success]✓ exit {code}[/]" if status.state == "ok" else f"[b $error]✗ exit {code}[/]"
        markers = []
        if status.timed_out:
            markers.append("[b $error]⏱ timed out[/]")
        if status.oom_killed:
            markers.append("[b $error]out of memory[/]")
        if status.truncated:
            markers.append("[b $warning]✂ truncated[/]")
        parts = [Content.from_markup(" · ".join([head, duration, *markers]))]
        if status.interpreter == "kept":
            parts.append(Content.from_markup("[dim]state kept[/]"))
        elif status.interpreter == "fresh":
            parts.append(Content.from_markup("[$accent]state fresh[/]"))
        elif status.interpreter == "lost":
            reason = short(status.interpreter_lost)
            lost = "[b $error]state lost[/]" + (": $reason" if reason else "")
            parts.append(Content.from_markup(lost, reason=reason))
        return Content(" · ").join(parts)

    def watch_status(self, status: RunStatus) -> None:
        for state in ("idle", "running", "ok", "failed", "stopped", "error"):
            self.set_class(state == status.state, f"-{state}")


class MarkBox(Checkbox):
    """A checkbox whose mark is there only when it is on (Textual's shows an X either way, dimmed when off)."""

    @property
    def _button(self) -> Content:
        self.BUTTON_INNER = "X" if self.value else " "
        return super()._button


class RunBar(Horizontal):
    """Run controls. The runtime picker also decides which session runs the code."""

    HELP: ClassVar[str] = (
        "Run controls: the runtime (switching it changes highlighting and the session that runs the code), "
        "the network policy for new sessions, Run ({run}) and Stop ({stop}), and whether output is kept "
        "between runs. The status shows the exit code, the duration and why a run ended abnormally."
    )

    runtime: var[str] = var("python", init=False)
    network: var[NetworkMode] = var("none", init=False)
    keep: var[bool] = var(False, init=False)
    status: var[RunStatus] = var(RunStatus, init=False)

    @dataclass
    class RuntimePicked(Message):
        runtime: str

    @dataclass
    class NetworkPicked(Message):
        network: NetworkMode

    class RunPressed(Message):
        pass

    class StopPressed(Message):
        pass

    @dataclass
    class KeepToggled(Message):
        keep: bool

    def __init__(self, runtime: str, network: NetworkMode, keep: bool) -> None:
        super().__init__(id="runbar")
        self.set_reactive(RunBar.runtime, runtime)
        self.set_reactive(RunBar.network, network)
        self.set_reactive(RunBar.keep, keep)

    def compose(self) -> ComposeResult:
        run, stop = key_labels(self)["run"], key_labels(self)["stop"]
        yield Button("▶ Run", id="run", variant="success", compact=True, tooltip=f"Run the buffer ({run})")
        yield Button("■ Stop", id="stop", variant="error", compact=True, disabled=True, tooltip=f"Stop ({stop})")
        yield Select(
            [(name, name) for name in RUNTIME_NAMES],
            value=self.runtime,
            allow_blank=False,
            id="runtime",
            compact=True,
            tooltip="Runtime",
        )
        yield Select(
            [(f"new: net {name}", name) for name in NETWORK_POLICIES],
            value=self.network,
            allow_blank=False,
            id="network-policy",
            compact=True,
            tooltip="Network policy for new sessions",
        )
        yield MarkBox("keep output", self.keep, id="keep-output", compact=True, tooltip="Keep output between runs")
        yield StatusLine(id="status").data_bind(RunBar.status)

    def watch_runtime(self, runtime: str) -> None:
        self._show(self.query_one("#runtime", Select), runtime)

    def watch_network(self, network: NetworkMode) -> None:
        self._show(self.query_one("#network-policy", Select), network)

    def _show(self, select: Select[str], value: str) -> None:
        if select.value != value:
            with self.prevent(Select.Changed):
                select.value = value

    def watch_keep(self, keep: bool) -> None:
        box = self.query_one("#keep-output", Checkbox)
        if box.value != keep:
            with self.prevent(Checkbox.Changed):
                box.value = keep

    def watch_status(self, status: RunStatus) -> None:
        self.query_one("#stop", Button).disabled = status.state != "running"

    @on(Select.Changed, "#runtime")
    def _runtime_changed(self, event: Select.Changed) -> None:
        event.stop()
        if isinstance(event.value, str):
            self.post_message(self.RuntimePicked(event.value))

    @on(Select.Changed, "#network-policy")
    def _network_changed(self, event: Select.Changed) -> None:
        event.stop()
        network = event.value
        if network in NETWORK_POLICIES:
            self.post_message(self.NetworkPicked(network))

    @on(Checkbox.Changed, "#keep-output")
    def _keep_changed(self, event: Checkbox.Changed) -> None:
        event.stop()
        self.post_message(self.KeepToggled(event.value))

    @on(Button.Pressed, "#run")
    def _run(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.RunPressed())

    @on(Button.Pressed, "#stop")
    def _stop(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.StopPressed())
