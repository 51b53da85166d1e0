"""A stateful run's results under its output: each displayed value in the richest form the workbench
shows (isol8_tui.rich_results): an HTML table as a table, markdown as markdown, a PNG or JPEG as an
image where the terminal can show one (textual-image picks sixel, the kitty graphics protocol or
coloured half cells), else a line naming it; `s` saves the selected result to a file."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import DataTable, Markdown, Static

from engine.models import MimeType, RichResult
from isol8_tui import rich_results
from isol8_tui.keys import bindings, key_labels
from isol8_tui.widgets.output import clean

log = logging.getLogger("isol8.tui")


def terminal_image() -> Callable[..., Widget] | None:
    """textual-image's widget, which draws with what the terminal can (sixel, kitty graphics, half
    cells); None when the library cannot ask the terminal (a pseudo-terminal of size 0 makes it divide
    by zero): images are then shown as their line."""
    try:
        from textual_image.widget import Image
    except Exception as exc:  # a third-party import that talks to the terminal: never the app's end
        log.warning("images are shown as their line: textual-image could not start (%s)", exc)
        return None
    return Image


# textual-image asks the terminal what it can draw when it is imported, which only works before
# Textual starts reading the terminal: this module is imported with the app, ahead of `App.run`.
TERMINAL_IMAGE = terminal_image()


class ResultView(Vertical, can_focus=True):
    """One result: a title (its number, kind, whether it is the main result), then the value."""

    HELP: ClassVar[str] = (
        "A value the run displayed (stateful sessions): a table, markdown, an image (as an image where "
        "the terminal can draw one, else a line with its type, pixel size and bytes) or text. "
        "{save_result} saves it to a file (an image as its PNG or JPEG)."
    )
    BINDINGS: ClassVar = bindings("save-result")

    @dataclass
    class SaveRequested(Message):
        view: ResultView

    def __init__(self, result: RichResult, number: int, images: bool) -> None:
        super().__init__(classes="result")
        self.result = result
        self.number = number
        self.images = images
        self.shown = rich_results.shown(result)
        main = " · main result" if result.is_main_result else ""
        self.border_title = f"#{number} {self.shown.kind}{main}"

    @property
    def mime(self) -> MimeType:
        return self.shown.mime

    def compose(self) -> ComposeResult:
        shown = self.shown
        if shown.kind == "table" and shown.table is not None:
            rows = shown.table.rows
            header = shown.table.header or [""] * len(rows[0] if rows else [])
            numeric = [all(_is_number(row[c]) for row in rows if row[c]) for c in range(len(header))]
            widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

            def aligned(cells: list[str]) -> list[str]:
                """Numbers right-aligned, as pandas prints them (DataTable cells start at the left)."""
                return [
                    cell.rjust(width) if right else cell
                    for cell, width, right in zip(cells, widths, numeric, strict=True)
                ]

            table: DataTable[Text] = DataTable(show_cursor=False, zebra_stripes=True, classes="result-table")
            table.add_columns(*(Text(clean(name)) for name in aligned(header)))
            table.add_rows([[Text(clean(cell)) for cell in aligned(row)] for row in rows])
            yield table
        elif shown.kind == "markdown":
            # links are not followed: the text is the untrusted code's
            markdown = clean(self.result.data.get("text/markdown", ""))
            yield Markdown(markdown, classes="result-markdown", open_links=False)
        elif shown.kind in ("image", "file"):
            save = key_labels(self).bound(ResultView, "save_result")
            caption = Text(rich_results.describe(self.result, shown.mime))
            caption.append(f" · {save} saves it", style="dim")
            yield Static(caption, classes="result-caption")
            if shown.kind == "image" and self.images and TERMINAL_IMAGE is not None:
                picture = self._picture()
                if picture is not None:
                    yield picture
        else:
            yield Static(Text(clean(self.result.data.get(shown.mime, ""))), classes="result-text")

    def _picture(self) -> Widget | None:
        """The image as textual-image draws it; None when Pillow cannot read it."""
        from PIL import Image, UnidentifiedImageError

        try:
            image = Image.open(io.BytesIO(rich_results.content(self.result, self.shown.mime)))
            image.load()
        except (UnidentifiedImageError, OSError, ValueError):
            return None  # the caption says it is not a readable image
        return TERMINAL_IMAGE(image, classes="result-image") if TERMINAL_IMAGE is not None else None

    def action_save_result(self) -> None:
        self.post_message(self.SaveRequested(self))


class ResultsPane(VerticalScroll):
    """The selected session's results of its last run (or of every kept run), in the order displayed."""

    HELP: ClassVar[str] = ResultView.HELP

    def __init__(self, images: bool) -> None:
        super().__init__(id="rich-results")
        self.border_title = "results"
        self.images = images  # `tui.images`: images as images (else the line that names them)
        self.count = 0

    def show(self, results: list[RichResult]) -> None:
        """Another session's results, or none (a new run)."""
        self.remove_children()
        self.count = 0
        for result in results:
            self.add(result)
        self._update()

    def add(self, result: RichResult) -> None:
        self.count += 1
        self.mount(ResultView(result, self.count, self.images))
        self._update()

    def _update(self) -> None:
        self.border_title = f"results[dim] · {self.count}[/]" if self.count else "results"
        self.set_class(self.count > 0, "-has-results")


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True
