"""Key labels come from the bindings in force: rebinding an action in `tui.keymap` changes every
hint, tooltip, help text and palette entry that names its key."""

from __future__ import annotations

import pytest
from textual.dom import DOMNode
from textual.widgets import Button
from tui_helpers import main_screen, wait_for

from engine.config import TUI_ACTIONS, TuiSettings
from isol8_tui.keys import ACTIONS, KeyLabels, key_label
from isol8_tui.screens.dialogs import NewSessionScreen, RuntimeScreen, SessionSettingsScreen, TransferScreen
from isol8_tui.screens.help import HelpScreen
from isol8_tui.screens.jump import JumpScreen
from isol8_tui.screens.main import MainScreen
from isol8_tui.screens.terminal import LEAVE_KEY, TerminalScreen
from isol8_tui.widgets.bars import RunBar
from isol8_tui.widgets.editor import CodeEditor
from isol8_tui.widgets.files import FilesPane, FileTable
from isol8_tui.widgets.network import NetworkInspector, NetworkTable
from isol8_tui.widgets.output import OutputPane
from isol8_tui.widgets.sessions import SessionList, SessionSidebar

SIZE = (150, 40)
KEYMAP = {"run": "f12,ctrl+j", "new-session": "ctrl+b", "save": "ctrl+w", "refresh-files": "g"}


def test_the_registry_is_the_configs_list_of_actions() -> None:
    assert set(ACTIONS) == set(TUI_ACTIONS)


def test_labels_read_the_keymap_then_the_default() -> None:
    labels = KeyLabels({"run": "f12,ctrl+j"})
    assert (labels["run"], labels["stop"], labels["focus-files"]) == ("f12", "ctrl+t", "f9")
    assert labels.updated({"stop": "f7"})["stop"] == "f7"
    assert labels.text("{run} runs, {save} saves") == "f12 runs, ctrl+s saves"
    assert labels.bound(SessionList, "delete") == "delete"  # a widget's own binding
    assert labels.bound(FilesPane, "refresh") == "r"  # ... or the registry's, when it has an id
    assert KeyLabels({"refresh-files": "g"}).bound(FilesPane, "refresh") == "g"
    assert [key_label(k) for k in ("slash", "ctrl+r", "enter", "question_mark", "space")] == [
        "/",
        "ctrl+r",
        "enter",
        "?",
        "space",
    ]


