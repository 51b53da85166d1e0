"""Modal dialogs: new session, confirm, open/save path, upload/download, request details, image builds."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.suggester import Suggester, SuggestFromList
from textual.widgets import Button, Checkbox, Footer, Input, Label, Log, RadioButton, RadioSet, Select, Static
from textual.widgets.button import ButtonVariant

from engine import NetworkLogEntry
from engine.models import NetworkMode
from engine.runtimes import RUNTIME_NAMES
from isol8_tui.keys import key_labels
from isol8_tui.output import one_line
from isol8_tui.sessions import NETWORK_POLICIES, STATEFUL_RUNTIMES, RunSettings, SessionSpec, stateless_reason
from isol8_tui.widgets.bars import MarkBox
from isol8_tui.widgets.network import describe


class PathSuggester(Suggester):
    """Completes host paths as you type (directories end with /)."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        expanded = os.path.expanduser(value)
        folder, _, stem = expanded.rpartition("/")
        base = Path(folder or ("/" if expanded.startswith("/") else "."))
        try:
            names = sorted(entry.name for entry in base.iterdir() if entry.name.startswith(stem))
        except OSError:
            return None
        names = [name for name in names if not name.startswith(".") or stem.startswith(".")]
        if not names:
            return None
        name = names[0]
        suffix = "/" if (base / name).is_dir() else ""
        return value[: len(value) - len(stem)] + name + suffix


class PathInput(Input):
    """A host path field: tab takes the completion shown (as → does) and keeps focus while there is one
    or the path is unfinished (a folder, or a path that does not exist yet)."""

    BINDINGS: ClassVar = [Binding("tab", "complete", "Complete the path", show=False)]

    def __init__(self, value: str = "", **options: object) -> None:
        super().__init__(value, suggester=PathSuggester(), compact=True, **options)  # type: ignore[arg-type]

    def action_complete(self) -> None:
        if self._suggestion and self._suggestion != self.value:
            self.value = self._suggestion
            self.cursor_position = len(self.value)
            return
        path = Path(os.path.expanduser(self.value)) if self.value else None
        if path is None or (path.exists() and not path.is_dir()):
            self.screen.focus_next()


class Dialog(ModalScreen[object]):
    """Common look: a titled box in the middle; escape cancels."""

    BINDINGS: ClassVar = [Binding("escape", "cancel", "Cancel", show=True)]
    TITLE_TEXT = ""

    def on_mount(self) -> None:
        """The dialog's own footer: its keys, over the main screen's (which are not in force under it)."""
        self.mount(Footer(compact=True, show_command_palette=False))

    def action_cancel(self) -> None:
        self.dismiss(None)


def _split_patterns(text: str) -> tuple[str, ...]:
    """Patterns separated by spaces (a comma before the space is a separator too): a comma inside a
    pattern, as in `a{1,3}`, is the pattern's."""
    return tuple(part.removesuffix(",") for part in text.split() if part.removesuffix(","))


def _parse_ports(text: str) -> tuple[int, ...]:
    """Port numbers separated by spaces or commas; ValueError naming the first one that is not 1-65535."""
    ports = _split_patterns(text)
    for port in ports:
        if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f'"{port}" is not a port number (use 1-65535).')
    return tuple(int(port) for port in ports)


