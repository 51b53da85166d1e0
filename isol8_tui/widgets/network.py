"""The network-log inspector: the run's requests, filterable, blocked ones highlighted, with details."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.markup import escape
from textual.message import Message
from textual.reactive import var
from textual.widgets import DataTable, Input, Select, Static

from engine import NetworkLogEntry
from isol8_tui.keys import bindings, key_labels
from isol8_tui.sessions import Session

ACTION_FILTERS = (("All", "all"), ("Allowed", "ALLOW"), ("Blocked", "BLOCK"))
COLUMNS = ("action", "status", "method", "host", "bytes", "ms", "path", "rule", "time")
"""The short columns first, so the verdict, status, size and duration fit however narrow the pane."""


def clock_time(timestamp: str) -> str:
    """`12:00:01.120` out of an ISO timestamp (the date is the run's)."""
    _, _, time_part = timestamp.partition("T")
    return (time_part or timestamp).rstrip("Z")[:12]


def human_bytes(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KB"
    return f"{count / 1024 / 1024:.1f} MB"


def describe(entry: NetworkLogEntry) -> str:
    """The detail view of one request (markup)."""
    scheme = "https" if entry.method == "CONNECT" else "http"
    target = f"{scheme}://{entry.host}:{entry.port}{entry.path or ''}"
    verdict = "[b $success]ALLOW[/]" if entry.action == "ALLOW" else "[b $error]BLOCK[/]"
    rule = f"rule [b]{entry.rule}[/]" if entry.rule else "no rule (default policy)"
    tunnel = "  [dim](TLS tunnel: the path is not visible)[/]" if entry.method == "CONNECT" else ""
    headers = "".join(f"\n[dim]{escape(name)}:[/] {escape(value)}" for name, value in entry.headers or [])
    return (
        f"[b]{entry.method}[/] {target}{tunnel}\n"
        f"{verdict} by {rule} · status {entry.status if entry.status is not None else '—'} · "
        f"in {human_bytes(entry.bytes_in)} · out {human_bytes(entry.bytes_out)} · "
        f"{entry.duration_ms:.1f} ms · at {clock_time(entry.timestamp)}{headers}"
    )


class NetworkTable(DataTable[Text]):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"network-table--blocked", "network-table--allowed"}
    """A blocked request's row and an allowed request's verdict (styled in workbench.tcss)."""

    HELP: ClassVar[str] = (
        "Every request the program made through the filtered network's proxy, live. Blocked requests "
        "are red. Show a request's details with {select_cursor}, filter by host with {focus_filter}, and "
        "cycle all/allowed/blocked with {cycle_action}; {allow_host} adds a blocked request's host to the "
        "session's allow list (applied at once); {export_har} exports the run's requests as HAR."
    )


class NetworkInspector(Vertical):
    """Requests of the current run; a hint replaces the table when the selected session logs no requests."""

    HELP: ClassVar[str] = NetworkTable.HELP
    BINDINGS: ClassVar = [
        Binding("slash", "focus_filter", "Filter", show=True, tooltip="Filter the requests by host"),
        Binding("a", "cycle_action", "Verdict", show=True, tooltip="Show all, allowed or blocked requests"),
        *bindings("allow-host", "export-har"),
    ]

    session: var[Session | None] = var(None, init=False)
    """The selected session: whether its requests go through the logging proxy."""

    @dataclass
    class DetailRequested(Message):
        entry: NetworkLogEntry

    class ExportRequested(Message):
        """The HAR export key: the screen asks where to write the run's requests."""

    @dataclass
    class AllowRequested(Message):
        """The allow-host key on a request: the screen adds its host to the session's allow list."""

        entry: NetworkLogEntry

    @dataclass
    class Counted(Message):
        """The requests changed; `label` is the tab's title."""

        label: Content

    def __init__(self) -> None:
        super().__init__(id="network")
        self.entries: list[NetworkLogEntry] = []

    def compose(self) -> ComposeResult:
        with Horizontal(id="network-filters"):
            yield Input(placeholder="filter host…", id="host-filter", compact=True)
            yield Select(ACTION_FILTERS, value="all", allow_blank=False, id="action-filter", compact=True)
            yield Static("", id="network-count")
        yield Static("", id="network-hint")
        table = NetworkTable(id="network-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static("", id="network-detail")

    def on_mount(self) -> None:
        table = self.query_one(NetworkTable)
        for name in COLUMNS:
            table.add_column(name, key=name)
        self._refresh_rows()
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self._refresh_rows())

    # --- state from the screen --------------------------------------------------------------------------
    def watch_session(self) -> None:
        self._show_hint()

    def clear(self) -> None:
        self.show([])

    def show(self, entries: list[NetworkLogEntry]) -> None:
        """Show these requests (the selected session's) instead of the ones shown."""
        self.entries = list(entries)
        self._refresh_rows()
        self._update_count()
        self._counted()

    def action_export_har(self) -> None:
        self.post_message(self.ExportRequested())

    def action_allow_host(self) -> None:
        entry = self._selected()
        if entry is not None:
            self.post_message(self.AllowRequested(entry))

    def add(self, entry: NetworkLogEntry) -> None:
        self.entries.append(entry)
        if self._matches(entry):
            self._add_row(len(self.entries) - 1, entry)
        self._update_count()
        self._counted()

    def _counted(self) -> None:
        blocked = sum(1 for e in self.entries if e.action == "BLOCK")
        label = "Network"
        if self.entries:
            label += f" {len(self.entries)}"
        if blocked:
            label += f" [b $error]✗{blocked}[/]"
        self.post_message(self.Counted(Content.from_markup(label)))
        self._show_hint()

    def _show_hint(self) -> None:
        """Explain why there is nothing to see (no filtered network, logging off, no request yet)."""
        session = self.session
        if session is None:
            return
        name = "scratch runs" if session.scratch else f"session {session.name}"
        new_session = key_labels(self)["new-session"]
        if session.network != "filtered":
            hint = Content.from_markup(
                "Nothing to inspect: $name $verb network [b]$network[/], so no request goes through the logging "
                "proxy. Create a session with network [b]filtered[/] ($new) to see each request here, live.",
                name=name,
                verb="use" if session.scratch else "uses",
                network=session.network,
                new=new_session,
            )
        elif not session.log_network:
            hint = Content.from_markup(
                "Network logging is off for $name. Sessions created here log every request ($new).",
                name=name,
                new=new_session,
            )
        else:
            hint = Content() if self.entries else Content.from_markup("[dim]No requests yet: they appear here live.[/]")
        self.set_class(not session.logs_network, "-off")
        self.query_one("#network-hint", Static).update(hint)
        self.set_class(bool(hint), "-hint")

    def set_filters(self, host: str | None = None, action: str | None = None) -> None:
        if host is not None:
            self.query_one("#host-filter", Input).value = host
        if action is not None:
            self.query_one("#action-filter", Select).value = action
        self._refresh_rows()

    @property
    def host_filter(self) -> str:
        return self.query_one("#host-filter", Input).value.strip().lower()

    @property
    def action_filter(self) -> str:
        value = self.query_one("#action-filter", Select).value
        return value if isinstance(value, str) else "all"

    @property
    def visible_rows(self) -> int:
        return self.query_one(NetworkTable).row_count

    # --- filtering -----------------------------------------------------------------------------------------
    def _matches(self, entry: NetworkLogEntry) -> bool:
        action = self.action_filter
        if action != "all" and entry.action != action:
            return False
        host = self.host_filter
        return not host or host in entry.host.lower()

    def _refresh_rows(self) -> None:
        table = self.query_one(NetworkTable)
        table.clear()
        for index, entry in enumerate(self.entries):
            if self._matches(entry):
                self._add_row(index, entry)
        self._update_count()
        self._show_detail()

    def _add_row(self, index: int, entry: NetworkLogEntry) -> None:
        table = self.query_one(NetworkTable)
        blocked = entry.action == "BLOCK"
        verdict = table.get_component_rich_style(f"network-table--{'blocked' if blocked else 'allowed'}", partial=True)
        style = verdict if blocked else Style()
        path = entry.path or "—"
        if len(path) > 28:
            path = path[:27] + "…"
        cells = (
            "✗ BLOCK" if blocked else "✓ ALLOW",
            str(entry.status) if entry.status is not None else "—",
            entry.method,
            entry.host,
            human_bytes(entry.bytes_in + entry.bytes_out),
            f"{entry.duration_ms:.0f}",
            path,
            entry.rule or "—",
            clock_time(entry.timestamp),
        )
        row = [Text(cell, style=style) for cell in cells]
        row[0] = Text(cells[0], style=verdict)
        table.add_row(*row, key=str(index))
        if table.row_count == 1:
            self._show_detail()

    def _update_count(self) -> None:
        total = len(self.entries)
        blocked = sum(1 for e in self.entries if e.action == "BLOCK")
        shown = self.visible_rows
        parts = [f"{total} request{'s' if total != 1 else ''}"]
        if blocked:
            parts.append(f"[b $error]{blocked} blocked[/]")
        if shown != total:
            parts.append(f"{shown} shown")
        self.query_one("#network-count", Static).update(" · ".join(parts))

    def _selected(self) -> NetworkLogEntry | None:
        table = self.query_one(NetworkTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.entries[int(key)] if key is not None else None

    def _show_detail(self) -> None:
        entry = self._selected()
        detail = self.query_one("#network-detail", Static)
        detail.update(describe(entry) if entry else "")
        detail.set_class(entry is not None and entry.action == "BLOCK", "-blocked")
        detail.display = entry is not None

    # --- events ----------------------------------------------------------------------------------------------
    @on(Input.Changed, "#host-filter")
    @on(Select.Changed, "#action-filter")
    def _filters_changed(self) -> None:
        self._refresh_rows()

    @on(DataTable.RowHighlighted)
    def _row_highlighted(self) -> None:
        self._show_detail()

    @on(DataTable.RowSelected)
    def _row_selected(self) -> None:
        entry = self._selected()
        if entry is not None:
            self.post_message(self.DetailRequested(entry))

    @on(Input.Submitted, "#host-filter")
    def _filter_submitted(self) -> None:
        self.query_one(NetworkTable).focus()

    def action_focus_filter(self) -> None:
        self.query_one("#host-filter", Input).focus()

    def action_cycle_action(self) -> None:
        values = [value for _, value in ACTION_FILTERS]
        current = values.index(self.action_filter)
        self.query_one("#action-filter", Select).value = values[(current + 1) % len(values)]
