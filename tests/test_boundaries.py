"""Architecture rules that keep the engine usable as a plain library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine.images.builder import AGENT_FILES

ENGINE = Path(__file__).resolve().parent.parent / "engine"


def _ui_packages_loaded(modules: list[str], ui: tuple[str, ...]) -> str:
    code = (
        f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(m for m in {ui!r} if m in sys.modules)\n"
        "print(','.join(bad))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_engine_never_imports_ui_packages() -> None:
    modules = sorted(
        ".".join(path.relative_to(ENGINE.parent).with_suffix("").parts)
        for path in ENGINE.rglob("*.py")
        if path.name != "__init__.py" and "agent" not in path.parts and "mcp" not in path.parts
    )
    assert len(modules) > 8
    loaded = _ui_packages_loaded(modules, ("textual", "click", "rich"))
    assert loaded == "", f"engine imported UI packages: {loaded}"


def test_the_mcp_server_imports_no_ui_package_of_its_own() -> None:
    """The MCP SDK's HTTP transport imports uvicorn (through sse-starlette), which imports click: that
    is the server stack's, not a UI. Textual and rich stay out."""
    modules = sorted(
        ".".join(path.relative_to(ENGINE.parent).with_suffix("").parts) for path in (ENGINE / "mcp").glob("*.py")
    )
    assert "engine.mcp.server" in modules
    loaded = _ui_packages_loaded(modules, ("textual", "rich"))
    assert loaded == "", f"engine.mcp imported UI packages: {loaded}"


def test_only_docker_module_imports_docker_py() -> None:
    offenders = [
        str(path.relative_to(ENGINE.parent))
        for path in ENGINE.rglob("*.py")
        if path.name != "docker.py"
        and any(line.startswith(("import docker", "from docker")) for line in path.read_text().splitlines())
    ]
    assert offenders == []


def test_agent_is_stdlib_only() -> None:
    """The agent runs inside images that have nothing but the interpreter."""
    agent_dir = ENGINE / "agent"
    own = {name.removesuffix(".py") for name in AGENT_FILES if name.endswith(".py")}  # its siblings in the image
    allowed = set(sys.stdlib_module_names) | own | {"__future__"}
    for path in agent_dir.glob("*.py"):
        for line in path.read_text().splitlines():
            if line.startswith(("import ", "from ")):
                module = line.split()[1].split(".")[0]
                assert module in allowed, f"{path.name} imports {module}"
