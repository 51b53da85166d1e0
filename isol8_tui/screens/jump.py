"""Jump mode (posting's habit): a letter over each pane on screen; pressing it focuses that pane.

Two keys reach any pane: the jump key, then the pane's letter. Escape (or any other key) leaves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.geometry import Offset
from textual.screen import ModalScreen
from textual.widgets import Static


@dataclass(frozen=True)
class JumpTarget:
    """A pane that can take focus: the letter that reaches it, its name, where it is on screen."""

    letter: str
    name: str
    offset: Offset


class JumpScreen(ModalScreen[str | None]):
    """Dismisses with the chosen target's name, or None."""

    BINDINGS: ClassVar = [Binding("escape", "dismiss(None)", "Leave jump mode")]
    HELP: ClassVar[str] = "Press the letter shown on a pane to focus it; escape leaves."

    def __init__(self, targets: list[JumpTarget]) -> None:
        super().__init__(id="jump")
        self.targets = targets

    def compose(self) -> ComposeResult:
        for target in self.targets:
            label = Static(f" {target.letter} {target.name} ", classes="jump-label")
            label.styles.offset = (target.offset.x, target.offset.y)
            yield label
        yield Static("jump: press a letter · escape leaves", id="jump-hint")

    def on_key(self, event: events.Key) -> None:
        event.stop()
        event.prevent_default()
        if event.key == "escape":
            self.dismiss(None)
            return
        chosen = next((t.name for t in self.targets if t.letter == event.character), None)
        self.dismiss(chosen)
