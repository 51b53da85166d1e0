"""Live stdout and stderr panes: each shows a Transcript (the head and the tail of a flood), renders
only the lines on screen, and can be searched (`/`, n, N), stepped through its error lines and saved."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from rich.cells import cell_len
from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.timer import Timer
from textual.widgets import Input

from isol8_tui.keys import bindings, key_labels
from isol8_tui.transcript import Transcript

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ERASED = re.compile(r"[^\n\b]\x08")
"""A character and the backspace that took it back (a terminal echoes a typed backspace as `\\b \\b`)."""
FLUSH_SECONDS = 1 / 20
"""How often a pane takes in what arrived: at most ~20 repaints a second, however fast the program prints."""
FLUSH_CHARACTERS = 128 * 1024
"""The most a pane takes in at once; the rest waits for the next turn, so keys are handled in between."""


def clean(text: str) -> str:
    """Terminal control sequences out (colours, cursor moves); a carriage return keeps what follows it,
    so progress bars show their last state (and a terminal's `\\r\\n` is a newline); a backspace takes
    back the character before it (at the start of the text, the one before it in the transcript)."""
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    while "\b" in text and _ERASED.search(text):
        text = _ERASED.sub("", text)
    if "\r" in text:
        text = "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))
    rest = text.lstrip("\b")  # what takes back characters written before (Transcript.write)
    return text[: len(text) - len(rest)] + _CONTROL.sub("", rest.replace("\t", "    "))


_SOURCE = re.compile(
    r'File "/sandbox/(?P<py>[^"/]+)", line (?P<pyline>\d+)|/sandbox/(?P<js>[^\s:/()]+):(?P<jsline>\d+)'
)


def source_line(text: str) -> tuple[str, int] | None:
    """The file in /sandbox and the line a traceback line names (Python's `File "...", line N`, or the
    JavaScript runtimes' `/sandbox/name:N`)."""
    match = _SOURCE.search(text)
    if match is None:
        return None
    if match["py"]:
        return match["py"], int(match["pyline"])
    return match["js"], int(match["jsline"])


def new_transcript(scrollback_lines: int) -> Transcript:
    """A stream's transcript: a fifth of the scrollback for the head, the rest for the tail."""
    head = scrollback_lines // 5
    return Transcript(head, scrollback_lines - head)


class OutputPane(ScrollView, can_focus=True):
    """One stream of the selected session's run. It follows the end unless you scroll up."""

    HELP: ClassVar[str] = (
        "What the program prints, live. Scroll with the arrows, page keys or the mouse; it follows new "
        "output while you are at the end. A flood keeps its first and last lines (tui.scrollbackLines) and "
        "says how many were cut. {search} searches, {next_match} / {previous_match} step through the "
        "matches, {next_error} goes to the next error line, {save_output} saves the run's full output. "
        "Clicking a traceback line that names the file moves the editor there."
    )
    COMPONENT_CLASSES: ClassVar[set[str]] = {"output--cursor", "output--match", "output--cut"}
    BINDINGS: ClassVar = [
        Binding("g", "scroll_home", "Top", show=False),
        Binding("G", "scroll_end", "End", show=False),
        *bindings("search-output", "next-match", "previous-match", "next-error", "save-output"),
    ]

    @dataclass
    class SaveRequested(Message):
        pane: OutputPane

    @dataclass
    class SourceClicked(Message):
        """A traceback line naming a file in /sandbox was clicked: the editor goes to that line."""

        name: str
        line: int

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        index = self.scroll_offset.y + offset.y
        if 0 <= index < len(self.transcript):
            found = source_line(self.transcript[index])
            if found is not None:
                self._go(index)
                self.post_message(self.SourceClicked(*found))

    def __init__(self, stream: str, scrollback_lines: int) -> None:
        super().__init__(id=stream, classes=f"output -{stream}")
        self.stream = stream
        self.transcript = new_transcript(scrollback_lines)
        self.cursor: int | None = None  # the line a search or the error key went to
        self.needle = ""
        self._pending: list[str] = []
        self._timer: Timer | None = None
        self._width = 0
        self.border_title = stream

    # --- what Log offered the tests and the screen ---------------------------------------------------------------
    @property
    def lines(self) -> list[str]:
        return self.transcript.lines

    @property
    def line_count(self) -> int:
        return len(self.transcript)

    @property
    def total_lines(self) -> int:
        return self.transcript.total_lines

    # --- content ---------------------------------------------------------------------------------------------------
    def show(self, transcript: Transcript) -> None:
        """Show another transcript (the selected session changed, or a new run started)."""
        self._drop_pending()
        self.transcript = transcript
        self.cursor = None
        self._width = max((cell_len(line) for line in transcript.lines), default=0)
        self._resized(follow=True)

    def append(self, text: str) -> None:
        if not text:
            return
        self._pending.append(text)
        if self._timer is None:
            self._timer = self.set_timer(FLUSH_SECONDS, self._flush_slice)

    def _flush_slice(self) -> None:
        self.flush(everything=False)

    def append_marker(self, text: str) -> None:
        """A line of our own (run separators, notices), on a line of its own."""
        self.flush()
        self.transcript.mark(text)
        self._width = max(self._width, cell_len(text))
        self._resized(follow=True)

    def flush(self, everything: bool = True) -> None:
        """Take in what arrived: everything (a run ended, a marker follows), or on the timer a slice of at
        most FLUSH_CHARACTERS, the rest on the next turn."""
        self._timer = None
        if not self._pending:
            return
        data = "".join(self._pending)
        self._pending.clear()
        if not everything and len(data) > FLUSH_CHARACTERS:
            cut = data.rfind("\n", 0, FLUSH_CHARACTERS) + 1 or FLUSH_CHARACTERS
            data, rest = data[:cut], data[cut:]
            self._pending.append(rest)
            self._timer = self.set_timer(0.001, self._flush_slice)
        data = clean(data)
        following = self.is_vertical_scroll_end or self.max_scroll_y == 0
        self.transcript.write(data)
        self._width = max(self._width, max(cell_len(line) for line in data.split("\n")))
        self._resized(follow=following)

    def _drop_pending(self) -> None:
        self._pending.clear()
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def _resized(self, follow: bool) -> None:
        self.virtual_size = Size(self._width + 1, len(self.transcript))
        self.refresh()
        self._update_title()
        if follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
            # the pane may grow after this write (an empty stream is collapsed)
            self.call_after_refresh(self.scroll_end, animate=False, immediate=True, x_axis=False)

    def _update_title(self) -> None:
        total = self.transcript.total_lines
        lines = f" · {total} line{'s' if total != 1 else ''}" if total else ""
        note = f", {self.transcript.cut} cut from the middle" if self.transcript.cut else ""
        search = f" · /{self.needle}" if self.needle else ""
        self.border_title = f"{self.stream}[dim]{lines}{note}{search}[/]"
        self.set_class(self.line_count > 0, "-has-content")
        if isinstance(self.parent, OutputPanes):
            self.parent.content_changed()

    # --- rendering -------------------------------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.scrollable_content_region.width
        base = self.rich_style
        if index >= len(self.transcript):
            return Strip.blank(width, base)
        line = self.transcript[index]
        style = base
        if self.transcript.cut and index == self.transcript.head_limit:
            style = base + self.get_component_rich_style("output--cut")
        if index == self.cursor:
            style = base + self.get_component_rich_style("output--cursor")
        text = Text(line, style=style, no_wrap=True, end="")
        if self.needle:
            text.highlight_words([self.needle], self.get_component_rich_style("output--match"), case_sensitive=False)
        segments = list(text.render(self.app.console))
        strip = Strip(segments).crop(scroll_x, scroll_x + width)
        return strip.extend_cell_length(width, style if index == self.cursor else base).simplify()

    # --- search, errors, save ------------------------------------------------------------------------------------
    def action_search(self) -> None:
        if isinstance(self.parent, OutputPanes):
            self.parent.open_search(self)

    def search(self, needle: str) -> None:
        self.needle = needle
        self._update_title()
        self.cursor = None
        self.action_next_match()

    def action_next_match(self) -> None:
        self._step_match(backwards=False)

    def action_previous_match(self) -> None:
        self._step_match(backwards=True)

    def _step_match(self, backwards: bool) -> None:
        if not self.needle:
            self.notify(f"Nothing to find yet: {key_labels(self).bound(OutputPane, 'search')} searches.", timeout=3)
            return
        start = self.cursor if self.cursor is not None else (len(self.transcript) if backwards else -1)
        found = self.transcript.find(self.needle, start, backwards)
        if found is None:
            self.notify(f'"{self.needle}" is not in {self.stream}.', severity="warning", timeout=3)
        self._go(found)

    def action_next_error(self) -> None:
        start = self.cursor if self.cursor is not None else self.scroll_offset.y - 1
        found = self.transcript.next_error(start)
        if found is None:
            self.notify(f"No error line in {self.stream}.", timeout=3)
        self._go(found)

    def _go(self, index: int | None) -> None:
        if index is None:
            return
        self.cursor = index
        self.scroll_to(y=max(0, index - self.scrollable_content_region.height // 2), animate=False, immediate=True)
        self.refresh()

    def action_save_output(self) -> None:
        self.post_message(self.SaveRequested(self))


class OutputSearch(Input):
    """The search line under the output panes: enter searches the pane it was opened from; escape leaves."""

    BINDINGS: ClassVar = [Binding("escape", "leave", "Leave search")]

    def action_leave(self) -> None:
        if isinstance(self.parent, OutputPanes):
            self.parent.close_search()


class OutputPanes(Vertical):
    """stdout above stderr; stderr is tinted so it is never mistaken for normal output."""

    HELP: ClassVar[str] = OutputPane.HELP

    def __init__(self, scrollback_lines: int) -> None:
        super().__init__(id="outputs")
        self.scrollback_lines = scrollback_lines
        self._searching: OutputPane | None = None

    def compose(self) -> ComposeResult:
        yield OutputPane("stdout", self.scrollback_lines)
        yield OutputPane("stderr", self.scrollback_lines)
        yield OutputSearch(placeholder="search the output · enter finds · escape leaves", id="output-search")

    @property
    def stdout(self) -> OutputPane:
        return self.query_one("#stdout", OutputPane)

    @property
    def stderr(self) -> OutputPane:
        return self.query_one("#stderr", OutputPane)

    def content_changed(self) -> None:
        """An empty stream shrinks to its title line so the other one gets the room."""
        stdout, stderr = self.stdout, self.stderr
        self.set_class(stdout.line_count == 0 and stderr.line_count > 0, "-stdout-empty")
        self.set_class(stderr.line_count == 0, "-stderr-empty")

    def on_mount(self) -> None:
        self.content_changed()

    def pane(self, stream: str) -> OutputPane:
        return self.stderr if stream == "stderr" else self.stdout

    def show(self, stdout: Transcript, stderr: Transcript) -> None:
        self.stdout.show(stdout)
        self.stderr.show(stderr)

    def open_search(self, pane: OutputPane) -> None:
        self._searching = pane
        search = self.query_one(OutputSearch)
        search.value = pane.needle
        self.add_class("-searching")
        search.focus()

    def close_search(self) -> None:
        self.remove_class("-searching")
        if self._searching is not None:
            self._searching.focus()

    @on(Input.Submitted, "#output-search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        pane = self._searching or self.stdout
        self.close_search()
        pane.search(event.value)

    def separator(self, run_id: int, session: str, runtime: str) -> None:
        """Where a run's output starts, when output is kept between runs."""
        for pane in (self.stdout, self.stderr):
            if pane.line_count:
                pane.append_marker(f"── run {run_id} · {session} · {runtime} ──")

    def notice(self, text: str) -> None:
        """Why the run ended abnormally, as the engine says it (timeout, out of memory, ...)."""
        self.stderr.append_marker(f"--- {text} ---")

    def failed(self, error: str) -> None:
        """Why the run could not run or finish (not the program's fault)."""
        self.stderr.append_marker(f"✗ {error}")

    def flush(self) -> None:
        self.stdout.flush()
        self.stderr.flush()