class NewSessionScreen(Dialog):
    """Runtime + network policy (none, filtered with allow/deny lists, host) for a new session, and
    whether it is stateful."""

    HELP: ClassVar[str] = (
        "A session is a persistent container: files in /sandbox and installed packages survive between "
        "runs. Stateful (python, node, bash): one interpreter runs the code and keeps its variables between "
        "runs, and the values the code displays appear under the output. Pick its runtime "
        "and network. 'filtered' sends traffic through a proxy that allows or blocks each host by the "
        "regular expressions below (blacklist wins; an empty whitelist allows every host not "
        "blacklisted), lets HTTPS reach port 443 and the extra ports listed, and logs every request "
        "to the network inspector."
    )
    BINDINGS: ClassVar = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "create", "Create", show=True),
    ]

    def __init__(self, runtime: str, network: str) -> None:
        super().__init__()
        self._runtime = runtime
        self._network = network

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="new-session-dialog") as box:
            box.border_title = "New session"
            with Horizontal(classes="field"):
                yield Label("Runtime", classes="label")
                yield Select(
                    [(r, r) for r in RUNTIME_NAMES],
                    value=self._runtime,
                    allow_blank=False,
                    id="ns-runtime",
                    compact=True,
                )
            with Horizontal(classes="field"):
                yield Label("Network", classes="label")
                with RadioSet(id="ns-network"):
                    for name in NETWORK_POLICIES:
                        yield RadioButton(name, value=name == self._network, id=f"ns-net-{name}")
            with Horizontal(classes="field"):
                yield Label("State", classes="label")
                yield MarkBox("stateful: variables survive runs", id="ns-stateful", compact=True)
            with Vertical(id="ns-filters"):
                with Horizontal(classes="field"):
                    yield Label("Allow", classes="label")
                    yield Input(placeholder=r"host regexes, e.g. (.*\.)?pypi\.org", id="ns-whitelist", compact=True)
                with Horizontal(classes="field"):
                    yield Label("Deny", classes="label")
                    yield Input(placeholder=r"e.g. .*\.evil\.com", id="ns-blacklist", compact=True)
                with Horizontal(classes="field"):
                    yield Label("Ports", classes="label")
                    yield Input(placeholder="extra HTTPS ports besides 443, e.g. 8443", id="ns-ports", compact=True)
            yield Static("", id="ns-note", classes="note")
            with Horizontal(classes="buttons"):
                yield Button("Create", variant="primary", id="ns-create", compact=True)
                yield Button("Cancel", id="ns-cancel", compact=True)

    def on_mount(self) -> None:
        self._network_changed()
        self._runtime_changed()
        self.query_one("#ns-runtime", Select).focus()

    @on(Select.Changed, "#ns-runtime")
    def _runtime_changed(self) -> None:
        """Stateful only where the runtime has a long-lived interpreter."""
        runtime = str(self.query_one("#ns-runtime", Select).value)
        box = self.query_one("#ns-stateful", Checkbox)
        box.disabled = runtime not in STATEFUL_RUNTIMES
        box.tooltip = stateless_reason(runtime) if box.disabled else None
        if box.disabled:
            box.value = False

    @property
    def network(self) -> NetworkMode:
        pressed = self.query_one("#ns-network", RadioSet).pressed_button
        return next(
            (name for name in NETWORK_POLICIES if pressed is not None and pressed.id == f"ns-net-{name}"), "none"
        )

    @on(RadioSet.Changed)
    def _network_changed(self) -> None:
        network = self.network
        self.query_one("#ns-filters").display = network == "filtered"
        notes: dict[NetworkMode, str] = {
            "none": "No network: only loopback. Nothing is logged.",
            "filtered": "Requests go through the policy proxy and appear in the network inspector.",
            "host": "[b $warning]host: the sandbox gets this machine's network, fully open.[/]",
        }
        self._note(notes[network])

    def _note(self, text: str, error: bool = False) -> None:
        note = self.query_one("#ns-note", Static)
        note.update(text)
        note.set_class(error, "-error")

    def spec(self) -> SessionSpec | None:
        """The dialog's values, or None (with the reason shown) when a pattern is not a regex or a
        port not a port number."""
        runtime = self.query_one("#ns-runtime", Select).value
        network = self.network
        whitelist: tuple[str, ...] = ()
        blacklist: tuple[str, ...] = ()
        ports: tuple[int, ...] = ()
        if network == "filtered":
            whitelist = _split_patterns(self.query_one("#ns-whitelist", Input).value)
            blacklist = _split_patterns(self.query_one("#ns-blacklist", Input).value)
            for pattern in (*whitelist, *blacklist):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    self._note(f'"{pattern}" is not a valid regular expression ({exc}).', error=True)
                    return None
            try:
                ports = _parse_ports(self.query_one("#ns-ports", Input).value)
            except ValueError as exc:
                self._note(str(exc), error=True)
                return None
        stateful = self.query_one("#ns-stateful", Checkbox).value
        return SessionSpec(str(runtime), network, whitelist, blacklist, ports, stateful=stateful)

    @on(Button.Pressed, "#ns-create")
    def action_create(self) -> None:
        spec = self.spec()
        if spec is not None:
            self.dismiss(spec)

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_create()

    @on(Button.Pressed, "#ns-cancel")
    def _cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(Dialog):
    """Yes or no."""

    BINDINGS: ClassVar = [
        Binding("n,escape", "cancel", "No"),
        Binding("y", "confirm", "Yes"),
    ]

    def __init__(self, title: str, question: str, yes: str = "Yes", variant: ButtonVariant = "error") -> None:
        super().__init__()
        self._title = title
        self._question = question
        self._yes = yes
        self._variant = variant

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -small") as box:
            box.border_title = self._title
            yield Static(self._question, classes="question")
            with Horizontal(classes="buttons"):
                labels = key_labels(self)
                yes, no = labels.bound(ConfirmScreen, "confirm"), labels.bound(ConfirmScreen, "cancel")
                yield Button(f"{self._yes} ({yes})", variant=self._variant, id="confirm-yes", compact=True)
                yield Button(f"No ({no})", id="confirm-no", compact=True)

    def on_mount(self) -> None:
        self.query_one("#confirm-no", Button).focus()

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm-yes")


