"""The workbench screen: sessions | editor | output, network and files; it owns the run orchestration.

Workers call the bridge; the bridge posts messages back here; the handlers below set the screen's
state and route messages. The state the panes show (the runtime, the selected session, Docker, the
run status, ...) is in reactives the panes are bound to, and each pane renders its own text from
them. Which session runs what is isol8_tui.sessions' policy. Messages of a run that is no longer
the current one are ignored, so a run cancelled by a newer one cannot write into the newer run's panes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Container, Horizontal
from textual.geometry import Offset
from textual.reactive import var
from textual.screen import Screen
from textual.theme import Theme
from textual.widget import Widget
from textual.widgets import Footer, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from engine import ExecutionRequest, NetworkLogEntry
from engine.config import TuiSettings
from engine.errors import PolicyRefused
from engine.models import NetworkMode, RichResult
from engine.terminal import Terminal
from isol8_tui import har, keys, project, rich_results, sessions
from isol8_tui.bridge import (
    DockerChecked,
    EngineBridge,
    FileTransferred,
    ImageBuildFinished,
    ImageBuildProgressed,
    ImagesChecked,
    InterpreterReset,
    NetworkRequestCaptured,
    OutputReceived,
    ResultReceived,
    RunFinished,
    RunNoticed,
    RunStarted,
    SandboxListed,
    SessionChanged,
    WatchedFileChanged,
    request_extension,
    request_file_name,
    runtime_for_path,
)
from isol8_tui.output import one_line
from isol8_tui.screens.dialogs import (
    ConfirmScreen,
    ImagesScreen,
    NewSessionScreen,
    PathScreen,
    RequestScreen,
    RuntimeScreen,
    SessionSettingsScreen,
    Transfer,
    TransferScreen,
)
from isol8_tui.screens.jump import JumpScreen, JumpTarget
from isol8_tui.screens.terminal import InteractiveRun, TerminalScreen, terminal_size
from isol8_tui.sessions import RunSettings, Session, SessionSpec
from isol8_tui.transcript import Transcript
from isol8_tui.widgets.bars import RunBar, RunStatus, TopBar
from isol8_tui.widgets.editor import CodeEditor, EditorPane, display_path
from isol8_tui.widgets.files import FilesPane, FileTable, Listing
from isol8_tui.widgets.network import NetworkInspector, NetworkTable
from isol8_tui.widgets.output import OutputPane, OutputPanes, clean, new_transcript
from isol8_tui.widgets.results import ResultsPane, ResultView
from isol8_tui.widgets.sessions import SessionList, SessionSidebar

DOCKER_RETRY_SECONDS = 5.0
DOCKER_CHECK_SECONDS = 30.0
STATUS_TICK_SECONDS = 0.1


@dataclass
class SessionView:
    """What the panes show for one session: its run in flight, the last run's status, its output and
    its requests. Switching sessions shows another session's view; each session's runs fill its own."""

    stdout: Transcript
    stderr: Transcript
    requests: list[NetworkLogEntry] = field(default_factory=list)
    results: list[RichResult] = field(default_factory=list)  # a stateful session's displayed values
    status: RunStatus = field(default_factory=RunStatus)
    run: int | None = None  # the run in flight
    interactive: InteractiveRun | None = None  # the last interactive run, while no other run replaced it


class MainScreen(Screen[None]):
    """Everything on one screen. From 140 columns: sessions | editor | results. Below that the session
    sidebar slides in on demand (f2), and below 100 the editor sits above the results."""

    # Textual annotates this `ClassVar[...] | None`, which mypy reads as an instance variable, so a
    # ClassVar annotation here would not type-check.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-medium"), (140, "-wide")]  # noqa: RUF012
    BINDINGS: ClassVar = keys.bindings(
        "jump",
        "run",
        "run-interactive",
        "stop",
        "save",
        "save-as",
        "open",
        "new-session",
        "toggle-sidebar",
        "session-settings",
        "reset-session",
        "scratch",
        "clear-output",
        "toggle-keep-output",
        "upload",
        "download",
        "delete-session",
        "focus-sessions",
        "focus-editor",
        "focus-output",
        "focus-network",
        "focus-files",
    )

    runtime: var[str] = var("python", init=False)
    """The buffer's runtime: its highlighting, and which session runs it."""
    selected: var[Session | None] = var(None, init=False)
    """The session that runs the code."""
    keep_output: var[bool] = var(False, init=False)
    new_session_network: var[NetworkMode] = var("none", init=False)
    """The network policy a new session gets."""
    watch_enabled: var[bool] = var(True, init=False)
    watching: var[Path | None] = var(None, init=False)
    """The file whose changes on disk re-run it."""
    docker_available: var[bool | None] = var(None, init=False)
    building_images: var[bool] = var(False, init=False)
    run_status: var[RunStatus] = var(RunStatus, init=False)
    """What the run bar says about the last run, the one in flight, or why nothing runs."""

    def __init__(
        self,
        bridge: EngineBridge,
        settings: TuiSettings,
        *,
        path: Path | None,
        text: str,
        runtime: str,
        watch: bool,
        new_file: bool = False,
        cursor_blink: bool = True,
        check_docker: bool = True,
    ) -> None:
        super().__init__()
        self.bridge = bridge
        self.settings = settings
        self.path = path
        self.set_reactive(MainScreen.runtime, runtime)
        self.set_reactive(MainScreen.watch_enabled, watch)
        self.set_reactive(MainScreen.keep_output, not settings.clear_output_on_run)
        self._text = text
        self._new_file = new_file
        self._cursor_blink = cursor_blink
        self._check_docker = check_docker
        self.run_id = 0
        self.views: dict[str, SessionView] = {}
        self.run_sessions: dict[int, str] = {}  # run id -> its session's id
        self.missing_images: list[str] = []
        self._docker_retry = False
        self.images_dialog: ImagesScreen | None = None
        self.scratch: Session | None = None
        self.started = False
        self._project_broken = False  # the project file could not be read: never overwrite it

    # --- layout -------------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield TopBar(self.settings.watch_debounce_ms).data_bind(
            session=MainScreen.selected,
            runtime=MainScreen.runtime,
            watch_enabled=MainScreen.watch_enabled,
            watching=MainScreen.watching,
            docker_available=MainScreen.docker_available,
            building_images=MainScreen.building_images,
        )
        yield RunBar(self.runtime, self.new_session_network, self.keep_output).data_bind(
            runtime=MainScreen.runtime,
            network=MainScreen.new_session_network,
            keep=MainScreen.keep_output,
            status=MainScreen.run_status,
        )
        with Horizontal(id="body"):
            yield SessionSidebar()
            with Container(id="work"):
                editor = EditorPane(self._text, self.runtime, self.path, cursor_blink=self._cursor_blink)
                yield editor.data_bind(MainScreen.runtime)
                with TabbedContent(id="results", initial="tab-output"):
                    with TabPane("Output", id="tab-output"):
                        yield OutputPanes(self.settings.scrollback_lines)
                        yield ResultsPane(self.settings.images)
                    with TabPane("Network", id="tab-network"):
                        yield NetworkInspector().data_bind(session=MainScreen.selected)
                    with TabPane("Files", id="tab-files"):
                        yield FilesPane().data_bind(session=MainScreen.selected)
        yield Footer(compact=True)

    @property
    def editor_pane(self) -> EditorPane:
        return self.query_one(EditorPane)

    @property
    def outputs(self) -> OutputPanes:
        return self.query_one(OutputPanes)

    @property
    def result_pane(self) -> ResultsPane:
        """A stateful session's results, under the output."""
        return self.query_one(ResultsPane)

    @property
    def network(self) -> NetworkInspector:
        return self.query_one(NetworkInspector)

    @property
    def files(self) -> FilesPane:
        return self.query_one(FilesPane)

    @property
    def runbar(self) -> RunBar:
        return self.query_one(RunBar)

    @property
    def topbar(self) -> TopBar:
        return self.query_one(TopBar)

    @property
    def sidebar(self) -> SessionSidebar:
        return self.query_one(SessionSidebar)

    @property
    def results(self) -> TabbedContent:
        return self.query_one("#results", TabbedContent)

    @property
    def dirty(self) -> bool:
        return self.editor_pane.dirty

    def start(self) -> None:
        """Sessions, Docker checks and the watcher; called once the first frame is up (App.on_ready),
        when every pane is mounted."""
        if self.started:
            return
        self.started = True
        self.bridge.target = self
        self.scratch = self.bridge.create_scratch()
        self.selected = self._restore_sessions() or self.bridge.create_session(SessionSpec(self.runtime, "none"))
        self.editor_pane.new_file = self._new_file
        self._show_view(self.view_of(self.selected))
        self._refresh_sessions()
        self.set_interval(1.0, self._tick)
        self.set_interval(STATUS_TICK_SECONDS, self._tick_status)
        if self._check_docker:
            self.check_docker()
        if self.watch_enabled and self.path is not None:
            self.start_watching(self.path)
        self.app.theme_changed_signal.subscribe(self, self._theme_changed)
        self._theme_changed(self.app.current_theme)
        self.query_one(CodeEditor).focus()

    # --- the project file -----------------------------------------------------------------------------------
    @property
    def project_file(self) -> Path:
        return project.project_path(self.path)

    def _restore_sessions(self) -> Session | None:
        """The project file's sessions, created again (new containers); the one to select: the newest of
        the buffer's runtime, else the first. None when there is no project file (or it is invalid)."""
        try:
            saved = project.load(self.project_file)
        except project.ProjectFileInvalid as exc:
            self.notify(str(exc), title="Project file not used", severity="warning", timeout=10)
            self._project_broken = True
            return None
        if saved is None or not saved.sessions:
            return None
        restored = []
        for entry in saved.sessions:
            try:
                restored.append(self.bridge.create_session(entry.spec()))
            except ValueError as exc:
                self.notify(one_line(exc), title=f"A saved {entry.runtime} session was skipped", severity="warning")
        same = [s for s in restored if s.runtime == self.runtime]
        if same:
            return same[-1]
        return restored[0] if restored else None

    def save_project(self) -> None:
        """Every persistent session with its settings, beside the code (not over a file it could not read)."""
        if self._project_broken:
            return
        specs = [spec for s in self.sessions_in_order() if (spec := s.spec()) is not None]
        try:
            project.save(self.project_file, specs)
        except OSError as exc:
            self.notify(f"Cannot write {self.project_file}: {exc.strerror or exc}", severity="warning", timeout=6)

    def action_session_settings(self) -> None:
        session = self.selected
        if session is None:
            return

        def chosen(settings: object) -> None:
            if isinstance(settings, RunSettings):
                self.run_worker(self._apply_settings(session, settings), group="sessions", exit_on_error=False)

        self.app.push_screen(SessionSettingsScreen(session.name, session.settings), chosen)

    async def _apply_settings(self, session: Session, settings: RunSettings) -> None:
        await self.bridge.configure(session, settings)
        self.save_project()
        self.notify(f"Run settings of {session.name} saved in {display_path(self.project_file)}.", timeout=3)
        self._warm_up_if_ready(session)

    def _theme_changed(self, theme: Theme) -> None:
        """Syntax colours made for dark backgrounds are unreadable on light ones."""
        self.query_one(CodeEditor).theme = "css" if theme.dark else "github_light"

    # --- runs ------------------------------------------------------------------------------------------------
    def action_run(self) -> None:
        self.start_run(self.editor_pane.text, "key")

    def action_run_interactive(self) -> None:
        """Run the buffer on a terminal, on a screen of its own; while the selected session's interactive
        run goes on, open its screen again instead."""
        session = self.selected
        if session is not None:
            view = self.view_of(session)
            if view.interactive is not None and view.run == view.interactive.run_id:
                self._open_terminal(view.interactive)
                return
            if session.stateful:
                new = keys.key_labels(self)["new-session"]
                self.notify(
                    f"{session.name} is stateful: its interpreter reads only its cells, no terminal. Run it "
                    f"interactively in a session without stateful ({new}).",
                    title="No interactive run",
                    severity="warning",
                )
                return
        rows, cols = terminal_size(self.app.size)
        self.start_run(self.editor_pane.text, "interactive", Terminal(rows, cols))

    def _open_terminal(self, run: InteractiveRun) -> None:
        self.app.push_screen(TerminalScreen(run))

    def _terminal_screen(self, view: SessionView) -> TerminalScreen | None:
        """The terminal screen on top, when it shows this view's interactive run."""
        screen = self.app.screen
        if isinstance(screen, TerminalScreen) and view.interactive is not None and screen.run is view.interactive:
            return screen
        return None

    def start_run(self, code: str, trigger: str, terminal: Terminal | None = None) -> None:
        """Start a run of `code` in the selected session; that session's run in flight is cancelled first.
        Other sessions' runs go on: each session runs on its own. With a `terminal` the run is interactive
        and its screen opens."""
        session = self.selected
        if session is None:
            return
        if not session.can_run(self.runtime):
            self._choose_session_for(self.runtime)
            session = self.selected
            if session is None:
                return
        settings = session.settings
        try:
            stdin = None
            if settings.stdin_file:
                stdin = (self.project_file.parent / os.path.expanduser(settings.stdin_file)).read_bytes()
            name = request_file_name(self.runtime, self.path)
            request = ExecutionRequest(
                code=code,
                runtime=self.runtime,
                file_name=name,
                file_extension=None if name else request_extension(self.runtime, self.path),
                timeout_ms=settings.timeout_ms,
                env=settings.env,
                args=settings.args,
                stdin=stdin,
                install_packages=settings.packages,
            )
        except OSError as exc:
            message = f"Cannot read the stdin file {settings.stdin_file}: {exc.strerror or exc}; fix it with"
            self.notify(f"{message} {keys.key_labels(self)['session-settings']}.", title="Cannot run", severity="error")
            return
        except ValueError as exc:
            self.notify(one_line(exc), title="Cannot run", severity="error")
            return
        self.run_id += 1
        view = self.view_of(session)
        view.run = self.run_id
        self.run_sessions[self.run_id] = session.id
        self.outputs.flush()
        if self.keep_output:
            for transcript in (view.stdout, view.stderr):
                if len(transcript):
                    transcript.mark(f"── run {self.run_id} · {session.name} · {self.runtime} ──")
        else:
            view.stdout = new_transcript(self.settings.scrollback_lines)
            view.stderr = new_transcript(self.settings.scrollback_lines)
            view.requests = []
            view.results = []
        self._show_view(view)
        if view.interactive is not None and not view.interactive.ended:
            self._show_terminal_status(view, RunStatus("stopped"))  # a newer run replaces it
        view.interactive = None if terminal is None else InteractiveRun(self.run_id, session.name, terminal)
        self.run_worker(
            self.bridge.run(session, request, self.run_id, trigger, terminal),
            name=f"run {self.run_id}",
            group=f"run {session.id}",
            exclusive=True,
            exit_on_error=False,
        )
        if view.interactive is not None:
            self._open_terminal(view.interactive)

    @property
    def current_run(self) -> int | None:
        """The selected session's run in flight."""
        return self.view_of(self.selected).run if self.selected is not None else None

    def view_of(self, session: Session) -> SessionView:
        view = self.views.get(session.id)
        if view is None:
            lines = self.settings.scrollback_lines
            view = self.views[session.id] = SessionView(new_transcript(lines), new_transcript(lines))
        return view

    def _run_view(self, run_id: int) -> tuple[SessionView, bool] | None:
        """The view of the session a message's run belongs to, and whether it is on screen; None when the
        run is not that session's current one (a newer run replaced it, or the session is gone)."""
        session_id = self.run_sessions.get(run_id)
        view = self.views.get(session_id or "")
        if view is None or view.run != run_id:
            return None
        return view, self.selected is not None and self.selected.id == session_id

    def _show_view(self, view: SessionView) -> None:
        """The panes and the status line show this session's run."""
        self.outputs.show(view.stdout, view.stderr)
        self.result_pane.show(view.results)
        self.network.show(view.requests)
        self.run_status = view.status.at(self.bridge.backend.clock()) if view.run is not None else view.status

    def _set_status(self, view: SessionView, status: RunStatus, shown: bool) -> None:
        view.status = status
        if shown:
            self.run_status = status
        if view.interactive is not None and view.interactive.run_id == view.run:
            self._show_terminal_status(view, status)

    def _show_terminal_status(self, view: SessionView, status: RunStatus) -> None:
        if view.interactive is None:
            return
        view.interactive.status = status
        screen = self._terminal_screen(view)
        if screen is not None:
            screen.show_status()

    def watch_run_status(self) -> None:
        self.refresh_bindings()  # Stop shows in the footer only while the selected session runs

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.current_run is not None
        return True

    def action_stop(self) -> None:
        session = self.selected
        if session is None or self.current_run is None:
            self.notify(f"Nothing is running in {session.name if session else 'this session'}.", timeout=2)
            return
        self.workers.cancel_group(self, f"run {session.id}")

    @on(RunBar.RunPressed)
    def _run_pressed(self) -> None:
        self.start_run(self.editor_pane.text, "button")

    @on(RunBar.StopPressed)
    def _stop_pressed(self) -> None:
        self.action_stop()

    @on(RunStarted)
    def show_run_started(self, message: RunStarted) -> None:
        found = self._run_view(message.run_id)
        if found is None:
            return
        view, shown = found
        session = self.bridge.sessions.get(message.session_id)
        status = RunStatus.running(session.name if session else "", message.started_at)
        self._set_status(view, status.at(self.bridge.backend.clock()), shown)

    @on(OutputReceived)
    def append_output(self, message: OutputReceived) -> None:
        found = self._run_view(message.run_id)
        if found is None:
            return
        view, shown = found
        if view.interactive is not None and view.interactive.run_id == message.run_id:
            view.interactive.text.feed(message.text)
            screen = self._terminal_screen(view)
            if screen is not None:
                screen.output_arrived()
        if shown:
            self.outputs.pane(message.stream).append(message.text)
        else:
            (view.stderr if message.stream == "stderr" else view.stdout).write(clean(message.text))

    @on(ResultReceived)
    def add_result(self, message: ResultReceived) -> None:
        found = self._run_view(message.run_id)
        if found is None:
            return
        view, shown = found
        view.results.append(message.result)
        if shown:
            self.result_pane.add(message.result)

    @on(RunNoticed)
    def show_notice(self, message: RunNoticed) -> None:
        found = self._run_view(message.run_id)
        if found is None:
            return
        view, shown = found
        if shown:
            self.outputs.notice(message.text)
        else:
            view.stderr.mark(f"--- {message.text} ---")

    @on(NetworkRequestCaptured)
    def add_request(self, message: NetworkRequestCaptured) -> None:
        found = self._run_view(message.run_id)
        if found is None:
            return
        view, shown = found
        view.requests.append(message.entry)
        if shown:
            self.network.add(message.entry)

    @on(RunFinished)
    def show_run_result(self, message: RunFinished) -> None:
        found = self._run_view(message.run_id)
        if found is None:
            return
        view, shown = found
        finished = RunStatus.finished(message)
        if view.interactive is not None and view.interactive.run_id == message.run_id:
            self._show_terminal_status(view, finished)
        view.run = None
        if shown:
            self.outputs.flush()
        self._set_status(view, finished, shown)
        if message.interpreter == "lost":
            session = self.bridge.sessions.get(message.session_id)
            why = message.interpreter_lost or "Its interpreter ended: its variables are gone; the next run starts anew."
            title = f"{session.name if session else 'The session'}: state lost"
            self.notify(why, title=title, severity="warning", timeout=10)
        if message.error:
            if shown:
                self.outputs.failed(message.error)
            else:
                view.stderr.mark(f"✗ {message.error}")
            if not message.docker_down:
                session = self.bridge.sessions.get(message.session_id)
                title = f"Run in {session.name} failed" if session else "Run failed"
                self.notify(message.error, title=title, severity="error", timeout=8)
            if message.image_missing:
                self.check_docker()
        if shown and self.results.active == "tab-files":
            self.refresh_files()

    # --- status ------------------------------------------------------------------------------------------------
    def _tick_status(self) -> None:
        """The elapsed time of the selected session's run in flight, as of now."""
        if self.current_run is not None and self.run_status.state == "running":
            self.run_status = self.run_status.at(self.bridge.backend.clock())
            if self.selected is not None:
                view = self.view_of(self.selected)
                if view.interactive is not None and view.interactive.run_id == view.run:
                    self._show_terminal_status(view, self.run_status)

    def _tick(self) -> None:
        self.topbar.pool = self.bridge.pool_figures()
        self._refresh_sessions()

    # --- sessions ----------------------------------------------------------------------------------------------
    def sessions_in_order(self) -> list[Session]:
        return sessions.in_order(self.bridge.sessions.values())

    def _refresh_sessions(self) -> None:
        if self.selected is not None:
            self.sidebar.show(self.sessions_in_order(), self.selected.id, self.bridge.backend.clock())

    def select_session(self, session: Session) -> None:
        self.outputs.flush()
        self.selected = session
        self._show_view(self.view_of(session))
        if session.runtime is not None:
            self.runtime = session.runtime
        self._refresh_sessions()
        self._warm_up_if_ready(session)
        if self.results.active == "tab-files":
            self.refresh_files()

    def _warm_up_if_ready(self, session: Session) -> None:
        if sessions.should_warm(session, self.docker_available, self.missing_images):
            self.warm_up(session)

    def _choose_session_for(self, runtime: str) -> None:
        """Select the session that runs `runtime` (sessions.session_for), creating one when there is none."""
        session = sessions.session_for(runtime, self.bridge.sessions.values())
        if session is None:
            session = self.bridge.create_session(SessionSpec(runtime, self.new_session_network))
            self.notify(f"Created session {session.name} ({runtime}, network {session.network}).", timeout=3)
            self.select_session(session)
            self.save_project()
            return
        self.select_session(session)

    @on(RunBar.RuntimePicked)
    def change_runtime(self, message: RunBar.RuntimePicked) -> None:
        self.runtime = message.runtime
        if self.selected is not None and not self.selected.can_run(message.runtime):
            self._choose_session_for(message.runtime)
        if message.runtime in self.missing_images:
            self.offer_images()

    def pick_runtime(self, runtime: str) -> None:
        """The palette's runtime commands."""
        self.change_runtime(RunBar.RuntimePicked(runtime))

    @on(RunBar.NetworkPicked)
    def change_new_session_network(self, message: RunBar.NetworkPicked) -> None:
        self.new_session_network = message.network

    def pick_network(self, network: NetworkMode) -> None:
        """The palette's network commands: the policy the next new session gets."""
        self.new_session_network = network

    @on(RunBar.KeepToggled)
    def change_keep(self, message: RunBar.KeepToggled) -> None:
        self.keep_output = message.keep

    def action_toggle_keep(self) -> None:
        self.keep_output = not self.keep_output
        self.notify("Output is kept between runs." if self.keep_output else "Output is cleared for each run.")

    def action_clear_output(self) -> None:
        if self.selected is None:
            return
        view = self.view_of(self.selected)
        view.stdout = new_transcript(self.settings.scrollback_lines)
        view.stderr = new_transcript(self.settings.scrollback_lines)
        view.requests = []
        view.results = []
        self._show_view(view)

    def action_reset_session(self) -> None:
        """End the selected session's interpreter (stateful sessions); the bridge reports how it went."""
        session = self.selected
        if session is not None:
            self.run_worker(self.bridge.reset(session), group=f"reset {session.id}", exit_on_error=False)

    @on(InterpreterReset)
    def show_reset(self, message: InterpreterReset) -> None:
        session = self.bridge.sessions.get(message.session_id)
        name = session.name if session else "the session"
        if message.error:
            self.notify(message.error, title=f"{name} not reset", severity="warning", timeout=8)
            return
        self.notify(f"{name}'s interpreter was reset: its variables are gone, the next run starts fresh.", timeout=4)

    @on(SessionSidebar.Selected)
    def _session_picked(self, message: SessionSidebar.Selected) -> None:
        session = self.bridge.sessions.get(message.session_id)
        if session is not None:
            self.select_session(session)

    @on(SessionSidebar.NewRequested)
    def action_new_session(self) -> None:
        def created(spec: object) -> None:
            if isinstance(spec, SessionSpec):
                self.create_session(spec)

        self.app.push_screen(NewSessionScreen(self.runtime, self.new_session_network), created)

    def create_session(self, spec: SessionSpec) -> Session | None:
        try:
            session = self.bridge.create_session(spec)
        except ValueError as exc:
            self.notify(one_line(exc), title="Cannot create the session", severity="error")
            return None
        self.select_session(session)
        self.save_project()
        self.notify(f"Session {session.name} created ({session.runtime}, network {session.network}).", timeout=3)
        return session

    def action_scratch(self) -> None:
        if self.scratch is not None:
            self.select_session(self.scratch)

    @on(SessionSidebar.ScratchRequested)
    def _scratch_requested(self) -> None:
        self.action_scratch()

    @on(SessionSidebar.DeleteRequested)
    def _delete_requested(self, message: SessionSidebar.DeleteRequested) -> None:
        session = self.bridge.sessions.get(message.session_id)
        if session is not None:
            self.delete_session(session)

    def action_delete_session(self) -> None:
        if self.selected is not None:
            self.delete_session(self.selected)

    def delete_session(self, session: Session, confirm: bool = True) -> None:
        if session.scratch:
            self.notify("The scratch session is always there (it keeps nothing between runs).", timeout=3)
            return

        def answered(yes: object) -> None:
            if yes:
                self._remove_session(session)

        if not confirm:
            self._remove_session(session)
            return
        question = (
            f"Delete session [b]{session.name}[/] ({session.runtime}, network {session.network})?\n"
            "Its container is removed, with every file in /sandbox."
        )
        self.app.push_screen(ConfirmScreen("Delete session", question, "Delete"), answered)

    def _remove_session(self, session: Session) -> None:
        self.workers.cancel_group(self, f"run {session.id}")
        self.views.pop(session.id, None)
        self.bridge.sessions.pop(session.id, None)
        self.run_worker(self.bridge.delete_session(session), group="sessions", exit_on_error=False)
        if self.selected is session and self.scratch is not None:
            self.select_session(sessions.after_removal(self.bridge.sessions.values(), self.runtime, self.scratch))
        self._refresh_sessions()
        self.save_project()
        self.notify(f"Session {session.name} deleted.", timeout=3)

    @on(SessionChanged)
    def _session_changed(self, message: SessionChanged) -> None:
        self._refresh_sessions()
        self.topbar.pool = self.bridge.pool_figures()
        session = self.bridge.sessions.get(message.session_id)
        if session is None or session is not self.selected or self.current_run is not None:
            return
        if session.state == "error" and session.detail and self.run_status.state == "idle":
            self.run_status = RunStatus.failure(session.detail)

    def warm_up(self, session: Session) -> None:
        self.run_worker(self.bridge.warm_up(session), group=f"warm {session.id}", exit_on_error=False)

    # --- Docker and images --------------------------------------------------------------------------------
    def check_docker(self) -> None:
        self.run_worker(self.bridge.check_docker, thread=True, group="docker", exclusive=True, exit_on_error=False)

    def _retry_docker(self) -> None:
        self._docker_retry = False
        self._ping_docker()

    def _ping_docker(self) -> None:
        self.run_worker(self.bridge.ping, thread=True, group="docker", exclusive=True, exit_on_error=False)

    @on(DockerChecked)
    def show_docker(self, message: DockerChecked) -> None:
        was = self.docker_available
        self.docker_available = message.available
        if not message.available:
            if was is not False:
                self.notify(
                    f"{message.message}\nThe workbench keeps working; it checks again every few seconds.",
                    title="Docker is not available",
                    severity="error",
                    timeout=15,
                )
                if self.current_run is None:
                    self.run_status = RunStatus.failure("Docker is not running: start it, runs resume by themselves")
            if not self._docker_retry:
                self._docker_retry = True
                self.set_timer(DOCKER_RETRY_SECONDS, self._retry_docker)
            return
        if was is False:
            self.notify("Docker is back.", severity="information", timeout=4)
            if self.run_status.state == "error" and self.current_run is None:
                self.run_status = RunStatus()
            self.check_docker()
        elif was is None:
            self.set_interval(DOCKER_CHECK_SECONDS, self._ping_docker)

    @on(ImagesChecked)
    def show_images(self, message: ImagesChecked) -> None:
        self.missing_images = list(message.missing)
        if self.missing_images and not self.building_images:
            self.offer_images()
        if self.selected is not None:
            self._warm_up_if_ready(self.selected)

    def action_images(self) -> None:
        """The palette: check the images again; missing ones are offered for a build."""
        if self.missing_images:
            self.offer_images()
        else:
            self.notify("Checking Docker and the images…", timeout=2)
        self.check_docker()

    def offer_images(self) -> None:
        if not self.missing_images or isinstance(self.app.screen, ImagesScreen):
            return
        dialog = ImagesScreen(list(self.missing_images), self.build_images, building=self.building_images)
        self.images_dialog = dialog

        def closed(_: object) -> None:
            self.images_dialog = None

        self.app.push_screen(dialog, closed)

    def build_images(self) -> None:
        if self.building_images:
            return
        self.building_images = True
        self.run_worker(
            lambda: self.bridge.build_images(list(self.missing_images)),
            thread=True,
            group="images",
            exclusive=True,
            exit_on_error=False,
        )

    @on(ImageBuildProgressed)
    def _build_progress(self, message: ImageBuildProgressed) -> None:
        if self.images_dialog is not None:
            self.images_dialog.progress(message.line)

    @on(ImageBuildFinished)
    def _build_finished(self, message: ImageBuildFinished) -> None:
        self.building_images = False
        if self.images_dialog is not None:
            self.images_dialog.finished(message.error)
        if message.error:
            self.notify(message.error, title="Image build failed", severity="error", timeout=10)
        else:
            self.notify("Images built: every runtime can run.", timeout=4)
            self.missing_images = []
        self.check_docker()

    # --- network inspector -------------------------------------------------------------------------------------
    @on(NetworkInspector.Counted)
    def _network_counted(self, message: NetworkInspector.Counted) -> None:
        self.results.get_tab("tab-network").label = message.label

    def filter_network(self, action: str) -> None:
        self.action_focus_pane("network")
        self.network.set_filters(host="" if action == "all" else None, action=action)

    @on(NetworkInspector.ExportRequested)
    def export_har(self) -> None:
        """The selected session's requests (of its last run, or every kept run) as a HAR file."""
        session = self.selected
        if session is None:
            return
        requests = list(self.view_of(session).requests)
        if not requests:
            self.notify(f"{session.name} has no requests to export yet.", severity="warning", timeout=3)
            return

        def chosen(path: object) -> None:
            if isinstance(path, Path):
                text = json.dumps(har.har(requests), indent=2)
                if self._write_host_file(path, text, "Export failed"):
                    self.notify(f"Exported {len(requests)} requests to {display_path(path)}.", timeout=3)

        name = f"{session.name}-requests.har"
        self.app.push_screen(PathScreen("Export requests as HAR", "Export", name, must_exist=False), chosen)

    @on(NetworkInspector.AllowRequested)
    async def allow_host(self, message: NetworkInspector.AllowRequested) -> None:
        """A blocked request's host onto the selected session's allow list, applied by its proxy at once."""
        session = self.selected
        if session is None:
            return
        try:
            pattern = await self.bridge.allow_host(session, message.entry)
        except PolicyRefused as exc:
            self.notify(one_line(exc), title="Allow host", severity="warning")
            return
        except Exception as exc:
            self.notify(one_line(exc), title="Allow host", severity="error")
            return
        self.save_project()
        self.notify(f"{session.name} now allows {pattern}: its proxy applies it from the next request.", timeout=4)

    @on(OutputPane.SourceClicked)
    def go_to_source(self, message: OutputPane.SourceClicked) -> None:
        """A traceback line of the open file: the editor's cursor goes to that line."""
        if self.path is None or message.name != request_file_name(self.runtime, self.path):
            self.notify(f"/sandbox/{message.name} is not the open file.", timeout=3)
            return
        editor = self.query_one(CodeEditor)
        row = max(0, min(message.line - 1, editor.document.line_count - 1))
        editor.move_cursor((row, 0), center=True)
        editor.focus()

    @on(OutputPane.SaveRequested)
    def save_output(self, message: OutputPane.SaveRequested) -> None:
        """The pane's stream of the run, whole (also the lines a flood's cut hides), to a file."""
        transcript = message.pane.transcript
        stream = message.pane.stream
        session = self.selected.name if self.selected else "run"

        def chosen(path: object) -> None:
            if isinstance(path, Path) and self._write_host_file(path, transcript.full_text(), "Save failed"):
                cut = "" if transcript.full_complete else " (its first 64 MiB)"
                self.notify(f"Saved {stream}{cut} to {display_path(path)}.", timeout=3)

        name = f"{session}-{stream}.txt"
        self.app.push_screen(PathScreen(f"Save {stream} to a file", "Save", name, must_exist=False), chosen)

    @on(ResultView.SaveRequested)
    def save_result(self, message: ResultView.SaveRequested) -> None:
        """A result's value to a file: an image as its PNG or JPEG, a table as its HTML, text as text."""
        view = message.view
        try:
            data = rich_results.content(view.result, view.mime)
        except ValueError:
            self.notify(f"Result #{view.number} is not valid base64: there is nothing to save.", severity="error")
            return
        session = self.selected.name if self.selected else "run"

        def chosen(path: object) -> None:
            if not isinstance(path, Path):
                return
            try:
                path.write_bytes(data)
            except OSError as exc:
                self.notify(f"Cannot write {path}: {exc.strerror or exc}", title="Save failed", severity="error")
                return
            self.notify(f"Saved result #{view.number} ({view.mime}, {len(data):,} bytes) to {display_path(path)}.")

        name = f"{session}-result-{view.number}{rich_results.EXTENSIONS[view.mime]}"
        title = f"Save result #{view.number} ({view.mime}) to a file"
        self.app.push_screen(PathScreen(title, "Save", name, must_exist=False), chosen)

    def _write_host_file(self, path: Path, text: str, title: str) -> bool:
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            self.notify(f"Cannot write {path}: {exc.strerror or exc}", title=title, severity="error")
            return False
        return True

    @on(NetworkInspector.DetailRequested)
    def show_request(self, message: NetworkInspector.DetailRequested) -> None:
        self.app.push_screen(RequestScreen(message.entry))

    # --- files --------------------------------------------------------------------------------------------------
    def refresh_files(self) -> None:
        session = self.selected
        if session is None or session.scratch:
            return
        self.files.loading = True
        self.run_worker(self.bridge.list_sandbox(session), group="files", exclusive=True, exit_on_error=False)

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.set_class(event.pane.id in ("tab-network", "tab-files"), "-inspect")
        if event.pane.id == "tab-files":
            self.refresh_files()

    @on(FilesPane.RefreshRequested)
    def _refresh_requested(self) -> None:
        self.refresh_files()

    @on(SandboxListed)
    def show_listing(self, message: SandboxListed) -> None:
        self.files.loading = False
        if self.selected is None or message.session_id != self.selected.id:
            return
        if message.entries is not None:
            self.selected.files = tuple(e.path for e in message.entries if e.kind == "file")
        self.files.listing = Listing(tuple(message.entries or ()), message.error)

    def _file_session(self) -> Session | None:
        session = self.selected
        if session is None or session.scratch:
            self.notify(
                f"Scratch runs keep no files: select or create a session ({keys.key_labels(self)['new-session']}) "
                "to upload or download.",
                severity="warning",
            )
            return None
        return session

    @on(FilesPane.UploadRequested)
    def action_upload(self) -> None:
        session = self._file_session()
        if session is None:
            return

        def chosen(transfer: object) -> None:
            if isinstance(transfer, Transfer):
                self.run_worker(
                    self.bridge.upload(session, transfer.host, transfer.sandbox), group="files", exit_on_error=False
                )

        self.app.push_screen(TransferScreen("upload", session.name, [], None), chosen)

    def action_download(self, path: str | None = None) -> None:
        session = self._file_session()
        if session is None:
            return

        def chosen(transfer: object) -> None:
            if isinstance(transfer, Transfer):
                self.run_worker(
                    self.bridge.download(session, transfer.sandbox, transfer.host), group="files", exit_on_error=False
                )

        self.app.push_screen(TransferScreen("download", session.name, session.files, path), chosen)

    @on(FilesPane.DownloadRequested)
    def _download_requested(self, message: FilesPane.DownloadRequested) -> None:
        self.action_download(message.path)

    @on(FileTransferred)
    def show_transfer(self, message: FileTransferred) -> None:
        if message.error:
            self.notify(message.error, title=f"{message.direction.capitalize()} failed", severity="error", timeout=8)
            return
        if message.direction == "upload":
            self.notify(f"Uploaded {Path(message.source).name} to {message.target} ({message.size} bytes).")
        else:
            self.notify(f"Downloaded {message.source} to {message.target} ({message.size} bytes).")
        if self.results.active == "tab-files":
            self.refresh_files()

    # --- the file: save, open, watch -------------------------------------------------------------------------
    def action_save(self) -> None:
        if self.path is None:
            self.app.push_screen(PathScreen("Save as", "Save", "", must_exist=False), self._save_as)
            return
        self.save_to(self.path)

    def action_save_as(self) -> None:
        current = display_path(self.path) if self.path else ""
        self.app.push_screen(PathScreen("Save as", "Save", current, must_exist=False), self._save_as)

    def _save_as(self, path: object) -> None:
        if not isinstance(path, Path):
            return
        untitled = self.path is None
        self.save_to(path)
        if not (untitled and self.path == path):
            return
        # the first save of an untitled buffer runs it, as a save does; in the runtime its name says
        self.with_runtime_of(path, lambda: self.start_run(self.editor_pane.text, "save"))

    def with_runtime_of(self, path: Path, then: Callable[[], object]) -> None:
        """Switch to the runtime `path`'s extension selects, then `then()`; an extension no runtime
        claims asks which one (nothing runs when the question is cancelled)."""
        runtime = runtime_for_path(path)
        if runtime is not None:
            if runtime != self.runtime:
                self.pick_runtime(runtime)
            then()
            return

        def chosen(picked: object) -> None:
            if isinstance(picked, str):
                self.pick_runtime(picked)
                then()

        self.app.push_screen(RuntimeScreen(path.name, self.runtime), chosen)

    def save_to(self, path: Path) -> None:
        text = self.editor_pane.text
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            self.notify(f"Cannot save {path}: {exc.strerror or exc}", title="Save failed", severity="error")
            return
        first_save = self.path != path
        self.path = path
        self.editor_pane.path = path
        self.editor_pane.mark_saved(text)
        if self.watch_enabled and (first_save or self.watching is None):
            self.start_watching(path)
        if not self.watch_enabled:
            self.notify(f"Saved {display_path(path)}.", timeout=2)

    def action_open(self) -> None:
        def chosen(path: object) -> None:
            if isinstance(path, Path):
                self.open_file(path)

        def confirmed(yes: object) -> None:
            if yes:
                self.app.push_screen(PathScreen("Open file", "Open"), chosen)

        if self.dirty:
            question = "The buffer has unsaved changes. Open another file and lose them?"
            self.app.push_screen(ConfirmScreen("Unsaved changes", question, "Discard"), confirmed)
        else:
            confirmed(True)

    def open_file(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            self.notify(f"Cannot open {path}: {exc.strerror or exc}", severity="error")
            return
        self.path = path
        self.editor_pane.load(text, path=path, keep_cursor=False)
        self.with_runtime_of(path, lambda: None)
        if self.watch_enabled:
            self.start_watching(path)

    def action_toggle_watch(self) -> None:
        self.watch_enabled = not self.watch_enabled
        if not self.watch_enabled:
            self.workers.cancel_group(self, "watch")
            self.watching = None
            self.notify("No longer re-running on save.", timeout=2)
        elif self.path is not None:
            self.start_watching(self.path)
            self.notify(f"Re-running {display_path(self.path)} whenever it changes on disk.", timeout=3)

    def start_watching(self, path: Path) -> None:
        self.watching = path
        self.watch_file(path)

    @work(exclusive=True, group="watch", exit_on_error=False)
    async def watch_file(self, path: Path) -> None:
        """Posts WatchedFileChanged when the file changes on disk (any editor, or a save here). The parent
        folder is watched, so editors that save by replacing the file are seen too."""
        from watchfiles import awatch

        target = path.resolve()
        quiet_ms = self.settings.watch_debounce_ms
        async for _ in awatch(
            target.parent,
            watch_filter=lambda _change, changed: os.path.basename(changed) == target.name,
            step=quiet_ms,
            debounce=max(1600, quiet_ms * 4),
            recursive=False,
            ignore_permission_denied=True,
        ):
            self.post_message(WatchedFileChanged(path, path.exists(), self.bridge.backend.clock()))

    @on(WatchedFileChanged)
    def reload_and_run(self, message: WatchedFileChanged) -> None:
        if message.path != self.path:
            return
        if not message.exists:
            self.editor_pane.new_file = True
            self.notify(f"{display_path(message.path)} is gone from disk; the buffer is kept.", severity="warning")
            return
        try:
            text = message.path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            self.notify(f"Cannot read {message.path}: {exc.strerror or exc}", severity="error")
            return
        pane = self.editor_pane
        if pane.dirty and text != pane.text:
            self.notify(
                f"{display_path(message.path)} changed on disk; your unsaved edits are kept in the buffer and "
                f"the version on disk runs. {keys.key_labels(self)['save']} saves yours over it.",
                severity="warning",
                timeout=8,
            )
        else:
            pane.load(text)
        self.start_run(text, "watch")

    # --- panes, focus --------------------------------------------------------------------------------------------
    def action_toggle_sidebar(self) -> None:
        if not self.has_class("-wide"):
            self.toggle_class("-sidebar-open")
            opened = self.has_class("-sidebar-open")
        else:
            self.toggle_class("-sidebar-closed")
            opened = not self.has_class("-sidebar-closed")
        if opened:
            self.query_one(SessionList).focus()
        elif self.focused is None or self.sidebar in self.focused.ancestors_with_self:
            self.query_one(CodeEditor).focus()

    JUMP_PANES: ClassVar[tuple[tuple[str, str], ...]] = (
        ("s", "sessions"),
        ("e", "editor"),
        ("o", "output"),
        ("r", "stderr"),
        ("n", "network"),
        ("f", "files"),
        ("b", "run bar"),
    )
    """Jump mode's letter for each pane."""

    def action_jump(self) -> None:
        """A letter over each pane (over its tab when it is hidden behind another); the letter focuses it."""
        where: dict[str, Widget] = {
            "sessions": self.sidebar if self.sidebar.region.width else self.topbar.query_one("#target"),
            "editor": self.editor_pane,
            "output": self.outputs.stdout
            if self.results.active == "tab-output"
            else self.results.get_tab("tab-output"),
            "stderr": self.outputs.stderr
            if self.results.active == "tab-output"
            else self.results.get_tab("tab-output"),
            "network": self.network if self.results.active == "tab-network" else self.results.get_tab("tab-network"),
            "files": self.files if self.results.active == "tab-files" else self.results.get_tab("tab-files"),
            "run bar": self.runbar.query_one("#runtime"),
        }
        targets = [
            JumpTarget(letter, name, where[name].region.offset + Offset(0 if name == "run bar" else 1, 0))
            for letter, name in self.JUMP_PANES
        ]

        def chosen(name: object) -> None:
            if isinstance(name, str):
                self.action_focus_pane(name)

        self.app.push_screen(JumpScreen(targets), chosen)

    def action_focus_pane(self, pane: str) -> None:
        if pane == "sessions":
            if not self.has_class("-wide"):
                self.add_class("-sidebar-open")
            else:
                self.remove_class("-sidebar-closed")
            self.query_one(SessionList).focus()
        elif pane == "editor":
            self.query_one(CodeEditor).focus()
        elif pane in ("output", "stderr"):
            self.results.active = "tab-output"
            self.query_one("#stdout" if pane == "output" else "#stderr", OutputPane).focus()
        elif pane == "run bar":
            self.runbar.query_one("#runtime").focus()
        elif pane == "network":
            self.results.active = "tab-network"
            self.query_one(NetworkTable).focus()
        elif pane == "files":
            self.results.active = "tab-files"
            self.query_one(FileTable).focus()

    def on_descendant_blur(self, event: object) -> None:
        """In narrow layouts the sidebar is an overlay: it closes once focus leaves it."""
        self.call_after_refresh(self._close_overlay_sidebar)

    def _close_overlay_sidebar(self) -> None:
        if self.has_class("-wide") or not self.has_class("-sidebar-open"):
            return
        focused = self.focused
        if focused is not None and self.sidebar not in focused.ancestors_with_self and self.app.screen is self:
            self.remove_class("-sidebar-open")

    # --- failures never end the app ------------------------------------------------------------------------------
    @on(Worker.StateChanged)
    def _worker_failed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            self.notify(
                f"{event.worker.name or event.worker.group}: {error}",
                title="Something went wrong",
                severity="error",
                timeout=10,
            )
            if event.worker.group == "files":
                self.files.loading = False

    # --- help ---------------------------------------------------------------------------------------------------
    def focused_pane(self) -> tuple[str, str]:
        """The name and purpose of the pane that has focus, for the help screen."""
        names: list[tuple[type[Widget], str]] = [
            (CodeEditor, "Editor"),
            (OutputPane, "Output"),
            (NetworkInspector, "Network inspector"),
            (FilesPane, "Files"),
            (ResultView, "Result"),
            (ResultsPane, "Results"),
            (SessionSidebar, "Sessions"),
            (RunBar, "Run bar"),
        ]
        node = self.focused
        chain: list[type[Widget]] = []  # whose bindings the help text's keys are
        while node is not None:
            chain.append(type(node))
            for kind, name in names:
                if isinstance(node, kind):
                    return name, keys.key_labels(self).text(getattr(node, "HELP", ""), *chain)
            node = node.parent if isinstance(node.parent, Widget) else None
        return "Workbench", ""
