"""The session's /sandbox: a listing, with upload and download."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, DataTable, Static

from isol8_tui.bridge import SandboxEntry
from isol8_tui.keys import bindings, key_labels
from isol8_tui.widgets.network import human_bytes


class FileTable(DataTable[Text]):
    HELP: ClassVar[str] = (
        "The files in the selected session's /sandbox (the program's working directory). {refresh} refreshes, "
        "{upload} uploads a host file into the session, {download} or {select_cursor} downloads the highlighted file."
    )


class FilesPane(Vertical):
    HELP: ClassVar[str] = FileTable.HELP
    BINDINGS: ClassVar = [
        *bindings("refresh-files"),
        Binding("u", "upload", "Upload…"),
        Binding("d", "download", "Download…"),
    ]

    class RefreshRequested(Message):
        pass

    class UploadRequested(Message):
        pass

    @dataclass
    class DownloadRequested(Message):
        path: str | None

    def __init__(self) -> None:
        super().__init__(id="files")
        self.entries: list[SandboxEntry] = []

    def compose(self) -> ComposeResult:
        with Horizontal(id="files-bar"):
            yield Static("", id="files-title")
            yield Button("Refresh", id="files-refresh", compact=True)
            yield Button("Upload…", id="files-upload", compact=True)
            yield Button("Download…", id="files-download", compact=True)
        yield Static("", id="files-hint")
        yield FileTable(id="files-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one(FileTable)
        table.add_column("size", key="size")
        table.add_column("modified", key="modified")
        table.add_column("path", key="path")

    def set_title(self, text: str) -> None:
        self.query_one("#files-title", Static).update(text)

    def set_hint(self, hint: str) -> None:
        self.query_one("#files-hint", Static).update(hint)
        self.set_class(bool(hint), "-hint")

    def show(self, entries: list[SandboxEntry]) -> None:
        self.entries = entries
        table = self.query_one(FileTable)
        table.clear()
        for index, entry in enumerate(entries):
            style = "bold $primary" if entry.kind == "dir" else ""
            name = entry.path + ("/" if entry.kind == "dir" else "")
            size = "" if entry.kind == "dir" else human_bytes(entry.size)
            table.add_row(
                Text(size, justify="right"),
                Text(entry.modified, style="dim"),
                Text(name, style=style.replace("$primary", "cyan")),
                key=str(index),
            )
        upload = key_labels(self).bound(FilesPane, "upload")
        self.set_hint("" if entries else f"/sandbox is empty. Upload a file ({upload}) or write one from your code.")

    @property
    def highlighted_path(self) -> str | None:
        table = self.query_one(FileTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        entry = self.entries[int(key)] if key is not None else None
        return entry.path if entry and entry.kind != "dir" else None

    def action_refresh(self) -> None:
        self.post_message(self.RefreshRequested())

    def action_upload(self) -> None:
        self.post_message(self.UploadRequested())

    def action_download(self) -> None:
        self.post_message(self.DownloadRequested(self.highlighted_path))

    @on(Button.Pressed, "#files-refresh")
    def _refresh(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_refresh()

    @on(Button.Pressed, "#files-upload")
    def _upload(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_upload()

    @on(Button.Pressed, "#files-download")
    def _download(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_download()

    @on(DataTable.RowSelected)
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_download()