class PathScreen(Dialog):
    """Asks for a host path (open a file, save as)."""

    def __init__(self, title: str, action: str, value: str = "", must_exist: bool = True) -> None:
        super().__init__()
        self._title = title
        self._action = action
        self._value = value
        self._must_exist = must_exist
        self._overwrite: Path | None = None  # the existing file a second press overwrites

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -small") as box:
            box.border_title = self._title
            yield PathInput(self._value, placeholder="path/to/file.py", id="path-input")
            yield Static("[dim]tab or → completes the path[/]", id="path-note", classes="note")
            with Horizontal(classes="buttons"):
                yield Button(self._action, variant="primary", id="path-ok", compact=True)
                yield Button("Cancel", id="path-cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#path-input", Input).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#path-ok")
    def _ok(self) -> None:
        value = self.query_one("#path-input", Input).value.strip()
        path = Path(os.path.expanduser(value)) if value else None
        note = self.query_one("#path-note", Static)
        if path is None:
            note.update("[$error]Enter a path.[/]")
        elif self._must_exist and not path.is_file():
            note.update(f"[$error]No such file: {value}[/]")
        elif not self._must_exist and not path.parent.is_dir():
            note.update(f"[$error]No such folder: {path.parent}[/]")
        elif not self._must_exist and path.is_dir():
            note.update(f"[$error]{value} is a folder: add a file name.[/]")
        elif not self._must_exist and path.exists() and self._overwrite != path:
            self._overwrite = path  # never overwrite silently: the second press does
            note.update(f"[$warning]{value} exists: {self._action} again to overwrite it.[/]")
        else:
            self.dismiss(path)

    @on(Button.Pressed, "#path-cancel")
    def _cancel(self) -> None:
        self.dismiss(None)


class RuntimeScreen(Dialog):
    """Which runtime runs a file whose extension names none (rather than guessing python)."""

    BINDINGS: ClassVar = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "use", "Use", show=True)]
    HELP: ClassVar[str] = "No runtime claims this file's extension: pick the one that runs it ({use} or enter)."

    def __init__(self, name: str, current: str) -> None:
        super().__init__()
        self._name = name
        self._current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -small", id="runtime-dialog") as box:
            box.border_title = f"Which runtime runs {self._name}?"
            yield Select([(r, r) for r in RUNTIME_NAMES], value=self._current, allow_blank=False, id="rt-select")
            yield Static("[dim]No runtime claims this extension.[/]", classes="note")
            with Horizontal(classes="buttons"):
                yield Button("Use", variant="primary", id="rt-ok", compact=True)
                yield Button("Cancel", id="rt-cancel", compact=True)

    @on(Button.Pressed, "#rt-ok")
    def action_use(self) -> None:
        value = self.query_one("#rt-select", Select).value
        self.dismiss(value if isinstance(value, str) else None)

    @on(Button.Pressed, "#rt-cancel")
    def _cancel(self) -> None:
        self.dismiss(None)


