"""The terminal of an interactive run: a pseudo-terminal in the sandbox, and what its user sends.

`execute_stream(request, terminal=Terminal(rows, cols))` runs the code step on a new
pseudo-terminal of that size (so programs see a TTY: colours, line editing, `input()`); what is
written to the Terminal while the run goes reaches the program as typed keys, `resize` changes the
window size (the program gets SIGWINCH), `signal` interrupts it, `close` ends its input (the
terminal's EOF). A pseudo-terminal has one output stream: everything arrives as `stdout`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from engine.errors import InputTooLarge
from engine.models import MAX_STDIN_BYTES, TerminalSize

Signal = Literal["SIGINT", "SIGTERM"]
TERMINAL_TYPE = "xterm-256color"
"""What an interactive run's programs are told their terminal is (`TERM`), unless the request sets it."""


@dataclass(frozen=True)
class Keys:
    data: bytes


@dataclass(frozen=True)
class Resize:
    size: TerminalSize


@dataclass(frozen=True)
class Interrupt:
    signal: Signal


@dataclass(frozen=True)
class EndOfInput:
    pass


TerminalInput = Keys | Resize | Interrupt | EndOfInput


class Terminal:
    """One interactive run's terminal; its methods may be called before and while it runs."""

    def __init__(self, rows: int = 24, cols: int = 80) -> None:
        self.size = TerminalSize(rows=rows, cols=cols)
        self._inputs: asyncio.Queue[TerminalInput] = asyncio.Queue()
        self._sent = 0
        self._closed = False

    def write(self, data: str | bytes) -> None:
        """Keys for the program (UTF-8 for text); ignored once the input is closed."""
        if self._closed:
            return
        raw = data.encode() if isinstance(data, str) else bytes(data)
        self._sent += len(raw)
        if self._sent > MAX_STDIN_BYTES:
            raise InputTooLarge(
                f"An interactive run takes at most {MAX_STDIN_BYTES} bytes of input; send large data as a file."
            )
        if raw:
            self._inputs.put_nowait(Keys(raw))

    def resize(self, rows: int, cols: int) -> None:
        self.size = TerminalSize(rows=rows, cols=cols)
        self._inputs.put_nowait(Resize(self.size))

    def signal(self, name: Signal = "SIGINT") -> None:
        """Send SIGINT or SIGTERM to the program's foreground process group."""
        self._inputs.put_nowait(Interrupt(name))

    def close(self) -> None:
        """End the program's input (as ctrl+d at the start of a line would)."""
        if not self._closed:
            self._closed = True
            self._inputs.put_nowait(EndOfInput())

    async def next_input(self) -> TerminalInput:
        return await self._inputs.get()
