"""The config's `mcp` section and the tool registry, without Docker: validation like every key,
defaults from the engine's options, and the tools (with their hints) a config exposes."""

from __future__ import annotations

import asyncio
import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from engine.config import MCP_TOOLS, ConfigError, Isol8Config, McpSettings, load_config
from engine.mcp.server import build_server
from engine.mcp.tools import Toolbox
from engine.models import Isol8Options
from engine.server.state import ServerSettings, ServerState


def load(tmp_path: Path, data: Any) -> Isol8Config:
    (tmp_path / "isol8.config.json").write_text(json.dumps(data))
    return load_config(tmp_path).config


def error(tmp_path: Path, data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data)
    return str(info.value)


def test_defaults_come_from_the_engine_options() -> None:
    settings, engine = McpSettings(), Isol8Options()
    assert (settings.network, settings.timeout_ms, settings.memory_limit, settings.max_output_size) == (
        engine.network,
        engine.timeout_ms,
        engine.memory_limit,
        engine.max_output_size,
    )
    assert settings.runtime == "python" and settings.tools == list(MCP_TOOLS)


@pytest.mark.parametrize(
    ("mcp", "expected"),
    [
        ({"tools": ["run_code", "rm_rf"]}, "mcp.tools[1]: Input should be 'run_code', 'run_command'"),
        ({"timeoutMs": 0}, "mcp.timeoutMs: Input should be greater than 0"),
        ({"memoryLimit": "lots"}, 'mcp.memoryLimit: "lots" is not a size'),
        ({"network": "internet"}, "mcp.network: Input should be 'none', 'host' or 'filtered'"),
        ({"maxReadBytes": "1m"}, "mcp.maxReadBytes: Input should be a valid integer"),
        ({"runtimes": "python"}, '"mcp.runtimes" (did you mean "runtime"?)'),
    ],
)
def test_the_mcp_section_is_validated_like_every_key(tmp_path: Path, mcp: dict[str, Any], expected: str) -> None:
    message = error(tmp_path, {"mcp": mcp})
    assert expected in message and "\n" not in message


def test_every_tool_name_has_its_tool() -> None:
    for name in MCP_TOOLS:
        method = getattr(Toolbox, name)
        assert inspect.iscoroutinefunction(method) and method.__doc__, name


def tools_of(config: Isol8Config) -> dict[str, Any]:
    server = build_server(ServerState(ServerSettings(config, "unused-key")), "stdio")
    return {tool.name: tool for tool in asyncio.run(server.list_tools())}


def test_only_the_configured_tools_are_exposed(tmp_path: Path) -> None:
    assert sorted(tools_of(load(tmp_path, {"mcp": {"tools": ["read_file", "run_code"]}}))) == ["read_file", "run_code"]
    assert tools_of(load(tmp_path, {"mcp": {"tools": []}})) == {}


def test_runs_claim_the_open_world_only_where_the_policy_allows_a_network(tmp_path: Path) -> None:
    closed = tools_of(Isol8Config())
    assert closed["run_code"].annotations.open_world_hint is False
    opened = tools_of(load(tmp_path, {"server": {"allowedNetworks": ["none", "filtered"]}}))
    assert opened["run_code"].annotations.open_world_hint is True
    assert opened["read_file"].annotations.open_world_hint is False


def test_reset_session_is_a_tool_to_select_and_says_it_destroys_state(tmp_path: Path) -> None:
    without = tools_of(load(tmp_path, {"mcp": {"tools": ["create_session", "run_code"]}}))
    assert "reset_session" not in without
    reset = tools_of(Isol8Config())["reset_session"]
    hints = reset.annotations
    assert (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint, hints.open_world_hint) == (
        False,
        True,
        True,
        False,
    )
    assert reset.input_schema["required"] == ["session_id"]
    created = tools_of(Isol8Config())["create_session"]
    assert created.input_schema["properties"]["stateful"]["default"] is False
    run = tools_of(Isol8Config())["run_code"]
    assert {"results", "state"} <= set(run.output_schema["properties"])
