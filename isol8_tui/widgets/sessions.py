"""The session sidebar: this workbench's engines, their runtime, network policy, state and age."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Button, OptionList
from textual.widgets.option_list import Option

from isol8_tui.keys import key_labels
from isol8_tui.sessions import Session, SessionState

STATE_STYLE: dict[SessionState, tuple[str, str]] = {
    "new": ("○ new", "dim"),
    "starting": ("◌ starting", "$warning"),
    "idle": ("● idle", "$success"),
    "running": ("▶ running", "b $warning"),
    "error": ("✗ error", "b $error"),
}
"""Each state's label and style (theme variables, so the sidebar follows the theme)."""


def age(seconds: float) -> str:
    if seconds < 60:
        return "new"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"


PROMPT_WIDTH = 25


def session_prompt(session: Session, now: float, selected: bool) -> Content:
    """Two lines: `▸ name  age        ● state` and `  runtime · network policy`."""
    label, style = STATE_STYLE[session.state]
    if session.scratch and session.state != "running":
        label, style = "ephemeral", "dim"
    head = Content.assemble(
        ("▸ " if selected else "  ", "b $primary"),
        (session.name, "b" if selected else ""),
        ("" if session.scratch else f" {age(now - session.created_at)}", "dim"),
    )
    if session.scratch:
        detail = f"any runtime · {session.network}"
    else:
        policy: str = session.network
        if session.network == "filtered" and (session.whitelist or session.blacklist):
            policy += f" +{len(session.whitelist)}/-{len(session.blacklist)}"
        detail = f"{session.runtime} · {policy}" + (" · stateful" if session.stateful else "")
    padding = " " * max(1, PROMPT_WIDTH - head.cell_length - len(label))
    return Content.assemble(head, padding, (label, style), (f"\n  {detail}", "dim"))


class SessionList(OptionList):
    HELP: ClassVar[str] = (
        "Your sessions. Each is a persistent container: installed packages and files in /sandbox survive "
        "between runs; a stateful one also keeps its interpreter, so variables survive too ({reset-session} starts a "
        "fresh one). 'scratch' starts a fresh container for every run and runs any "
        "runtime. Switch with {select}, create with {new}, remove with {delete} (its container goes too)."
    )
    BINDINGS: ClassVar = [
        Binding("n", "new", "New session"),
        Binding("delete,d", "delete", "Delete"),
        Binding("s", "scratch", "Scratch", show=False),
    ]

    def action_new(self) -> None:
        self.post_message(SessionSidebar.NewRequested())

    def action_delete(self) -> None:
        if self.highlighted is not None:
            option = self.get_option_at_index(self.highlighted)
            if option.id:
                self.post_message(SessionSidebar.DeleteRequested(option.id))

    def action_scratch(self) -> None:
        self.post_message(SessionSidebar.ScratchRequested())


class SessionSidebar(Vertical):
    """Lists the sessions and says which one runs the code (▸)."""

    HELP: ClassVar[str] = SessionList.HELP

    @dataclass
    class Selected(Message):
        session_id: str

    @dataclass
    class DeleteRequested(Message):
        session_id: str

    class NewRequested(Message):
        pass

    class ScratchRequested(Message):
        pass

    def __init__(self) -> None:
        super().__init__(id="sidebar")
        self.border_title = "Sessions"
        self._order: list[str] = []
        self._selected_id: str | None = None

    def compose(self) -> ComposeResult:
        yield SessionList(id="session-list")
        with Horizontal(id="session-buttons"):
            labels = key_labels(self)
            new, delete = labels["new-session"], labels.bound(SessionList, "delete")
            yield Button("+ New", id="new-session", compact=True, tooltip=f"New session ({new})")
            yield Button(
                "Delete", id="delete-session", compact=True, tooltip=f"Delete the highlighted session ({delete})"
            )

    @property
    def option_list(self) -> SessionList:
        return self.query_one(SessionList)

    def show(self, sessions: list[Session], selected_id: str, now: float) -> None:
        """Redraw every entry (sessions are few); the highlight stays on the same session."""
        option_list = self.option_list
        highlighted = option_list.highlighted
        highlighted_id = option_list.get_option_at_index(highlighted).id if highlighted is not None else None
        options = [
            Option(session_prompt(session, now, session.id == selected_id), id=session.id) for session in sessions
        ]
        ids = [session.id for session in sessions]
        if ids == self._order:
            for option in options:
                option_list.replace_option_prompt(option.id or "", option.prompt)
        else:
            option_list.clear_options()
            option_list.add_options(options)
            self._order = ids
        moved = selected_id != self._selected_id
        self._selected_id = selected_id
        target = highlighted_id if highlighted_id in ids and not moved else selected_id
        if target in ids:
            option_list.highlighted = ids.index(target)

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id:
            self.post_message(self.Selected(event.option.id))

    @on(Button.Pressed, "#new-session")
    def _new(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.NewRequested())

    @on(Button.Pressed, "#delete-session")
    def _delete(self, event: Button.Pressed) -> None:
        event.stop()
        self.option_list.action_delete()
