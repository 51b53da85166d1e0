"""`isol8 tui`: the workbench app. Settings, theme, keys, help and the command palette live here; the
main screen owns the panes and the run orchestration; `bridge.py` is the only door to the engine."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.theme import Theme

from engine.config import Isol8Config, TuiSettings
from engine.runtimes import RUNTIME_NAMES
from isol8_tui import keys
from isol8_tui.bridge import Backend, EngineBridge, RealBackend, runtime_for_path
from isol8_tui.screens.dialogs import ConfirmScreen
from isol8_tui.screens.help import HelpScreen, KeyHelp
from isol8_tui.screens.main import MainScreen
from isol8_tui.screens.terminal import TerminalScreen
from isol8_tui.sessions import NETWORK_POLICIES

STARTER = {
    "python": 'print("hello from isol8")\n',
    "node": 'console.log("hello from isol8");\n',
    "bun": 'const who: string = "isol8";\nconsole.log(`hello from ${who}`);\n',
    "deno": 'const who: string = "isol8";\nconsole.log(`hello from ${who}`);\n',
    "bash": 'echo "hello from isol8"\n',
}

HELP_SKIPPED_PREFIXES = ("cursor_", "scroll_", "delete_", "page_")
HELP_SKIPPED = frozenset({"help_quit", "select_line", "delete_line"})
"""Editing and movement keys every editor has; the help lists what is particular to each pane."""

ISOL8_THEME = Theme(
    name="isol8",
    primary="#4FB3D9",
    secondary="#8B7CF6",
    accent="#F5A524",
    warning="#F5A524",
    error="#F2555A",
    success="#3FC98A",
    foreground="#D8DEE9",
    background="#10151C",
    surface="#161D26",
    panel="#1D2631",
    dark=True,
)


def stylesheet() -> Path:
    """`styles/workbench.tcss`: inside the package in a wheel, next to it in the source tree."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "styles" / "workbench.tcss", here.parent / "styles" / "workbench.tcss"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("styles/workbench.tcss is missing from the isol8 installation")


def theme_names() -> list[str]:
    from textual.theme import BUILTIN_THEMES

    return sorted({*BUILTIN_THEMES, ISOL8_THEME.name})


