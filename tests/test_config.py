"""Config discovery, validation messages and the `isol8 config` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.config import (
    ConfigError,
    Defaults,
    Isol8Config,
    LoadedConfig,
    load_config,
)
from isol8_tui.commands.config import command


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the developer's real ~/.isol8/config.json out of every test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: home))
    return home


@pytest.fixture
def project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    return project


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def load_error(project: Path, data: Any) -> str:
    path = write(project / "isol8.config.json", data)
    with pytest.raises(ConfigError) as info:
        load_config(project)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"Invalid config {path}: ")
    return message


# --- discovery and merge ---------------------------------------------------------------------------


def test_no_file_gives_defaults(project: Path) -> None:
    loaded = load_config(project)
    assert loaded.source is None
    assert loaded.explicit == frozenset()
    config = loaded.config
    assert config == Isol8Config()
    assert config.debug is False
    assert config.max_concurrent == 10
    assert config.pool_strategy == "secure"
    assert config.pool_size == 1
    assert config.prewarm == []
    assert config.prebuilt_images == []
    assert config.defaults == Defaults(
        timeout_ms=30000,
        memory_limit="512m",
        cpu_limit=1.0,
        pids_limit=64,
        network="none",
        sandbox_size="512m",
        tmp_size="256m",
        max_output_size=1048576,
    )
    assert config.network.whitelist == [] and config.network.blacklist == []
    assert config.cleanup.auto_prune is True and config.cleanup.max_container_age_ms == 3600000
    assert config.security.seccomp == "strict"
    assert config.security.custom_profile_path is None and config.security.runtime is None
    assert loaded.origin("defaults.timeoutMs") == "default"


def test_cwd_file_beats_home_file(project: Path, home: Path) -> None:
    write(home / ".isol8" / "config.json", {"maxConcurrent": 3, "debug": True})
    cwd_file = write(project / "isol8.config.json", {"maxConcurrent": 7})
    loaded = load_config(project)
    assert loaded.source == cwd_file
    assert loaded.config.max_concurrent == 7
    # Files are not merged with each other: the home file's `debug` is ignored.
    assert loaded.config.debug is False


def test_home_file_used_without_cwd_file(project: Path, home: Path) -> None:
    home_file = write(home / ".isol8" / "config.json", {"maxConcurrent": 3})
    loaded = load_config(project)
    assert loaded.source == home_file
    assert loaded.config.max_concurrent == 3


def test_load_config_defaults_to_process_cwd(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(project / "isol8.config.json", {"poolSize": 4})
    monkeypatch.chdir(project)
    assert load_config().config.pool_size == 4


def test_partial_file_keeps_other_defaults_and_records_explicit(project: Path) -> None:
    write(
        project / "isol8.config.json",
        {
            "$schema": "./schema.json",
            "defaults": {"timeoutMs": 5000, "memoryLimit": "1g"},
            "network": {"whitelist": [r"^pypi\.org$"]},
            "prewarm": ["node"],
        },
    )
    loaded = load_config(project)
    config = loaded.config
    assert config.defaults.timeout_ms == 5000
    assert config.defaults.memory_limit == "1g"  # the user's spelling is kept
    assert config.defaults.cpu_limit == 1.0
    assert config.defaults.tmp_size == "256m"
    assert config.network.whitelist == [r"^pypi\.org$"]
    assert config.network.blacklist == []
    assert config.prewarm == ["node"]  # lists replace the default
    assert config.schema_ == "./schema.json"
    assert config.cleanup.max_container_age_ms == 3600000
    assert loaded.explicit == {
        "$schema",
        "defaults.timeoutMs",
        "defaults.memoryLimit",
        "network.whitelist",
        "prewarm",
    }
    assert loaded.origin("network.whitelist") == "file"
    assert loaded.origin("network.blacklist") == "default"


def test_prebuilt_images_and_custom_seccomp_parse(project: Path) -> None:
    write(
        project / "isol8.config.json",
        {
            "security": {"seccomp": "custom", "customProfilePath": "/etc/p.json", "runtime": "runsc"},
            "prebuiltImages": [{"tag": "isol8:ds", "runtime": "python", "installPackages": ["numpy"]}],
        },
    )
    config = load_config(project).config
    assert config.security.runtime == "runsc"
    assert config.security.custom_profile_path == "/etc/p.json"
    image = config.prebuilt_images[0]
    assert (image.tag, image.runtime, image.install_packages, image.setup_script) == (
        "isol8:ds",
        "python",
        ["numpy"],
        None,
    )


# --- error messages --------------------------------------------------------------------------------


def test_unknown_nested_key(project: Path) -> None:
    path = project / "isol8.config.json"
    message = load_error(project, {"defaults": {"foo": 1}})
    assert message == (
        f'Invalid config {path}: unknown key "defaults.foo". Remove it; see `isol8 config --json` for the known keys.'
    )


def test_unknown_top_level_key(project: Path) -> None:
    path = project / "isol8.config.json"
    message = load_error(project, {"dependencies": {"python": ["numpy"]}})
    assert message == (
        f'Invalid config {path}: unknown key "dependencies". Remove it; see `isol8 config --json` for the known keys.'
    )


def test_snake_case_key_is_unknown_with_hint(project: Path) -> None:
    message = load_error(project, {"defaults": {"timeout_ms": 5}})
    assert 'unknown key "defaults.timeout_ms" (did you mean "timeoutMs"?)' in message


def test_value_out_of_range(project: Path) -> None:
    path = project / "isol8.config.json"
    message = load_error(project, {"defaults": {"timeoutMs": 0}})
    assert message == (
        f"Invalid config {path}: defaults.timeoutMs: Input should be greater than 0. Fix the value or remove the key."
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"defaults": {"timeoutMs": "5000"}}, "defaults.timeoutMs: Input should be a valid integer"),
        ({"maxConcurrent": True}, "maxConcurrent: Input should be a valid integer"),
        ({"debug": "yes"}, "debug: Input should be a valid boolean"),
        ({"maxConcurrent": 0}, "maxConcurrent: Input should be greater than or equal to 1"),
        (
            {"defaults": {"network": "bridge"}},
            "defaults.network: Input should be 'none', 'host' or 'filtered'",
        ),
        ({"prewarm": ["ruby"]}, "prewarm[0]: Input should be 'python', 'node', 'bun', 'deno' or 'bash'"),
        ({"defaults": 5}, "defaults: Input should be a valid dictionary"),
        ({"prebuiltImages": [{"runtime": "python"}]}, "prebuiltImages[0].tag: Field required"),
    ],
)
def test_bad_types_name_the_key(project: Path, data: dict[str, Any], expected: str) -> None:
    message = load_error(project, data)
    assert expected in message
    assert message.endswith("Fix the value or remove the key.")


def test_bad_memory_string(project: Path) -> None:
    message = load_error(project, {"defaults": {"memoryLimit": "lots"}})
    assert 'defaults.memoryLimit: "lots" is not a size (use e.g. "512m" or "1g")' in message


@pytest.mark.parametrize("key", ["sandboxSize", "tmpSize"])
def test_bad_tmpfs_sizes(project: Path, key: str) -> None:
    message = load_error(project, {"defaults": {key: "0m"}})
    assert f'defaults.{key}: "0m" is not a size' in message


def test_bad_regex_names_the_pattern(project: Path) -> None:
    message = load_error(project, {"network": {"blacklist": ["ok", "(unclosed"]}})
    assert 'network.blacklist[1]: "(unclosed" is not a valid regular expression' in message
    assert "missing )" in message


def test_bad_json_has_line_and_column(project: Path) -> None:
    path = project / "isol8.config.json"
    message = load_error(project, '{\n  "debug": true,\n  "maxConcurrent": 4,\n}\n')
    assert message == (
        f"Invalid config {path}: not valid JSON "
        "(line 4, column 1: Expecting property name enclosed in double quotes). Fix the syntax."
    )


def test_top_level_must_be_object(project: Path) -> None:
    message = load_error(project, "[1, 2]")
    assert "the top level is a JSON array, not an object" in message


def test_unreadable_file(project: Path) -> None:
    path = project / "isol8.config.json"
    path.mkdir()  # a directory cannot be read as a file, even as root
    with pytest.raises(ConfigError) as info:
        load_config(project)
    assert str(info.value).startswith(f"Invalid config {path}: cannot read the file (")
    assert info.value.path == path


def test_custom_seccomp_requires_profile(project: Path) -> None:
    message = load_error(project, {"security": {"seccomp": "custom"}})
    assert 'security: customProfilePath is required when seccomp is "custom"' in message


def test_several_errors_in_one_line(project: Path) -> None:
    message = load_error(project, {"defaults": {"timeoutMs": -1, "cpuLimit": 0}})
    assert "defaults.timeoutMs: Input should be greater than 0" in message
    assert "defaults.cpuLimit: Input should be greater than 0" in message
    assert message.endswith("Fix the values or remove the keys.")


# --- JSON shape --------------------------------------------------------------------------------------


def test_camel_case_round_trip(project: Path) -> None:
    config = Isol8Config.model_validate(
        {"maxConcurrent": 2, "defaults": {"cpuLimit": 0.5}, "cleanup": {"autoPrune": False}}
    )
    dump = config.model_dump(by_alias=True, mode="json")
    assert set(dump) == {
        "$schema",
        "debug",
        "maxConcurrent",
        "defaults",
        "network",
        "cleanup",
        "poolStrategy",
        "poolSize",
        "prewarm",
        "security",
        "remoteCode",
        "audit",
        "prebuiltImages",
        "server",
        "tui",
        "mcp",
    }
    assert dump["defaults"]["cpuLimit"] == 0.5
    assert dump["cleanup"] == {"autoPrune": False, "maxContainerAgeMs": 3600000}
    assert "customProfilePath" in dump["security"]
    assert Isol8Config.model_validate(dump) == config
    # The dump is itself a valid config file.
    write(project / "isol8.config.json", dump)
    assert load_config(project).config == config


def test_snake_case_names_work_in_python() -> None:
    assert Defaults(timeout_ms=10).timeout_ms == 10


# --- `isol8 config` ----------------------------------------------------------------------------------


def run_cli(project: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    monkeypatch.chdir(project)
    return CliRunner().invoke(command, list(args))


def test_cli_json_equals_model_dump(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(project / "isol8.config.json", {"defaults": {"timeoutMs": 5000}, "poolSize": 2})
    result = run_cli(project, monkeypatch, "--json")
    assert result.exit_code == 0, result.output
    expected = load_config(project).config.model_dump(by_alias=True, mode="json")
    assert json.loads(result.stdout) == expected
    assert result.stdout == json.dumps(expected, indent=2) + "\n"
    assert json.loads(result.stdout)["defaults"]["timeoutMs"] == 5000


def test_cli_text_names_source_and_marks_file_values(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(project / "isol8.config.json", {"defaults": {"timeoutMs": 5000}})
    result = run_cli(project, monkeypatch)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("Isol8 Configuration\n")
    assert f"Source: {path}" in out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert "5000 ms" in rows["defaults.timeoutMs"] and "file" in rows["defaults.timeoutMs"]
    assert "default" in rows["defaults.memoryLimit"]
    assert "file" not in rows["defaults.memoryLimit"]


def test_cli_text_without_file(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_cli(project, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "Source: defaults (no config file found)" in result.stdout
    # A long value (remoteCode.blockedHosts) wraps onto lines whose key cell is empty.
    lines = [line for line in result.stdout.splitlines() if line.startswith("│") and line.split()[1] != "│"]
    rows = {line.split()[1]: line for line in lines}
    dump = Isol8Config().model_dump(by_alias=True, mode="json")
    every_key = {
        f"{key}.{sub}" if isinstance(value, dict) else key
        for key, value in dump.items()
        for sub in (value if isinstance(value, dict) else [None])
    }
    assert set(rows) == every_key  # every key of every section is listed once
    assert all(line.rstrip(" │").endswith("default") for line in rows.values())


def test_cli_reports_config_error(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(project / "isol8.config.json", {"defaults": {"foo": 1}})
    for args in ([], ["--json"]):
        result = run_cli(project, monkeypatch, *args)
        assert result.exit_code == 1
        assert result.stdout == ""
        assert result.stderr == (
            f'[ERR] Invalid config {path}: unknown key "defaults.foo". '
            "Remove it; see `isol8 config --json` for the known keys.\n"
        )


def test_loaded_config_is_frozen() -> None:
    loaded = LoadedConfig(config=Isol8Config(), source=None, explicit=frozenset())
    with pytest.raises(AttributeError):
        loaded.source = Path("/x")  # type: ignore[misc]