class SessionSettingsScreen(Dialog):
    """A session's run settings: timeout, memory, CPU, env, stdin file, packages (saved in the project file)."""

    BINDINGS: ClassVar = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "apply", "Apply", show=True)]
    HELP: ClassVar[str] = (
        "The selected session's run settings (timeout, memory, CPU, env, arguments, stdin file, packages), kept "
        "in the project file beside the code. Empty means the "
        "engine's default. New memory or CPU limits start a new container (its /sandbox files go). "
        "{apply} applies."
    )
    FIELDS: ClassVar[tuple[tuple[str, str, str], ...]] = (
        ("timeout", "Timeout", "ms, e.g. 10000"),
        ("memory", "Memory", "e.g. 512m, 1g"),
        ("cpu", "CPU", "cores, e.g. 1.5"),
        ("env", "Env", "KEY=value KEY2=value2"),
        ("args", "Arguments", "the program's arguments, quoted as in a shell: --name 'a b'"),
        ("stdin", "Stdin file", "a file fed to each run's stdin"),
        ("packages", "Packages", "installed before each run, e.g. rich httpx"),
    )

    def __init__(self, session_name: str, settings: RunSettings) -> None:
        super().__init__()
        self._name = session_name
        self._settings = settings

    def compose(self) -> ComposeResult:
        current = self._settings
        values = {
            "timeout": str(current.timeout_ms or ""),
            "memory": current.memory_limit or "",
            "cpu": str(current.cpu_limit or ""),
            "env": " ".join(f"{key}={value}" for key, value in current.env.items()),
            "args": shlex.join(current.args),
            "stdin": current.stdin_file or "",
            "packages": " ".join(current.packages),
        }
        with Vertical(classes="dialog", id="settings-dialog") as box:
            box.border_title = f"Run settings · {self._name}"
            for name, label, placeholder in self.FIELDS:
                with Horizontal(classes="field"):
                    yield Label(label, classes="label")
                    if name == "stdin":
                        yield PathInput(values[name], placeholder=placeholder, id=f"set-{name}")
                    else:
                        yield Input(values[name], placeholder=placeholder, id=f"set-{name}", compact=True)
            yield Static("", id="set-note", classes="note")
            with Horizontal(classes="buttons"):
                yield Button("Apply", variant="primary", id="set-apply", compact=True)
                yield Button("Cancel", id="set-cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#set-timeout", Input).focus()

    def _value(self, name: str) -> str:
        return self.query_one(f"#set-{name}", Input).value.strip()

    def settings(self) -> RunSettings | None:
        """The dialog's values, or None with the reason shown."""
        note = self.query_one("#set-note", Static)
        env: dict[str, str] = {}
        for pair in self._value("env").split():
            key, equals, value = pair.partition("=")
            if not equals or not key:
                note.update(f'[$error]"{pair}" is not KEY=value.[/]')
                return None
            env[key] = value
        timeout, cpu = self._value("timeout"), self._value("cpu")
        try:
            args = shlex.split(self._value("args"))  # split only: the arguments are an argv, never run by a shell
        except ValueError as exc:
            note.update(f"[$error]Arguments: {exc}.[/]")
            return None
        try:
            return RunSettings(
                timeout_ms=int(timeout) if timeout else None,
                memory_limit=self._value("memory") or None,
                cpu_limit=float(cpu) if cpu else None,
                env=env,
                args=args,
                stdin_file=self._value("stdin") or None,
                packages=self._value("packages").split(),
            )
        except ValueError as exc:  # int()/float() and pydantic's ValidationError
            note.update(f"[$error]{one_line(exc)}[/]")
            return None

    @on(Input.Submitted)
    @on(Button.Pressed, "#set-apply")
    def action_apply(self) -> None:
        settings = self.settings()
        if settings is not None:
            self.dismiss(settings)

    @on(Button.Pressed, "#set-cancel")
    def _cancel(self) -> None:
        self.dismiss(None)


@dataclass(frozen=True)
class Transfer:
    direction: str  # "upload" or "download"
    host: Path
    sandbox: str