async def test_a_rebound_action_shows_its_new_key_everywhere(fake_app) -> None:
    app = fake_app('print("k")\n', settings=TuiSettings(keymap=KEYMAP))
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        # the run bar's hint and tooltip, the sidebar's tooltip, the network inspector's hint
        assert "ready · f12 runs" in str(screen.runbar.query_one("#status").render())
        assert screen.runbar.query_one("#run", Button).tooltip == "Run the buffer (f12)"
        assert screen.sidebar.query_one("#new-session", Button).tooltip == "New session (ctrl+b)"
        await pilot.press("f8")
        assert "(ctrl+b)" in str(screen.network.query_one("#network-hint").render())
        assert "ctrl+n" not in str(screen.network.query_one("#network-hint").render())
        # the palette
        [run] = [c for c in app.get_system_commands(screen) if c.title == "Run: run the buffer"]
        assert run.help == "f12 · in the selected session"
        # the help screen: the editor's text and the keys table
        await pilot.press("f3", "f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        about = str(help_screen.query_one("#help-about").render())
        assert "f12 runs the buffer" in about and "ctrl+w saves it" in about and "ctrl+r" not in about
        global_keys = {row.description: row.keys for row in help_screen.global_keys}
        assert global_keys["Run the buffer in the selected session"] == "f12 ^j"
        await pilot.press("escape", "f9", "f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert "g refreshes" in str(app.screen.query_one("#help-about").render())


@pytest.mark.parametrize(
    ("help_text", "owners"),
    [
        (CodeEditor.HELP, (CodeEditor,)),
        (OutputPane.HELP, (OutputPane,)),
        (NetworkTable.HELP, (NetworkTable, NetworkInspector)),
        (FileTable.HELP, (FileTable, FilesPane)),
        (SessionList.HELP, (SessionList, SessionSidebar)),
        (RunBar.HELP, (RunBar,)),
        (NewSessionScreen.HELP, (NewSessionScreen,)),
        (TransferScreen.HELP, (TransferScreen,)),
        (SessionSettingsScreen.HELP, (SessionSettingsScreen,)),
        (RuntimeScreen.HELP, (RuntimeScreen,)),
        (JumpScreen.HELP, (JumpScreen,)),
    ],
)
def test_every_help_text_names_keys_that_are_bound(help_text: str, owners: tuple[type[DOMNode], ...]) -> None:
    text = KeyLabels().text(help_text, *owners)
    assert "{" not in text and "}" not in text


def test_no_default_key_is_an_alt_key_or_printable_on_the_screen() -> None:
    """alt+letter arrives as a typed character in many terminals; a printable key would type into the editor."""
    for action in ACTIONS.values():
        for key in action.keys.split(","):
            assert not key.startswith(("alt+", "meta+")), (action.id, key)
            if not action.pane:
                key = key.removeprefix("shift+")  # shift+f5: a function key too (terminals send it as f17)
                assert key.startswith(("ctrl+", "f")) and (key.startswith("ctrl+") or key[1:].isdigit()), (
                    action.id,
                    key,
                )


async def test_no_screen_key_types_into_the_editor(fake_app) -> None:
    """Every default key of a screen-wide action, pressed in the editor, leaves the buffer as it was."""
    code = 'print("k")\n'
    app = fake_app(code)
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        for action in ACTIONS.values():
            if action.pane or action.id == "quit":
                continue
            for key in action.keys.split(","):
                screen.query_one(CodeEditor).focus()
                await pilot.press(key)
                await pilot.pause()
                while app.screen is not screen:  # an interactive run's screen is left by its own key
                    await pilot.press(LEAVE_KEY if isinstance(app.screen, TerminalScreen) else "escape")
                    await pilot.pause()
                assert screen.editor_pane.text == code, (action.id, key)


async def test_a_key_the_editor_binds_runs_the_action_it_is_rebound_to(fake_app) -> None:
    """TextArea binds f6 (select line): a keymap that rebinds run to f6 still runs, in the editor too."""
    app = fake_app('print("k")\n', settings=TuiSettings(keymap={"run": "f6", "focus-sessions": "f11"}))
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        assert isinstance(app.focused, CodeEditor)
        await pilot.press("f6")
        await wait_for(pilot, lambda: screen.run_id == 1 and screen.current_run is None)
        screen.outputs.flush()
        assert "k" in list(screen.outputs.stdout.lines)


@pytest.mark.parametrize(
    ("letter", "focused"),
    [
        ("s", SessionList),
        ("e", CodeEditor),
        ("o", OutputPane),
        ("r", OutputPane),
        ("n", NetworkTable),
        ("f", FileTable),
    ],
)
async def test_jump_mode_reaches_each_pane_in_two_keys(fake_app, letter: str, focused: type) -> None:
    app = fake_app()
    async with app.run_test(size=(100, 30)) as pilot:  # the medium layout: the sidebar is hidden
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: isinstance(app.screen, JumpScreen))
        labels = [str(label.render()) for label in app.screen.query(".jump-label")]
        assert len(labels) == len(set(labels)) == len(MainScreen.JUMP_PANES)
        places = [label.region.offset for label in app.screen.query(".jump-label")]
        assert len(set(places)) == len(places)  # no letter hides another
        await pilot.press(letter)
        await wait_for(pilot, lambda: app.screen is screen)
        assert isinstance(app.focused, focused)
        assert screen.editor_pane.text == 'print("hi")\n'
        if letter == "r":
            assert app.focused is screen.outputs.stderr


@pytest.mark.parametrize("pane", ["editor", "output", "network", "files", "sessions"])
async def test_help_lists_every_binding_of_the_focused_pane_once(fake_app, pane: str) -> None:
    from isol8_tui.app import HELP_SKIPPED, HELP_SKIPPED_PREFIXES

    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        screen.action_focus_pane(pane)
        await pilot.pause()
        expected = {
            binding.tooltip or binding.description
            for active in screen.active_bindings.values()
            if (binding := active.binding).description or binding.tooltip
            if not binding.system
            if binding.id in ACTIONS
            or not (binding.action.startswith(HELP_SKIPPED_PREFIXES) or binding.action in HELP_SKIPPED)
        }
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        listed = [row.description for row in help_screen.pane_keys + help_screen.global_keys]
        assert len(listed) == len(set(listed))  # none twice
        assert expected <= set(listed)  # none missing
        shown_keys = {row.description: row.keys for row in help_screen.pane_keys + help_screen.global_keys}
        for active in screen.active_bindings.values():  # every registry action in force, with its key
            action = ACTIONS.get(active.binding.id or "")
            if action is not None:
                assert shown_keys[action.tooltip or action.description], action.id


async def test_a_dialogs_footer_and_help_show_its_own_keys(fake_app) -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: isinstance(app.screen, NewSessionScreen))
        dialog = app.screen
        actions = {active.binding.action for active in dialog.active_bindings.values()}
        assert "create" in actions and "run" not in actions and "new_session" not in actions
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        assert "New session" in str(help_screen.query_one("#help-dialog").border_title)
        descriptions = {row.description for row in help_screen.pane_keys + help_screen.global_keys}
        assert "Create" in descriptions and "Run the buffer in the selected session" not in descriptions


async def test_the_palettes_screenshot_works_without_a_downloads_folder(fake_app, workdir) -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: main_screen(app).started)
        [command] = [c for c in app.get_system_commands(app.screen) if c.title == "Screenshot"]
        command.callback()
        await wait_for(pilot, lambda: any(workdir.glob("*.svg")))
        [svg] = workdir.glob("*.svg")
        assert "isol8" in svg.read_text()


def test_the_readmes_keys_table_is_the_registry() -> None:
    """The README's table lists every action with its default keys (one source of truth: the registry)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z-]+)` \| ([^|]+) \|", readme, flags=re.MULTILINE))
    expected = {a.id: ", ".join(key_label(k) for k in a.keys.split(",")) for a in ACTIONS.values()}
    assert {ident: keys.strip() for ident, keys in rows.items() if ident in expected} == expected
