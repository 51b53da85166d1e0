"""What the workbench makes of a stateful run's results (engine.models.RichResult), without Textual:
which of a bundle's MIME types it shows, an HTML table's cells (pandas' `<table>`), an image's line
(type, pixel size, bytes) and the bytes a save writes."""

from __future__ import annotations

import io
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Literal

from engine.models import BINARY_MIME_TYPES, MimeType, RichResult

Kind = Literal["table", "image", "file", "markdown", "text"]

IMAGE_TYPES: tuple[MimeType, ...] = ("image/png", "image/jpeg")
"""Shown as images (where the terminal can); the other binary or vector types are named and saved."""
FILE_TYPES: tuple[MimeType, ...] = ("image/svg+xml", "application/pdf")
TEXT_TYPES: tuple[MimeType, ...] = ("text/plain", "application/json", "text/latex", "text/html")
"""The text shown when no richer type applies, best first (HTML last: its markup, as a last resort)."""

EXTENSIONS: dict[str, str] = {
    "text/plain": ".txt",
    "text/html": ".html",
    "text/markdown": ".md",
    "text/latex": ".tex",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/svg+xml": ".svg",
    "application/json": ".json",
    "application/pdf": ".pdf",
}


@dataclass(frozen=True)
class Table:
    """An HTML table's text: its header row (may be empty) and body rows, padded to one width."""

    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Shown:
    """How one result is shown: its kind and the MIME type whose value that is."""

    kind: Kind
    mime: MimeType
    table: Table | None = None


def shown(result: RichResult) -> Shown:
    """The richest form the workbench shows: a table, an image, a named file, markdown, else text."""
    data = result.data
    if "text/html" in data:
        table = parse_table(data["text/html"])
        if table is not None:
            return Shown("table", "text/html", table)
    for mime in IMAGE_TYPES:
        if mime in data:
            return Shown("image", mime)
    for mime in FILE_TYPES:
        if mime in data:
            return Shown("file", mime)
    if "text/markdown" in data:
        return Shown("markdown", "text/markdown")
    for mime in TEXT_TYPES:
        if mime in data:
            return Shown("text", mime)
    return Shown("text", "text/plain")


_BREAKS = frozenset({"br", "p", "div", "li", "table", "tr", "td", "th"})
"""Tags that start a new line in a browser: their text is apart from the text before them."""


class _TableParser(HTMLParser):
    """The first <table>'s rows; a row under <thead> (or a first row of <th> cells only) is the header."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.header: list[str] | None = None
        self.rows: list[list[str]] = []
        self.found = False  # a <table> opened
        self._depth = 0  # inside the first table (nested tables are read as text)
        self._done = False
        self._in_head = False
        self._skip = 0  # inside <style> or <script>
        self._row: list[str] | None = None
        self._row_heads = True  # the row so far has <th> cells only
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._cell is not None and tag in _BREAKS:
            self._cell.append(" ")
        if tag in ("style", "script"):
            self._skip += 1
        elif self._done:
            return
        elif tag == "table":
            self.found = True
            self._depth += 1
        elif self._depth != 1:
            return
        elif tag == "thead":
            self._in_head = True
        elif tag == "tr":
            self._end_row()
            self._row, self._row_heads = [], True
        elif tag in ("td", "th") and self._row is not None:
            self._end_cell()
            self._cell = []
            self._row_heads = self._row_heads and tag == "th"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script"):
            self._skip = max(0, self._skip - 1)
        elif self._done or self._depth == 0:
            return
        elif tag == "table":
            self._depth -= 1
            if self._depth == 0:
                self._end_row()
                self._done = True
        elif self._depth != 1:
            return
        elif tag in ("td", "th"):
            self._end_cell()
        elif tag == "tr":
            self._end_row()
        elif tag == "thead":
            self._end_row()
            self._in_head = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None and not self._skip:
            self._cell.append(data)

    def _end_cell(self) -> None:
        if self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
        self._cell = None

    def _end_row(self) -> None:
        self._end_cell()
        if self._row is None:
            return
        row, self._row = self._row, None
        if not row:
            return
        if self.header is None and not self.rows and (self._in_head or self._row_heads):
            self.header = row
        elif not self._in_head:
            self.rows.append(row)


def parse_table(html: str) -> Table | None:
    """The first table in `html` (None when there is none, or it has no cells)."""
    parser = _TableParser()
    parser.feed(html)
    parser.close()
    if not parser.found:
        return None
    header = parser.header or []
    width = max([len(header), *(len(row) for row in parser.rows)])
    if width == 0:
        return None

    def padded(row: list[str]) -> list[str]:
        return row + [""] * (width - len(row))

    return Table(padded(header) if header else [], [padded(row) for row in parser.rows])


def content(result: RichResult, mime: MimeType) -> bytes:
    """The bytes of `mime`'s value, as a save writes them (binary types decoded from base64)."""
    if mime in BINARY_MIME_TYPES:
        return result.binary(mime)
    return result.data.get(mime, "").encode()


def pixel_size(data: bytes) -> tuple[int, int] | None:
    """An image's width and height in pixels, None when Pillow cannot read it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def describe(result: RichResult, mime: MimeType) -> str:
    """The line that names a binary result: `image/png · 640×480 px · 23,456 bytes`."""
    try:
        data = content(result, mime)
    except ValueError:
        return f"{mime} · not valid base64"
    parts: list[str] = [mime]
    if mime in IMAGE_TYPES:
        size = pixel_size(data)
        parts.append(f"{size[0]}×{size[1]} px" if size else "not a readable image")
    parts.append(f"{len(data):,} bytes")
    return " · ".join(parts)
