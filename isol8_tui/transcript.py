"""One stream of one run as the output pane shows it, without Textual.

A flood keeps its head and its tail: the first `head` lines stay, the last `tail` lines follow the
end, and one line in between says how many were cut. The full text is kept too (up to FULL_LIMIT
bytes), so a run's whole output can be saved to a file whatever the pane shows.
"""

from __future__ import annotations

import re
from collections.abc import Callable

FULL_LIMIT = 64 << 20
"""Bytes of a stream's text kept for saving (the engine's own cap, maxOutputSize, is usually far lower)."""

ERROR_LINE = re.compile(r"error|exception|traceback|fatal|panic|failed|✗", re.IGNORECASE)
"""What the next-error key stops at."""


class Transcript:
    """Lines of one stream; the last line is the one still being written (possibly empty), as in a terminal."""

    def __init__(self, head: int, tail: int) -> None:
        self.head_limit = head
        self.tail_limit = tail
        self._head: list[str] = []
        self._tail: list[str] = []
        self._tail_start = 0  # lines at the front of _tail that were cut (trimmed lazily)
        self.partial = ""
        self.total_lines = 0  # complete lines written
        self.cut = 0  # lines dropped between the head and the tail
        self._full: list[str] = []
        self._full_bytes = 0
        self.full_complete = True  # False once FULL_LIMIT was reached

    def write(self, text: str) -> None:
        if not text:
            return
        self._keep(text)
        rest = text.lstrip("\b")  # backspaces take back the characters of the line being written
        if len(rest) < len(text):
            self.partial = self.partial[: max(0, len(self.partial) - (len(text) - len(rest)))]
            text = rest
        *complete, self.partial = (self.partial + text).split("\n")
        for line in complete:
            self._add(line)

    def mark(self, text: str) -> None:
        """A line of the workbench's own (run separators, notices), on a line of its own."""
        if self.partial:
            self.write("\n")
        self.write(text + "\n")

    def _keep(self, text: str) -> None:
        if not self.full_complete:
            return
        size = len(text.encode("utf-8", "replace"))
        if self._full_bytes + size > FULL_LIMIT:
            self.full_complete = False
            return
        self._full.append(text)
        self._full_bytes += size

    def _add(self, line: str) -> None:
        self.total_lines += 1
        if len(self._head) < self.head_limit:
            self._head.append(line)
            return
        self._tail.append(line)
        if len(self._tail) - self._tail_start > self.tail_limit:
            self._tail_start += 1
            self.cut += 1
            if self._tail_start > self.tail_limit:  # trim in batches: O(1) per line on average
                del self._tail[: self._tail_start]
                self._tail_start = 0

    def __len__(self) -> int:
        if not self._head and not self.partial:
            return 0
        return len(self._head) + (1 if self.cut else 0) + len(self._tail) - self._tail_start + 1

    def __getitem__(self, index: int) -> str:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index < len(self._head):
            return self._head[index]
        index -= len(self._head)
        if self.cut:
            if index == 0:
                return self.cut_marker()
            index -= 1
        index += self._tail_start
        return self._tail[index] if index < len(self._tail) else self.partial

    def cut_marker(self) -> str:
        return f"… {self.cut} lines cut here (the first {self.head_limit} and the last {self.tail_limit} are shown) …"

    @property
    def lines(self) -> list[str]:
        return [self[i] for i in range(len(self))]

    def full_text(self) -> str:
        return "".join(self._full)

    def find(self, needle: str, start: int, backwards: bool = False) -> int | None:
        """The next line (after `start`, or before it) containing `needle` (case-insensitive), wrapping around."""
        return self._next(lambda line: needle.lower() in line.lower(), start, backwards)

    def next_error(self, start: int) -> int | None:
        return self._next(lambda line: bool(ERROR_LINE.search(line)), start, False)

    def _next(self, matches: Callable[[str], bool], start: int, backwards: bool) -> int | None:
        count = len(self)
        if count == 0:
            return None
        step = -1 if backwards else 1
        for offset in range(1, count + 1):
            index = (start + step * offset) % count
            if (self.cut and index == len(self._head)) or not matches(self[index]):
                continue
            return index
        return None
