"""The code editor: a TextArea with each runtime's highlighting, the file's path and a modified marker."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widgets import TextArea
from textual.widgets.text_area import EditHistory

from isol8_tui.keys import key_labels

LANGUAGES: dict[str, str] = {
    "python": "python",
    "node": "javascript",
    "bun": "typescript",
    "deno": "typescript",
    "bash": "bash",
}
"""TextArea language per runtime (TypeScript is registered from tree-sitter-typescript)."""


def _typescript() -> tuple[object, str] | None:
    """The TypeScript grammar and a highlight query (TypeScript's own rules over JavaScript's)."""
    try:
        import textual
        import tree_sitter_typescript
        from tree_sitter import Language
    except ImportError:
        return None
    queries = Path(tree_sitter_typescript.__file__).parent / "queries" / "highlights.scm"
    javascript = Path(textual.__file__).parent / "tree-sitter" / "highlights" / "javascript.scm"
    try:
        query = queries.read_text() + "\n" + javascript.read_text()
        return Language(tree_sitter_typescript.language_typescript()), query
    except (OSError, ValueError):
        return None


class CodeEditor(TextArea):
    """The buffer. Syntax colours follow the runtime; tab indents."""

    HELP: ClassVar[str] = (
        "The code that runs. Type to edit; {run} runs the buffer as it is, {save} saves it (and, when "
        "the file is watched, the save re-runs it). {undo} / {redo} undo and redo; tab indents."
    )

    def on_mount(self) -> None:
        if "typescript" not in self.available_languages:
            grammar = _typescript()
            if grammar is not None:
                with contextlib.suppress(Exception):
                    self.register_language("typescript", grammar[0], grammar[1])  # type: ignore[arg-type]

    def use_runtime(self, runtime: str) -> None:
        language = LANGUAGES.get(runtime)
        if language == "typescript" and "typescript" not in self.available_languages:
            language = "javascript"
        self.language = language if language in self.available_languages else None


class EditorPane(Vertical):
    """The editor with its path and modified marker in the border, the runtime and cursor below."""

    path: reactive[Path | None] = reactive(None)
    dirty: reactive[bool] = reactive(False)
    runtime: reactive[str] = reactive("python")
    new_file: reactive[bool] = reactive(False)

    def __init__(self, text: str, runtime: str, path: Path | None, *, cursor_blink: bool = True) -> None:
        super().__init__(id="editor-pane")
        self._initial = text
        self._saved_text = text
        self._cursor_blink = cursor_blink
        self._histories: dict[Path | None, tuple[str, EditHistory]] = {}  # other files' undo, by path
        self.set_reactive(EditorPane.path, path)
        self.set_reactive(EditorPane.runtime, runtime)

    def compose(self) -> ComposeResult:
        editor = CodeEditor(
            self._initial,
            id="editor",
            soft_wrap=False,
            tab_behavior="indent",
            show_line_numbers=True,
            theme="css",
            highlight_cursor_line=True,
            placeholder=f"Write code here, or open a file with {key_labels(self)['open']}",
        )
        editor.cursor_blink = self._cursor_blink
        yield editor

    def on_mount(self) -> None:
        self.editor.use_runtime(self.runtime)
        self._update_titles()

    @property
    def editor(self) -> CodeEditor:
        return self.query_one(CodeEditor)

    @property
    def text(self) -> str:
        return self.editor.text

    def load(self, text: str, *, path: Path | None = None, keep_cursor: bool = True) -> None:
        """Replace the buffer: the file changed on disk (an undoable edit; the cursor stays where it was),
        or another file opened (not undoable: each file has its own undo history)."""
        editor = self.editor
        if path is not None and path != self.path:
            self._histories[_key(self.path)] = (editor.text, editor.history)
            self.path = path
            kept_text, history = self._histories.pop(_key(path), (None, None))
            old = editor.history
            editor.history = EditHistory(old.max_checkpoints, old.checkpoint_timer, old.checkpoint_max_characters)
            editor.load_text(text)  # clears the (new) history: opening a file is not undoable
            if history is not None and kept_text == text:  # back to a file as it was left: its undo history too
                editor.history = history
            self.mark_saved(text)
            return
        if text != editor.text:
            location = editor.cursor_location
            editor.replace(text, (0, 0), editor.document.end, maintain_selection_offset=False)
            if keep_cursor:
                row = min(location[0], editor.document.line_count - 1)
                column = min(location[1], len(editor.document.get_line(row)))
                editor.move_cursor((row, column))
        self.mark_saved(text)

    def mark_saved(self, text: str | None = None) -> None:
        self._saved_text = self.editor.text if text is None else text
        self.new_file = False
        self.dirty = self.editor.text != self._saved_text

    def watch_runtime(self, runtime: str) -> None:
        if self.query(CodeEditor):
            self.editor.use_runtime(runtime)
            self._update_titles()

    def watch_path(self) -> None:
        self._update_titles()

    def watch_dirty(self) -> None:
        self._update_titles()

    def watch_new_file(self) -> None:
        self._update_titles()

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        self.dirty = event.text_area.text != self._saved_text

    def on_text_area_selection_changed(self) -> None:
        self._update_titles()

    def _update_titles(self) -> None:
        if not self.query(CodeEditor):
            return
        name = display_path(self.path) if self.path else "untitled"
        marker = " [b $warning]●[/]" if self.dirty else ""
        new = " [dim](new file)[/]" if self.new_file else ""
        self.border_title = f"{name}{marker}{new}"
        row, column = self.editor.cursor_location
        language = self.editor.language or "plain text"
        kind = self.runtime if language == self.runtime else f"{self.runtime} · {language}"
        self.border_subtitle = f"{kind} · {row + 1}:{column + 1}"
        self.set_class(self.dirty, "-dirty")


def _key(path: Path | None) -> Path | None:
    """One file, however its path is spelt."""
    return path.resolve() if path is not None else None


def display_path(path: Path) -> str:
    """The path relative to the working directory when it is inside it, else with ~ for home."""
    with contextlib.suppress(ValueError, OSError):
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    with contextlib.suppress(ValueError, RuntimeError):
        return "~/" + str(path.resolve().relative_to(Path.home()))
    return str(path)