class TransferScreen(Dialog):
    """Upload a host file into the session, or download one from it."""

    HELP: ClassVar[str] = (
        "Upload copies a file from this machine into the session's /sandbox (or /tmp); download copies "
        "one out. Paths complete as you type (tab or →)."
    )

    def __init__(self, direction: str, session_name: str, sandbox_paths: Sequence[str], initial: str | None) -> None:
        super().__init__()
        self.direction = direction
        self._session = session_name
        self._sandbox_paths = list(sandbox_paths)
        self._initial = initial
        self._target_edited = False
        self._overwrite: Path | None = None  # the existing host file a second press overwrites

    def compose(self) -> ComposeResult:
        upload = self.direction == "upload"
        sandbox_input = Input(
            self._initial if not upload and self._initial else ("/sandbox/" if not upload else ""),
            placeholder="/sandbox/file",
            id="sandbox-path",
            suggester=SuggestFromList(self._sandbox_paths) if self._sandbox_paths else None,
            compact=True,
        )
        host_default = "" if upload else self._host_default(self._initial)
        host_input = PathInput(host_default, placeholder="path on this machine", id="host-path")
        with Vertical(classes="dialog", id="transfer-dialog") as box:
            box.border_title = f"Upload into {self._session}" if upload else f"Download from {self._session}"
            first: tuple[str, Input] = ("From (host)", host_input)
            second: tuple[str, Input] = ("To (sandbox)", sandbox_input)
            if not upload:
                first, second = ("From (sandbox)", sandbox_input), ("To (host)", host_input)
            for label, field in (first, second):
                with Horizontal(classes="field"):
                    yield Label(label, classes="label")
                    yield field
            yield Static("", id="transfer-note", classes="note")
            with Horizontal(classes="buttons"):
                yield Button("Upload" if upload else "Download", variant="primary", id="transfer-ok", compact=True)
                yield Button("Cancel", id="transfer-cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#host-path" if self.direction == "upload" else "#sandbox-path", Input).focus()

    @staticmethod
    def _host_default(sandbox_path: str | None) -> str:
        return Path(sandbox_path).name if sandbox_path and not sandbox_path.endswith("/") else ""

    @on(Input.Changed, "#host-path")
    def _host_changed(self, event: Input.Changed) -> None:
        if self.direction == "upload" and not self._target_edited:
            name = Path(event.value).name
            target = self.query_one("#sandbox-path", Input)
            with target.prevent(Input.Changed):
                target.value = f"/sandbox/{name}" if name else ""
        self._check()

    @on(Input.Changed, "#sandbox-path")
    def _sandbox_changed(self, event: Input.Changed) -> None:
        if self.direction == "upload":
            self._target_edited = True
        else:
            host = self.query_one("#host-path", Input)
            if not host.value or host.value == self._host_default(self._initial):
                self._initial = event.value
                with host.prevent(Input.Changed):
                    host.value = self._host_default(event.value)
        self._check()

    def _check(self) -> Transfer | None:
        note = self.query_one("#transfer-note", Static)
        host_text = self.query_one("#host-path", Input).value.strip()
        sandbox = self.query_one("#sandbox-path", Input).value.strip()
        host = Path(os.path.expanduser(host_text)) if host_text else None
        problem = ""
        if not sandbox.startswith(("/sandbox/", "/tmp/")) or sandbox.endswith("/") or ".." in sandbox.split("/"):
            problem = "The sandbox path must be a file in /sandbox or /tmp."
        elif host is None:
            problem = "Enter a host path."
        elif self.direction == "upload" and not host.is_file():
            problem = f"No such file: {host_text}"
        elif self.direction == "download" and host.is_dir():
            problem = f"{host_text} is a folder: add a file name."
        elif self.direction == "download" and not host.parent.exists():
            problem = f"No such folder: {host.parent}"
        warning = ""
        if not problem and self.direction == "download" and host is not None and host.exists():
            warning = f"[$warning]{host_text} exists: Download again to overwrite it.[/]"
        note.update(f"[$error]{problem}[/]" if problem and host_text and sandbox else warning)
        if problem or host is None:
            return None
        return Transfer(self.direction, host, sandbox)

    @on(Input.Submitted)
    @on(Button.Pressed, "#transfer-ok")
    def _ok(self) -> None:
        transfer = self._check()
        if transfer is None:
            note = self.query_one("#transfer-note", Static)
            if not str(note.content):
                note.update("[$error]Fill in both paths.[/]")
            return
        if transfer.direction == "download" and transfer.host.exists() and self._overwrite != transfer.host:
            self._overwrite = transfer.host  # never overwrite silently: the second press does
            return
        self.dismiss(transfer)

    @on(Button.Pressed, "#transfer-cancel")
    def _cancel(self) -> None:
        self.dismiss(None)


