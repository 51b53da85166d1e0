"""F1: what the focused pane is for and its keys, then the keys that work everywhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from isol8_tui.keys import key_label, key_labels


@dataclass(frozen=True)
class KeyHelp:
    keys: str
    description: str


def key_table(rows: list[KeyHelp], key_style: Style) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True, min_width=14)
    table.add_column()
    for row in rows:
        table.add_row(Text(row.keys, style=key_style), Text(row.description))
    return table


class HelpScreen(ModalScreen[None]):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"help--key"}
    """The keys in the tables (styled in workbench.tcss)."""

    BINDINGS: ClassVar = [Binding("escape,f1,q", "close", "Close")]

    def __init__(self, pane: str, about: str, pane_keys: list[KeyHelp], global_keys: list[KeyHelp]) -> None:
        super().__init__()
        self._pane = pane
        self._about = about
        self.pane_keys = pane_keys
        self.global_keys = global_keys

    def compose(self) -> ComposeResult:
        key_style = self.get_component_rich_style("help--key", partial=True)
        with VerticalScroll(id="help-dialog", classes="dialog") as box:
            box.border_title = f"Help · {self._pane}"
            close, palette = key_labels(self).bound(HelpScreen, "close"), key_label(self.app.COMMAND_PALETTE_BINDING)
            box.border_subtitle = f"{close} closes · {palette} lists every action"
            if self._about:
                yield Static(self._about, id="help-about")
            if self.pane_keys:
                yield Static(f"[b]Keys in {self._pane.lower()}[/]", classes="help-heading")
                yield Static(key_table(self.pane_keys, key_style), id="help-pane-keys")
            yield Static("[b]Everywhere[/]", classes="help-heading")
            yield Static(key_table(self.global_keys, key_style), id="help-global-keys")

    def action_close(self) -> None:
        self.dismiss(None)
