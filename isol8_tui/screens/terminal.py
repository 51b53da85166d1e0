"""The interactive run's screen: the program's output with its colours, and every key sent to it.

Every key goes to the program as a terminal would send it (enter is `\\r`, backspace `\\x7f`, ctrl+c
interrupts, ctrl+d ends the input, arrows are xterm sequences) and never to the workbench, except the
leave key, ctrl+] (as telnet): it closes the screen and the run goes on, its output arriving in the
output pane; `run-interactive` opens the screen again while the run lasts. Resizing the screen
resizes the terminal (the program gets SIGWINCH).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.geometry import Size
from textual.screen import Screen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Static

from engine.errors import InputTooLarge
from engine.terminal import Terminal
from isol8_tui.terminal_text import TerminalText
from isol8_tui.widgets.bars import RunStatus, StatusLine

LEAVE_KEY = "ctrl+right_square_bracket"
LEAVE_LABEL = "ctrl+]"
CHROME_ROWS = 2
"""The screen's title and status lines: the terminal gets the rest of the rows."""

_SEQUENCES: dict[str, str] = {
    "enter": "\r",
    "backspace": "\x7f",
    "tab": "\t",
    "shift+tab": "\x1b[Z",
    "escape": "\x1b",
    "up": "\x1b[A",
    "down": "\x1b[B",
    "right": "\x1b[C",
    "left": "\x1b[D",
    "home": "\x1b[H",
    "end": "\x1b[F",
    "insert": "\x1b[2~",
    "delete": "\x1b[3~",
    "pageup": "\x1b[5~",
    "pagedown": "\x1b[6~",
    "ctrl+at": "\x00",
    "ctrl+space": "\x00",
    "ctrl+left_square_bracket": "\x1b",
    "ctrl+backslash": "\x1c",
    "ctrl+circumflex_accent": "\x1e",
    "ctrl+underscore": "\x1f",
}


def key_bytes(key: str, character: str | None) -> str | None:
    """What a terminal sends the program for this key; None for a key it cannot send."""
    if key in _SEQUENCES:
        return _SEQUENCES[key]
    if key.startswith("ctrl+") and len(key) == 6 and key[5].isalpha():
        return chr(ord(key[5].lower()) - ord("a") + 1)
    if character is not None and character.isprintable():
        return character
    return None


def terminal_size(screen: Size) -> tuple[int, int]:
    """The rows and columns the terminal gets on a screen of this size."""
    return max(1, screen.height - CHROME_ROWS), max(1, screen.width)


@dataclass
class InteractiveRun:
    """One interactive run: its terminal, what the terminal shows, and how the run stands."""

    run_id: int
    session: str
    terminal: Terminal
    text: TerminalText = field(default_factory=TerminalText)
    status: RunStatus = field(default_factory=RunStatus)

    @property
    def ended(self) -> bool:
        return self.status.state not in ("idle", "running")


class TerminalView(ScrollView, can_focus=True):
    """The terminal's lines, the cursor on the current one; it follows the end."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {"terminal--cursor"}

    def __init__(self, run: InteractiveRun) -> None:
        super().__init__(id="terminal-view")
        self.run = run

    def on_mount(self) -> None:
        self.changed()

    def changed(self) -> None:
        """New output arrived: grow, follow the end, repaint."""
        lines = self.run.text.all_lines
        width = max((len(line) for line in lines), default=0) + 1
        self.virtual_size = Size(width, len(lines))
        self.scroll_end(animate=False, immediate=True, x_axis=False)
        self.refresh()

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.scrollable_content_region.width
        lines = self.run.text.all_lines
        if index >= len(lines):
            return Strip.blank(width, self.rich_style)
        line = lines[index].copy()
        line.no_wrap, line.end = True, ""
        if index == len(lines) - 1 and not self.run.ended:
            column = self.run.text.column
            if column >= len(line):
                line.append(" " * (column - len(line) + 1))
            line.stylize(self.get_component_rich_style("terminal--cursor"), column, column + 1)
        strip = Strip(list(line.render(self.app.console)), line.cell_len)
        return strip.crop(scroll_x, scroll_x + width).extend_cell_length(width, self.rich_style)

    def on_resize(self, event: events.Resize) -> None:
        size = self.run.terminal.size
        rows, cols = event.size.height, event.size.width
        if (rows, cols) != (size.rows, size.cols) and rows > 0 and cols > 0 and not self.run.ended:
            self.run.terminal.resize(rows, cols)
        self.changed()

    def on_key(self, event: events.Key) -> None:
        event.stop()
        event.prevent_default()
        data = key_bytes(event.key, event.character)
        if data is not None and not self.run.ended:
            try:
                self.run.terminal.write(data)
            except InputTooLarge as exc:
                self.notify(str(exc), title="Key not sent", severity="error")


class TerminalScreen(Screen[None]):
    """An interactive run, full screen: its output, its status and the leave key."""

    BINDINGS: ClassVar = [Binding(LEAVE_KEY, "leave", "Leave (the run goes on)", priority=True)]
    AUTO_FOCUS = "#terminal-view"

    def __init__(self, run: InteractiveRun) -> None:
        super().__init__()
        self.run = run

    def compose(self) -> ComposeResult:
        yield Static(
            f"interactive run · {self.run.session} · every key goes to the program · {LEAVE_LABEL} leaves",
            id="terminal-title",
        )
        yield TerminalView(self.run)
        yield StatusLine(id="terminal-status")

    def on_mount(self) -> None:
        self.show_status()

    @property
    def view(self) -> TerminalView:
        return self.query_one(TerminalView)

    def output_arrived(self) -> None:
        self.view.changed()

    def show_status(self) -> None:
        """How the run stands; once it ended, the screen stays until the user leaves."""
        self.query_one(StatusLine).status = self.run.status
        if self.run.ended:
            self.query_one("#terminal-title", Static).update(
                Text(f"interactive run · {self.run.session} · ended · {LEAVE_LABEL} leaves")
            )
            self.view.changed()

    def action_leave(self) -> None:
        self.dismiss()
