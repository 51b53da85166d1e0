"""The `tui` section of the isol8 config: defaults, validation messages, dumps, and the CLI's checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.config import TUI_ACTIONS, ConfigError, Isol8Config, TuiSettings, load_config
from isol8_tui.app import WorkbenchApp
from isol8_tui.commands.tui import command as tui_command
from isol8_tui.screens.main import MainScreen
from isol8_tui.widgets.files import FilesPane
from isol8_tui.widgets.network import NetworkInspector
from isol8_tui.widgets.output import OutputPane
from isol8_tui.widgets.results import ResultView


def write_config(folder: Path, data: Any) -> Path:
    path = folder / "isol8.config.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def load_error(folder: Path, data: Any) -> str:
    path = write_config(folder, data)
    with pytest.raises(ConfigError) as info:
        load_config(folder)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"Invalid config {path}: ")
    return message


def test_defaults(workdir: Path) -> None:
    settings = load_config(workdir).config.tui
    assert settings == TuiSettings(
        watch_debounce_ms=100, scrollback_lines=10000, clear_output_on_run=True, theme="isol8", keymap={}
    )


def test_camel_case_keys_are_read_and_recorded(workdir: Path) -> None:
    write_config(
        workdir,
        {
            "tui": {
                "watchDebounceMs": 40,
                "scrollbackLines": 500,
                "clearOutputOnRun": False,
                "theme": "nord",
                "keymap": {"run": "ctrl+j, f5", "stop": "f6"},
            }
        },
    )
    loaded = load_config(workdir)
    tui = loaded.config.tui
    assert (tui.watch_debounce_ms, tui.scrollback_lines, tui.clear_output_on_run, tui.theme) == (40, 500, False, "nord")
    assert tui.keymap == {"run": "ctrl+j,f5", "stop": "f6"}  # spaces after commas are dropped
    assert loaded.origin("tui.watchDebounceMs") == "file"
    assert loaded.origin("tui.keymap.run") == "file"
    assert loaded.origin("tui.theme") == "file"
    assert loaded.origin("defaults.timeoutMs") == "default"


def test_unknown_key_suggests_the_right_one(workdir: Path) -> None:
    message = load_error(workdir, {"tui": {"watchDebounce": 50}})
    assert 'unknown key "tui.watchDebounce" (did you mean "watchDebounceMs"?)' in message


@pytest.mark.parametrize(
    ("tui", "expected"),
    [
        ({"watchDebounceMs": 5}, "tui.watchDebounceMs: Input should be greater than or equal to 10"),
        ({"watchDebounceMs": "100"}, "tui.watchDebounceMs: Input should be a valid integer"),
        ({"scrollbackLines": 10}, "tui.scrollbackLines: Input should be greater than or equal to 100"),
        ({"scrollbackLines": 2_000_000}, "tui.scrollbackLines: Input should be less than or equal to 1000000"),
        ({"theme": "Not A Theme"}, "tui.theme: String should match pattern"),
        ({"clearOutputOnRun": "yes"}, "tui.clearOutputOnRun: Input should be a valid boolean"),
    ],
)
def test_invalid_values_name_the_key(workdir: Path, tui: dict[str, Any], expected: str) -> None:
    assert expected in load_error(workdir, {"tui": tui})


def test_keymap_unknown_action_and_bad_keys(workdir: Path) -> None:
    message = load_error(workdir, {"tui": {"keymap": {"runn": "f5"}}})
    assert 'tui.keymap: unknown action "runn" (did you mean "run"?)' in message
    assert "known: quit, help, run" in message
    message = load_error(workdir, {"tui": {"keymap": {"run": "Ctrl R"}}})
    assert 'tui.keymap: "Ctrl R" for "run" is not a key list' in message
    message = load_error(workdir, {"tui": {"keymap": {"run": "ctrl+r,,f5"}}})
    assert "is not a key list" in message


def test_dump_round_trips_the_tui_section(workdir: Path) -> None:
    assert Isol8Config().model_dump(by_alias=True, mode="json")["tui"]["watchDebounceMs"] == 100
    config = Isol8Config.model_validate({"tui": {"scrollbackLines": 2000, "keymap": {"help": "f2"}}})
    dump = config.model_dump(by_alias=True, mode="json")
    assert dump["tui"] == {
        "watchDebounceMs": 100,
        "scrollbackLines": 2000,
        "clearOutputOnRun": True,
        "theme": "isol8",
        "keymap": {"help": "f2"},
        "images": True,
    }
    write_config(workdir, dump)  # a dump is itself a valid config file
    assert load_config(workdir).config == config


def test_keymap_ids_are_the_apps_binding_ids() -> None:
    """Every action the config accepts exists as a binding id in the app, and the other way round."""
    ids = set()
    for owner in (WorkbenchApp, MainScreen, FilesPane, OutputPane, NetworkInspector, ResultView):
        for binding in owner.BINDINGS:
            if getattr(binding, "id", None):
                ids.add(binding.id)
    assert ids == set(TUI_ACTIONS)


def test_cli_refuses_an_unknown_theme(workdir: Path) -> None:
    path = write_config(workdir, {"tui": {"theme": "no-such-theme"}})
    result = CliRunner().invoke(tui_command, [])
    assert result.exit_code == 1
    assert f'[ERR] Invalid config {path}: tui.theme: unknown theme "no-such-theme". Use one of: ' in result.output
    assert "isol8" in result.output and "nord" in result.output


def test_cli_refuses_an_unknown_extension_and_a_folder(workdir: Path) -> None:
    result = CliRunner().invoke(tui_command, ["notes.rb"])
    assert result.exit_code == 1
    assert '[ERR] Cannot detect runtime for "notes.rb"' in result.output
    (workdir / "folder").mkdir()
    result = CliRunner().invoke(tui_command, ["folder"])
    assert result.exit_code != 0
    result = CliRunner().invoke(tui_command, ["missing/dir/x.py"])
    assert result.exit_code == 1
    assert "[ERR] Folder not found: missing/dir" in result.output


def test_cli_reports_a_broken_config(workdir: Path) -> None:
    write_config(workdir, {"tui": {"keymap": {"runn": "f5"}}})
    result = CliRunner().invoke(tui_command, ["x.py"])
    assert result.exit_code == 1
    assert 'unknown action "runn" (did you mean "run"?)' in result.output
