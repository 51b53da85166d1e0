"""Live stdout and stderr panes with bounded scrollback."""

from __future__ import annotations

import re
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.timer import Timer
from textual.widgets import Log

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
FLUSH_SECONDS = 1 / 30


def clean(text: str) -> str:
    """Terminal control sequences out (colours, cursor moves); a carriage return keeps what follows it,
    so progress bars show their last state."""
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    if "\r" in text:
        text = "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))
    return _CONTROL.sub("", text.replace("\t", "    "))


class OutputPane(Log):
    """One stream. Chunks are batched (at most ~30 repaints a second, however fast the program
    prints) and old lines fall off past `max_lines`. It follows the end unless you scroll up."""

    HELP: ClassVar[str] = (
        "What the program prints, live. Scroll with the arrows, page keys or the mouse; it follows new "
        "output while you are at the end. Only the last lines are kept (tui.scrollbackLines)."
    )
    BINDINGS: ClassVar = [
        Binding("g", "scroll_home", "Top", show=False),
        Binding("G", "scroll_end", "End", show=False),
    ]

    def __init__(self, stream: str, max_lines: int) -> None:
        super().__init__(max_lines=max_lines, auto_scroll=True, id=stream, classes=f"output -{stream}")
        self.stream = stream
        self.total_lines = 0
        self._pending: list[str] = []
        self._timer: Timer | None = None
        self.border_title = stream

    def append(self, text: str) -> None:
        if not text:
            return
        self._pending.append(text)
        if self._timer is None:
            self._timer = self.set_timer(FLUSH_SECONDS, self.flush)

    def append_marker(self, text: str) -> None:
        """A line of our own (run separators, notices), on a line of its own."""
        self.flush()
        if self.line_count and self.lines[-1] != "":
            self.write("\n")
        self.write(text + "\n", scroll_end=True)
        self._update_title()

    def flush(self) -> None:
        self._timer = None
        if not self._pending:
            return
        data = clean("".join(self._pending))
        self._pending.clear()
        self.total_lines += data.count("\n")
        following = self.is_vertical_scroll_end or self.max_scroll_y == 0
        self.write(data, scroll_end=following)
        self._update_title()
        if following:  # the pane may grow after this write (an empty stream is collapsed)
            self.call_after_refresh(self.scroll_end, animate=False, immediate=True, x_axis=False)

    def reset(self) -> None:
        self._pending.clear()
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self.total_lines = 0
        self.clear()
        self._update_title()

    def _update_title(self) -> None:
        dropped = self.total_lines - self.line_count
        lines = f" · {self.total_lines} line{'s' if self.total_lines != 1 else ''}" if self.total_lines else ""
        note = f", showing the last {self.line_count}" if dropped > 0 else ""
        self.border_title = f"{self.stream}[dim]{lines}{note}[/]"
        self.set_class(self.line_count > 0, "-has-content")
        if isinstance(self.parent, OutputPanes):
            self.parent.content_changed()


class OutputPanes(Vertical):
    """stdout above stderr; stderr is tinted so it is never mistaken for normal output."""

    HELP: ClassVar[str] = OutputPane.HELP

    def __init__(self, max_lines: int) -> None:
        super().__init__(id="outputs")
        self._max_lines = max_lines

    def compose(self) -> ComposeResult:
        yield OutputPane("stdout", self._max_lines)
        yield OutputPane("stderr", self._max_lines)

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

    def reset(self) -> None:
        self.stdout.reset()
        self.stderr.reset()

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
