"""Architecture rules that keep the engine usable as a plain library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "engine"


def test_engine_never_imports_ui_packages() -> None:
    modules = sorted(
        ".".join(path.relative_to(ENGINE.parent).with_suffix("").parts)
        for path in ENGINE.rglob("*.py")
        if path.name != "__init__.py" and "agent" not in path.parts
    )
    code = (
        f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in ('textual', 'click', 'rich') if m in sys.modules)\n"
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert len(modules) > 8
    assert result.stdout.strip() == "", f"engine imported UI packages: {result.stdout}"


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
    allowed = set(sys.stdlib_module_names) | {"protocol", "zygote", "__future__"}
    for path in agent_dir.glob("*.py"):
        for line in path.read_text().splitlines():
            if line.startswith(("import ", "from ")):
                module = line.split()[1].split(".")[0]
                assert module in allowed, f"{path.name} imports {module}"