class WorkbenchApp(keys.KeymapApp, inherit_bindings=False):
    """The workbench. Build it with `make_app`."""

    TITLE = "isol8 workbench"
    CSS_PATH = str(stylesheet())
    BINDINGS: ClassVar = [
        *keys.bindings("quit", "help"),
        Binding("ctrl+c", "help_quit", show=False, system=True),
    ]

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
        animations: bool = True,
    ) -> None:
        super().__init__()
        self.bridge = bridge
        self.settings = settings
        self._screen_args: dict[str, Any] = {
            "path": path,
            "text": text,
            "runtime": runtime,
            "watch": watch,
            "new_file": new_file,
            "cursor_blink": cursor_blink,
            "check_docker": check_docker,
        }
        self.register_theme(ISOL8_THEME)
        self._bad_theme = settings.theme not in self.available_themes
        self.theme = ISOL8_THEME.name if self._bad_theme else settings.theme
        if not animations:
            self.animation_level = "none"
        self.set_keymap(settings.keymap)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """On an interactive run's screen every key goes to the program: none runs an app action (quit,
        help, the palette), the screen's leave key excepted."""
        return not isinstance(self.screen, TerminalScreen)

    def get_default_screen(self) -> Screen[Any]:
        return MainScreen(self.bridge, self.settings, **self._screen_args)

    def on_ready(self) -> None:
        """The first frame is on screen: start the sessions and background checks."""
        if self.main is not None:
            self.main.start()

    def on_mount(self) -> None:
        if self._bad_theme:
            self.notify(f'Unknown theme "{self.settings.theme}"; using isol8.', severity="warning")

    async def on_unmount(self) -> None:
        """Every session's container goes when the app ends, whichever way it ends."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.bridge.shutdown(), timeout=20)

    @property
    def main(self) -> MainScreen | None:
        screen = self.screen_stack[0] if self.screen_stack else None
        return screen if isinstance(screen, MainScreen) else None

    async def action_quit(self) -> None:
        main = self.main
        if main is not None and main.dirty and main.is_mounted:

            def answered(yes: object) -> None:
                if yes:
                    self.exit()

            question = "The buffer has unsaved changes. Quit anyway?"
            await self.push_screen(ConfirmScreen("Unsaved changes", question, "Quit"), answered)
            return
        self.exit()

    def deliver_screenshot(
        self, filename: str | None = None, path: str | None = None, time_format: str | None = None
    ) -> str | None:
        """The palette's Screenshot: into ~/Downloads when that folder exists, else the working directory
        (Textual's default fails without a Downloads folder)."""
        if path is None:
            downloads = Path.home() / "Downloads"
            path = str(downloads if downloads.is_dir() else Path.cwd())
        return super().deliver_screenshot(filename, path, time_format)

    # --- help -------------------------------------------------------------------------------------------------------
    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        screen = self.screen
        if isinstance(screen, MainScreen):
            pane, about = screen.focused_pane()
        else:  # a dialog: its own keys (the main screen's are not in force under it)
            box = next(iter(screen.query(".dialog")), None)
            pane = str(box.border_title) if box is not None and box.border_title else type(screen).__name__
            about = self.key_labels.text(getattr(screen, "HELP", ""), type(screen))
        # One row per meaning (description): a pane's key and a screen-wide key for the same thing share it.
        pane_keys: dict[str, list[str]] = {}
        global_keys: dict[str, list[str]] = {}
        order = {action.action: index for index, action in enumerate(keys.ACTIONS.values())}
        rank: dict[str, int] = {}
        for key, active in screen.active_bindings.items():
            binding = active.binding
            if binding.system or not (binding.description or binding.tooltip):
                continue
            skipped = binding.action.startswith(HELP_SKIPPED_PREFIXES) or binding.action in HELP_SKIPPED
            if skipped and binding.id not in keys.ACTIONS:  # the registry's actions are always listed
                continue
            description = binding.tooltip or binding.description
            bucket = global_keys if isinstance(active.node, (App, Screen)) else pane_keys
            bucket.setdefault(description, []).append(self.get_key_display(binding.with_key(key)))
            rank.setdefault(description, order.get(binding.action, len(order)))
        for description in [d for d in global_keys if d in pane_keys]:
            pane_keys[description] += global_keys.pop(description)

        def rows(bucket: dict[str, list[str]]) -> list[KeyHelp]:
            """In the registry's order (the others after it, as bound)."""
            ordered = sorted(bucket, key=lambda description: rank[description])
            return [KeyHelp(" ".join(dict.fromkeys(bucket[d])), d) for d in ordered]

        palette = keys.key_label(self.COMMAND_PALETTE_BINDING)
        global_rows = [*rows(global_keys), KeyHelp(palette, "Command palette: every action, searchable")]
        self.push_screen(HelpScreen(pane, about, rows(pane_keys), global_rows))

    # --- command palette ----------------------------------------------------------------------------------------------
    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        main = screen if isinstance(screen, MainScreen) else None
        if main is None:
            return

        def command(title: str, help_text: str, callback: Callable[[], Any]) -> SystemCommand:
            """A palette entry; `help_text` names keys as {action-id} placeholders (keys.KeyLabels)."""
            return SystemCommand(title, self.key_labels.text(help_text), callback)

        yield command("Run: run the buffer", "{run} · in the selected session", main.action_run)
        yield command("Run: stop", "{stop} · cancel the run in flight", main.action_stop)
        yield command("File: save", "{save} · re-runs when the file is watched", main.action_save)
        yield command("File: open…", "{open}", main.action_open)
        yield command("File: upload into the session…", "{upload} · a host file into /sandbox", main.action_upload)
        yield command("File: download from the session…", "{download} · a file out of /sandbox", main.action_download)
        yield command("File: list /sandbox", "{focus-files} · the Files tab", partial(main.action_focus_pane, "files"))
        watch_title = "Watch: stop re-running on save" if main.watch_enabled else "Watch: re-run on save"
        yield command(watch_title, "watch the file and re-run it when it changes", main.action_toggle_watch)
        yield command("Session: new…", "{new-session} · runtime and network policy", main.action_new_session)
        yield command(
            "Session: delete the selected one", "{delete-session} · removes its container", main.action_delete_session
        )
        yield command(
            "Session: run settings…",
            "{session-settings} · timeout, memory, CPU, env, stdin, packages (saved in the project file)",
            main.action_session_settings,
        )
        yield command(
            "Session: reset the interpreter",
            "{reset-session} · a stateful session's variables go, its files stay",
            main.action_reset_session,
        )
        yield command("File: save as…", "{save-as}", main.action_save_as)
        yield command(
            "Output: search",
            "{search-output} in the output pane · n / N step",
            partial(main.action_focus_pane, "output"),
        )
        yield command("Network: export the requests as HAR…", "{export-har} in the inspector", main.export_har)
        yield command("View: jump to a pane", "{jump} · then the pane's letter", main.action_jump)
        for session in main.sessions_in_order():
            detail = "fresh container per run" if session.scratch else f"{session.runtime} · {session.network}"
            yield command(f"Session: switch to {session.name}", detail, partial(main.select_session, session))
        for runtime in RUNTIME_NAMES:
            yield command(
                f"Runtime: {runtime}", "highlighting and the session that runs", partial(main.pick_runtime, runtime)
            )
        for policy in NETWORK_POLICIES:
            yield command(
                f"Network: {policy} for new sessions",
                "the default of the new-session dialog",
                partial(main.pick_network, policy),
            )
        yield command(
            "Network: show blocked requests only", "the inspector's filter", partial(main.filter_network, "BLOCK")
        )
        yield command(
            "Network: show every request", "clears the inspector's filters", partial(main.filter_network, "all")
        )
        yield command("View: toggle the session sidebar", "{toggle-sidebar}", main.action_toggle_sidebar)
        yield command("View: output", "{focus-output}", partial(main.action_focus_pane, "output"))
        yield command("View: network inspector", "{focus-network}", partial(main.action_focus_pane, "network"))
        yield command("View: editor", "{focus-editor}", partial(main.action_focus_pane, "editor"))
        yield command("Output: clear", "{clear-output}", main.action_clear_output)
        keep = "Output: clear for each run" if main.keep_output else "Output: keep between runs"
        yield command(keep, "{toggle-keep-output}", main.action_toggle_keep)
        yield command("Images: check and build missing images", "offers a build with progress", main.action_images)
        yield command("Help: keys of the focused pane", "{help}", self.action_help)


def make_app(
    path: Path | None = None,
    *,
    runtime: str | None = None,
    watch: bool = True,
    config: Isol8Config | None = None,
    settings: TuiSettings | None = None,
    backend: Backend | None = None,
    text: str | None = None,
    session_overrides: dict[str, Any] | None = None,
    cursor_blink: bool = True,
    check_docker: bool = True,
    animations: bool = True,
) -> WorkbenchApp:
    """The workbench on `path` (None: an untitled buffer). The CLI, the tests and the screenshots share it."""
    config = config or Isol8Config()
    settings = settings or config.tui
    chosen = runtime or (runtime_for_path(path) if path else None) or "python"
    new_file = False
    if text is None:
        if path is not None and path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
        else:
            new_file = path is not None
            text = STARTER[chosen]
    bridge = EngineBridge(backend or RealBackend(), config, session_overrides)
    return WorkbenchApp(
        bridge,
        settings,
        path=path,
        text=text,
        runtime=chosen,
        watch=watch,
        new_file=new_file,
        cursor_blink=cursor_blink,
        check_docker=check_docker,
        animations=animations,
    )
