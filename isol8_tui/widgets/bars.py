"""The top bar (Docker, pool, watch) and the run bar (runtime, network for new sessions, run/stop, status)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Button, Checkbox, Select, Static

from engine import PoolState
from engine.runtimes import RUNTIME_NAMES
from isol8_tui.keys import key_labels
from isol8_tui.sessions import NETWORK_POLICIES


def format_duration(ms: float) -> str:
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    minutes, seconds = divmod(ms / 1000, 60)
    return f"{int(minutes)}m{seconds:04.1f}s"


def format_pool(states: list[PoolState]) -> str:
    if not states:
        return "[dim]pool idle[/]"
    parts = []
    for state in states:
        name = state.image.removeprefix("isol8:")
        counts = [f"{state.busy} busy"] if state.busy else []
        if state.ready:
            counts.append(f"{state.ready} ready")
        if state.starting:
            counts.append(f"{state.starting} starting")
        parts.append(f"{name} {' '.join(counts) or '0'}")
    return "pool " + " · ".join(parts)


class TopBar(Horizontal):
    """App name, the session that runs the code, watch state; Docker and the container pool."""

    def compose(self) -> ComposeResult:
        yield Static("[b]◆ isol8[/] workbench", id="brand")
        yield Static("", id="target")
        yield Static("", id="watch")
        yield Static("", id="pool")
        yield Static("[dim]docker …[/]", id="docker")

    def set_target(self, text: str) -> None:
        self.query_one("#target", Static).update(text)

    def set_watch(self, text: str) -> None:
        self.query_one("#watch", Static).update(text)

    def set_pool(self, states: list[PoolState]) -> None:
        self.query_one("#pool", Static).update(format_pool(states))

    def set_docker(self, available: bool | None, building: bool = False) -> None:
        if building:
            text = "[b $warning]docker ◌ building images[/]"
        elif available is None:
            text = "[dim]docker …[/]"
        elif available:
            text = "[$success]docker ●[/]"
        else:
            text = "[b $error]docker ✗ down[/]"
        self.query_one("#docker", Static).update(text)


class StatusLine(Static):
    """The state of the last run: running, exit code, duration and the abnormal-end markers."""


class RunBar(Horizontal):
    """Run controls. The runtime picker also decides which session runs the code."""

    HELP: ClassVar[str] = (
        "Run controls: the runtime (switching it changes highlighting and the session that runs the code), "
        "the network policy for new sessions, Run ({run}) and Stop ({stop}), and whether output is kept "
        "between runs. The status shows the exit code, the duration and why a run ended abnormally."
    )

    @dataclass
    class RuntimePicked(Message):
        runtime: str

    @dataclass
    class NetworkPicked(Message):
        network: str

    class RunPressed(Message):
        pass

    class StopPressed(Message):
        pass

    @dataclass
    class KeepToggled(Message):
        keep: bool

    def __init__(self, runtime: str, network: str, keep: bool) -> None:
        super().__init__(id="runbar")
        self._runtime = runtime
        self._network = network
        self._keep = keep

    def compose(self) -> ComposeResult:
        labels = key_labels(self)
        yield Button("▶ Run", id="run", variant="success", compact=True, tooltip=f"Run the buffer ({labels['run']})")
        yield Button(
            "■ Stop", id="stop", variant="error", compact=True, disabled=True, tooltip=f"Stop ({labels['stop']})"
        )
        yield Select(
            [(name, name) for name in RUNTIME_NAMES],
            value=self._runtime,
            allow_blank=False,
            id="runtime",
            compact=True,
            tooltip="Runtime",
        )
        yield Select(
            [(f"net {name}", name) for name in NETWORK_POLICIES],
            value=self._network,
            allow_blank=False,
            id="network-policy",
            compact=True,
            tooltip="Network policy for new sessions",
        )
        yield Checkbox("keep", self._keep, id="keep-output", compact=True, tooltip="Keep output between runs")
        yield StatusLine("", id="status")

    def set_runtime(self, runtime: str) -> None:
        select = self.query_one("#runtime", Select)
        if select.value != runtime:
            with self.prevent(Select.Changed):
                select.value = runtime

    def set_network(self, network: str) -> None:
        select = self.query_one("#network-policy", Select)
        if select.value != network:
            with self.prevent(Select.Changed):
                select.value = network

    def set_keep(self, keep: bool) -> None:
        box = self.query_one("#keep-output", Checkbox)
        if box.value != keep:
            with self.prevent(Checkbox.Changed):
                box.value = keep

    def set_running(self, running: bool) -> None:
        self.query_one("#stop", Button).disabled = not running
        self.set_class(running, "-running")

    def set_status(self, markup: str, state: str) -> None:
        status = self.query_one(StatusLine)
        status.update(markup)
        for name in ("idle", "running", "ok", "failed", "stopped", "error"):
            status.set_class(name == state, f"-{name}")

    @property
    def network_policy(self) -> str:
        value = self.query_one("#network-policy", Select).value
        return value if isinstance(value, str) else "none"

    @on(Select.Changed, "#runtime")
    def _runtime_changed(self, event: Select.Changed) -> None:
        event.stop()
        if isinstance(event.value, str):
            self.post_message(self.RuntimePicked(event.value))

    @on(Select.Changed, "#network-policy")
    def _network_changed(self, event: Select.Changed) -> None:
        event.stop()
        if isinstance(event.value, str):
            self.post_message(self.NetworkPicked(event.value))

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
