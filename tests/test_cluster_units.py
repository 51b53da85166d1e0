"""The cluster backend's boundaries that need no cluster: Ray stays unimported until asked for, its
absence is one line naming the extra, and cluster addresses are validated where they come in."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
from helpers import run_cli

from engine.cluster import _Relay
from engine.config import load_config
from engine.errors import ConfigError, SandboxLost
from engine.models import StreamEvent

ENGINE = Path(__file__).resolve().parent.parent / "engine"


def test_nothing_imports_ray_until_a_cluster_is_asked_for() -> None:
    modules = sorted(
        ".".join(path.relative_to(ENGINE.parent).with_suffix("").parts)
        for path in ENGINE.rglob("*.py")
        if path.name != "__init__.py" and "agent" not in path.parts
    )
    code = (
        f"import sys, importlib\nfor m in {[*modules, 'isol8_tui.cli']!r}: importlib.import_module(m)\n"
        "print('ray' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "engine.cluster" in modules and "engine.server.state" in modules
    assert result.stdout.strip() == "False"


def test_without_ray_the_cluster_backend_names_the_extra() -> None:
    code = (
        "import asyncio, sys\nsys.modules['ray'] = None  # as if not installed\n"
        "from engine.cluster import RayIsol8\nfrom engine.errors import ConfigError\n"
        "try:\n    asyncio.run(RayIsol8('head:6379').start())\nexcept ConfigError as exc:\n    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "The cluster backend needs Ray: pip install 'isol8[ray]'\n"


@pytest.mark.parametrize(
    "address", ["ray://head:10001", "head.example:6379", "10.0.0.5:6379", "[fd00::1]:6379", "auto"]
)
def test_cluster_addresses_that_are_accepted(tmp_path: Path, address: str) -> None:
    (tmp_path / "isol8.config.json").write_text(json.dumps({"server": {"cluster": address}}))
    assert load_config(tmp_path).config.server.cluster == address


@pytest.mark.parametrize(
    "address",
    ["head", "http://head:6379", "ray://", "head:6379; rm -rf /", "$(id):1", "head :6379", "-head:6379\n", ""],
)
def test_cluster_addresses_that_are_refused(tmp_path: Path, address: str) -> None:
    (tmp_path / "isol8.config.json").write_text(json.dumps({"server": {"cluster": address}}))
    with pytest.raises(ConfigError, match=r"server\.cluster"):
        load_config(tmp_path)


def test_cli_refuses_a_bad_cluster_address_before_connecting(tmp_path: Path) -> None:
    for command in (["run", "--cluster", "head;id", "-e", "print(1)"], ["cluster", "status", "--cluster", "x y:1"]):
        result = run_cli(*command, cwd=tmp_path)
        assert result.returncode != 0
        assert "--cluster:" in result.stderr and "is not a Ray address" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


class _Counting(_Relay):
    """A relay over a stream that needs no Docker: `n` events, then `failure` if given."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = asyncio.Event()

    async def execute_stream(self, n: int, failure: str | None = None) -> AsyncGenerator[StreamEvent]:
        try:
            for i in range(n):
                yield StreamEvent(type="stdout", data=f"{i}\n")
                await asyncio.sleep(0.01)
            if failure is not None:
                raise SandboxLost(failure)
            yield StreamEvent(type="exit", data="0")
        finally:
            self.closed.set()


async def _drain(relay: _Relay, run_id: str) -> list[str]:
    seen: list[str] = []
    ended = False
    while not ended:
        events, ended = await relay.relay_next(run_id)
        seen += [e.data for e in events]
    return seen


async def test_the_ray_client_relay_passes_every_event_then_the_end() -> None:
    relay = _Counting()
    assert await _drain(relay, await relay.relay_open(5)) == ["0\n", "1\n", "2\n", "3\n", "4\n", "0"]
    assert relay._relays == {}


async def test_the_ray_client_relay_raises_the_runs_error_after_its_events() -> None:
    relay = _Counting()
    run_id = await relay.relay_open(2, "the agent went away")
    seen: list[str] = []
    with pytest.raises(SandboxLost, match="the agent went away"):
        while True:
            events, _ = await relay.relay_next(run_id)
            seen += [e.data for e in events]
    assert seen == ["0\n", "1\n"]


async def test_leaving_a_relayed_stream_early_ends_the_run() -> None:
    relay = _Counting()
    run_id = await relay.relay_open(10_000)
    events, ended = await relay.relay_next(run_id)
    assert events and not ended
    await relay.relay_close(run_id)
    await asyncio.wait_for(relay.closed.wait(), 10)
    assert relay._relays == {}
