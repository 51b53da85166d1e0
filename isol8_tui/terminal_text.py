"""What an interactive run's terminal shows, line by line: finished lines and the current one, with
their colours.

A line-oriented view, not a VT emulator: colours (SGR), carriage return (the line is overwritten from
its start, as progress bars do), backspace (its `\\b \\b` echo), tab, erase-in-line and moves along the
current line are followed; every other control sequence (cursor addressing, screen clearing, the
alternate screen) is dropped, so full-screen programs (vim, top) do not render.
"""

from __future__ import annotations

import re

from rich.ansi import AnsiDecoder
from rich.text import Text

_TOKEN = re.compile(
    r"(\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, erase, cursor moves
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC: titles, links
    r"|\x1b[@-Z\\-_]"  # other escapes
    r"|[\x00-\x1f\x7f])"  # one control character
)
_UNFINISHED = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*)?$")
"""An escape sequence the chunk's end cut; it is completed by the next chunk."""
TAB = 8


class TerminalText:
    """Feed it the run's output as it arrives; `lines` and `current` are what to show."""

    def __init__(self, max_lines: int = 5000) -> None:
        self.lines: list[Text] = []
        self.current = Text()
        self.column = 0  # the cursor, in the current line
        self.max_lines = max_lines
        self._decoder = AnsiDecoder()
        self._rest = ""

    @property
    def all_lines(self) -> list[Text]:
        return [*self.lines, self.current]

    def plain(self) -> list[str]:
        """The lines as text, the current one last (for tests and copying)."""
        return [line.plain for line in self.all_lines]

    def feed(self, data: str) -> None:
        data = self._rest + data
        cut = _UNFINISHED.search(data)
        self._rest = data[cut.start() :] if cut else ""
        if cut:
            data = data[: cut.start()]
        for index, part in enumerate(_TOKEN.split(data)):
            if not part:
                continue
            if index % 2 == 0:
                self._put(self._decoder.decode_line(part))
            else:
                self._control(part)

    def _control(self, token: str) -> None:
        if token == "\n":
            self._new_line()
        elif token == "\r":
            self.column = 0
        elif token == "\b":
            self.column = max(0, self.column - 1)
        elif token == "\t":
            self._put(Text(" " * (TAB - self.column % TAB), style=self._decoder.style))
        elif token.startswith("\x1b["):
            self._csi(token[2:-1], token[-1])
        # any other control character or escape sequence is dropped

    def _csi(self, params: str, final: str) -> None:
        number = int(params) if params.isdigit() else None
        if final == "m":
            self._decoder.decode_line(f"\x1b[{params}m")  # the colours of what follows
        elif final == "K":
            if number in (None, 0):
                self.current = self.current[: self.column]
            elif number == 2:
                self.current = Text()
        elif final == "D":
            self.column = max(0, self.column - (number or 1))
        elif final == "C":
            self.column += number or 1
        elif final == "G":
            self.column = max(0, (number or 1) - 1)

    def _put(self, text: Text) -> None:
        line = self.current
        if self.column > len(line):
            line = line + " " * (self.column - len(line))
        end = self.column + len(text)
        self.current = Text.assemble(line[: self.column], text, line[end:])
        self.column = end

    def _new_line(self) -> None:
        self.current.rstrip()
        self.lines.append(self.current)
        if len(self.lines) > self.max_lines:
            del self.lines[: len(self.lines) - self.max_lines]
        self.current = Text()
        self.column = 0