class RequestScreen(Dialog):
    """One network request in full."""

    BINDINGS: ClassVar = [Binding("escape,enter,q", "cancel", "Close")]

    def __init__(self, entry: NetworkLogEntry) -> None:
        super().__init__()
        self._entry = entry

    def compose(self) -> ComposeResult:
        entry = self._entry
        rows = [
            ("time", entry.timestamp),
            ("method", entry.method),
            ("host", entry.host),
            ("port", str(entry.port)),
            ("path", entry.path or "— (TLS tunnel)"),
            ("action", entry.action),
            ("rule", entry.rule or "— (default policy)"),
            ("status", str(entry.status) if entry.status is not None else "—"),
            ("bytes in", str(entry.bytes_in)),
            ("bytes out", str(entry.bytes_out)),
            ("duration", f"{entry.duration_ms:.1f} ms"),
        ]
        with VerticalScroll(classes="dialog", id="request-dialog") as box:
            box.border_title = "Request"
            yield Static(describe(entry), classes=f"summary -{entry.action.lower()}")
            yield Static("\n".join(f"[dim]{name:>9}[/]  {value}" for name, value in rows), markup=True)
            with Horizontal(classes="buttons"):
                yield Button("Close", id="request-close", compact=True)

    @on(Button.Pressed, "#request-close")
    def _close(self) -> None:
        self.dismiss(None)


class ImagesScreen(Dialog):
    """Offers to build missing images, then shows the build's progress (the main screen runs the build,
    so hiding this dialog does not stop it)."""

    BINDINGS: ClassVar = [Binding("escape", "cancel", "Hide")]

    class BuildRequested(Message):
        pass

    def __init__(self, missing: list[str], start_build: Callable[[], None], building: bool = False) -> None:
        super().__init__()
        self.missing = missing
        self._start_build = start_build
        self.state = "building" if building else "asking"  # asking, building, done, failed

    def compose(self) -> ComposeResult:
        names = ", ".join(f"isol8:{name}" for name in self.missing)
        with Vertical(classes="dialog", id="images-dialog") as box:
            box.border_title = "Images missing"
            yield Static(
                f"The images [b]{names}[/] are missing or outdated, so those runtimes cannot run yet.\n"
                "Build them now? A first build takes a minute or two; the workbench stays usable.",
                id="images-question",
            )
            yield Log(id="images-log", max_lines=500)
            with Horizontal(classes="buttons"):
                yield Button("Build", variant="primary", id="images-build", compact=True)
                yield Button("Not now", id="images-close", compact=True)

    def on_mount(self) -> None:
        self.query_one("#images-log").display = self.state == "building"
        if self.state == "building":
            self._show_building()
        self.query_one("#images-build", Button).focus()

    def _show_building(self) -> None:
        self.query_one("#images-log").display = True
        self.query_one("#images-build", Button).disabled = True
        self.query_one("#images-close", Button).label = "Hide"
        self.query_one(".dialog").border_title = "Building images…"

    @on(Button.Pressed, "#images-build")
    def start(self) -> None:
        if self.state == "building":
            return
        self.state = "building"
        self._show_building()
        self._start_build()

    def progress(self, line: str) -> None:
        self.query_one("#images-log", Log).write_line(line)

    def finished(self, error: str | None) -> None:
        log = self.query_one("#images-log", Log)
        box = self.query_one(".dialog")
        if error:
            self.state = "failed"
            box.border_title = "Image build failed"
            log.write_line(f"✗ {error}")
            self.query_one("#images-build", Button).disabled = False
        else:
            self.state = "done"
            box.border_title = "Images ready"
            log.write_line("✓ done: every runtime can run.")
            self.query_one("#images-build", Button).display = False
        self.query_one("#images-close", Button).label = "Close"

    @on(Button.Pressed, "#images-close")
    def _close(self) -> None:
        self.dismiss(self.state)

    def action_cancel(self) -> None:
        self.dismiss(self.state)
