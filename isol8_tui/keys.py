"""The workbench's actions and the labels of their keys.

`ACTIONS` is the one registry of the actions `tui.keymap` may rebind (by id; engine/config.py's
`TUI_ACTIONS` names the same ids, a test keeps the two equal): the app's, the screen's and the
files pane's bindings are built from it. Every key a hint, tooltip, help text or palette entry
mentions comes from `KeyLabels`, which reads the binding in force (the keymap's keys, else the
default), so a rebind never leaves a stale label. Texts name keys as `{placeholders}`: a registry
id (`{run}`) or an action bound by the widget that shows the text (`{undo}` in the editor).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from textual.app import App
from textual.binding import Binding, BindingType
from textual.dom import DOMNode
from textual.keys import format_key


@dataclass(frozen=True)
class Action:
    """One rebindable action: its id (the keymap's key), default keys and Textual action."""

    id: str
    keys: str
    action: str
    description: str
    tooltip: str = ""
    show: bool = True
    pane: bool = False
    """Bound by its pane (which takes no text, so a printable key is safe there); the others are the
    app's or the main screen's and are priority bindings."""

    def binding(self) -> Binding:
        return Binding(
            self.keys,
            self.action,
            self.description,
            show=self.show,
            priority=not self.pane,
            tooltip=self.tooltip,
            id=self.id,
        )


ACTIONS: dict[str, Action] = {
    action.id: action
    for action in (
        # Screen-wide actions are priority bindings: they win over the focused widget's own binding of the
        # same key (TextArea binds f6, f7, ctrl+u, ctrl+d, ...), so a keymap may rebind them to any key.
        # The defaults are function keys and ctrl combinations every terminal delivers; none is an alt key
        # (many terminals turn alt+letter into a typed character) and none is a printable key.
        Action("quit", "ctrl+q", "quit", "Quit", tooltip="Quit (stops every session)", show=False),
        Action("help", "f1", "help", "Help", tooltip="The keys of the focused pane"),
        Action("jump", "ctrl+g", "jump", "Jump", tooltip="Show a letter on each pane; the letter focuses it"),
        Action("run", "ctrl+r,f5", "run", "Run", tooltip="Run the buffer in the selected session"),
        Action(
            "run-interactive",
            "shift+f5,f17",  # xterm and the Linux console send shift+f5 as f17
            "run_interactive",
            "Interactive",
            tooltip="Run the buffer on a terminal: every key goes to the program, ctrl+] leaves",
            show=False,
        ),
        Action("stop", "ctrl+t", "stop", "Stop", tooltip="Stop the selected session's run"),
        Action("save", "ctrl+s", "save", "Save", tooltip="Save the buffer (re-runs it when watched)"),
        Action("save-as", "f12", "save_as", "Save as", show=False),
        Action("open", "ctrl+o", "open", "Open", show=False),
        Action("new-session", "ctrl+n", "new_session", "New", tooltip="New session"),
        Action("toggle-sidebar", "f2", "toggle_sidebar", "Sessions"),
        Action(
            "session-settings",
            "ctrl+k",
            "session_settings",
            "Settings",
            tooltip="The session's run settings",
            show=False,
        ),
        Action(
            "reset-session",
            "shift+f9,f21",  # xterm and the Linux console send shift+f9 as f21
            "reset_session",
            "Reset interpreter",
            tooltip="Reset a stateful session's interpreter: variables go, files stay",
            show=False,
        ),
        Action("scratch", "ctrl+f", "scratch", "Scratch session", show=False),
        Action("clear-output", "ctrl+l", "clear_output", "Clear output", show=False),
        Action("toggle-keep-output", "f7", "toggle_keep", "Keep output between runs", show=False),
        Action("upload", "ctrl+u", "upload", "Upload a file", show=False),
        Action("download", "ctrl+d", "download", "Download a file", show=False),
        Action("delete-session", "f10", "delete_session", "Delete session", show=False),
        Action("focus-sessions", "f6", "focus_pane('sessions')", "Focus sessions", show=False),
        Action("focus-editor", "f3", "focus_pane('editor')", "Focus editor", show=False),
        Action("focus-output", "f4", "focus_pane('output')", "Focus output", show=False),
        Action("focus-network", "f8", "focus_pane('network')", "Focus network", show=False),
        Action("focus-files", "f9", "focus_pane('files')", "Focus files", show=False),
        # Pane actions: bound by their pane, which takes no text, so printable keys are safe.
        Action("refresh-files", "r", "refresh", "Refresh", pane=True),
        Action("search-output", "slash", "search", "Search", tooltip="Search the output", pane=True),
        Action("next-match", "n", "next_match", "Next match", show=False, pane=True),
        Action("previous-match", "N", "previous_match", "Previous match", show=False, pane=True),
        Action("next-error", "e", "next_error", "Next error", tooltip="Jump to the next error line", pane=True),
        Action(
            "save-output", "s", "save_output", "Save output", tooltip="Save the run's full output to a file", pane=True
        ),
        Action(
            "save-result",
            "s",
            "save_result",
            "Save result",
            tooltip="Save the selected result (an image as its file) to a file",
            pane=True,
        ),
        Action(
            "allow-host",
            "w",
            "allow_host",
            "Allow host",
            tooltip="Add the selected request's host to the session's allow list (applied at once)",
            show=False,  # in the pane's help (f1) and its text: the footer has no room at 80 columns
            pane=True,
        ),
        Action("export-har", "h", "export_har", "HAR", tooltip="Export the run's requests as HAR", pane=True),
    )
}


def bindings(*ids: str) -> list[BindingType]:
    """The bindings of these registry actions, in this order."""
    return [ACTIONS[ident].binding() for ident in ids]


def key_label(key: str) -> str:
    """A key as texts write it: `ctrl+r`, `f5`, `enter`; a printable key as its character (`/`)."""
    *modifiers, name = key.strip().split("+")
    shown = format_key(name)
    if not (len(shown) == 1 and shown.isascii() and shown.isprintable() and not shown.isspace()):
        shown = name
    return "+".join([*modifiers, shown])


class KeyLabels:
    """The label of each action's first key as bound now: the keymap's keys, else the default."""

    def __init__(self, keymap: Mapping[str, str] | None = None) -> None:
        self._keymap = dict(keymap or {})

    def __getitem__(self, action_id: str) -> str:
        keys = self._keymap.get(action_id) or ACTIONS[action_id].keys
        return key_label(keys.split(",")[0])

    def updated(self, keymap: Mapping[str, str]) -> KeyLabels:
        return KeyLabels({**self._keymap, **keymap})

    def bound(self, owner: type[DOMNode], action: str) -> str:
        """The key `owner` (or a class it extends) binds to `action`."""
        for cls in owner.__mro__:
            for binding in Binding.make_bindings(cls.__dict__.get("BINDINGS", ())):
                if binding.action == action:
                    return self[binding.id] if binding.id in ACTIONS else key_label(binding.key.split(",")[0])
        raise KeyError(f"{owner.__name__} binds no {action!r}")

    def text(self, template: str, *owners: type[DOMNode]) -> str:
        """`template` with each `{name}` replaced by a key label: the owners' binding for that
        action, else the registry action with that id."""
        return template.format_map(_Names(self, owners))


class _Names:
    """What `str.format_map` looks names up in."""

    def __init__(self, labels: KeyLabels, owners: tuple[type[DOMNode], ...]) -> None:
        self._labels = labels
        self._owners = owners

    def __getitem__(self, name: str) -> str:
        for owner in self._owners:
            try:
                return self._labels.bound(owner, name)
            except KeyError:
                continue
        return self._labels[name]


class KeymapApp(App[None]):
    """An app that remembers the keymap it applies, so its texts can show the keys bound now."""

    def __init__(self) -> None:
        super().__init__()
        self.key_labels = KeyLabels()

    def set_keymap(self, keymap: Mapping[str, str]) -> None:
        super().set_keymap(keymap)
        self.key_labels = KeyLabels(keymap)

    def update_keymap(self, keymap: Mapping[str, str]) -> None:
        super().update_keymap(keymap)
        self.key_labels = self.key_labels.updated(keymap)


def key_labels(node: DOMNode) -> KeyLabels:
    """The key labels of `node`'s app (the defaults outside a KeymapApp)."""
    app = node.app
    return app.key_labels if isinstance(app, KeymapApp) else KeyLabels()
