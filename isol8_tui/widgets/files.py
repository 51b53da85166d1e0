"""The selected session's /sandbox: its last listing, with upload and download."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.message import Message
from textual.reactive import var
from textual.widgets import Button, DataTable, Static

from isol8_tui.bridge import SandboxEntry
from isol8_tui.keys import bindings, key_labels
from isol8_tui.sessions import Session
from isol8_tui.widgets.network import human_bytes


@dataclass(frozen=True)
class Listing:
    """One listing of a session's /sandbox: what it held, or why it could not be listed."""

    entries: tuple[SandboxEntry, ...] = ()
    error: str | None = None


class FileTable(DataTable[Text]):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"file-table--dir"}
    """A folder's name (styled in workbench.tcss)."""

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

    session: var[Session | None] = var(None, init=False)
    """The selected session; a new one starts without a listing."""
    listing: var[Listing | None] = var(None, init=False)
    """Its last listing (None: not listed yet)."""

    def __init__(self) -> None:
        super().__init__(id="files")

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
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self.watch_listing())

    @property
    def entries(self) -> list[SandboxEntry]:
        return list(self.listing.entries) if self.listing else []

    def watch_session(self) -> None:
        self.listing = None
        self._show_state()

    def watch_listing(self) -> None:
        table = self.query_one(FileTable)
        table.clear()
        folder = table.get_component_rich_style("file-table--dir", partial=True)
        for index, entry in enumerate(self.entries):
            name = entry.path + ("/" if entry.kind == "dir" else "")
            size = "" if entry.kind == "dir" else human_bytes(entry.size)
            table.add_row(
                Text(size, justify="right"),
                Text(entry.modified, style="dim"),
                Text(name, style=folder if entry.kind == "dir" else ""),
                key=str(index),
            )
        self._show_state()

    def _show_state(self) -> None:
        """The title, and a hint where there is nothing to list: scratch, a failed or an empty listing."""
        session, listing, labels = self.session, self.listing, key_labels(self)
        if session is None:
            return
        if session.scratch:
            title = Content.from_markup("[b]scratch[/] [dim]has no /sandbox between runs[/]")
            hint = Content(
                "Scratch runs start a fresh container each time, so nothing stays in /sandbox. Pick or create "
                f"a session ({labels['new-session']}) to keep files, upload and download."
            )
        else:
            title = Content.from_markup("[b]/sandbox[/] of $name", name=session.name)
            hint = Content()
            if listing is not None and listing.error is not None:
                hint = Content.from_markup("[$error]Could not list /sandbox: $reason[/]", reason=listing.error)
            elif listing is not None and not listing.entries:
                upload = labels.bound(FilesPane, "upload")
                hint = Content(f"/sandbox is empty. Upload a file ({upload}) or write one from your code.")
        self.query_one("#files-title", Static).update(title)
        self.query_one("#files-hint", Static).update(hint)
        self.set_class(session.scratch, "-off")
        self.set_class(bool(hint), "-hint")

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
