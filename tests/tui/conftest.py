"""Workbench fixtures: the app on the fake engine, run in a folder of its own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fake_engine import FakeBackend

from engine.config import TuiSettings
from isol8_tui.app import WorkbenchApp, make_app


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in its own folder with its own HOME (no developer config leaks in)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


AppFactory = Callable[..., WorkbenchApp]


@pytest.fixture
def fake_app(workdir: Path, backend: FakeBackend) -> AppFactory:
    """`fake_app(code, name="main.py", **make_app options)`: the workbench on `name` holding `code`."""

    def build(code: str = 'print("hi")\n', name: str | None = "main.py", **options: Any) -> WorkbenchApp:
        path = None
        if name is not None:
            path = Path(name)
            path.write_text(code, encoding="utf-8")
        defaults: dict[str, Any] = {
            "watch": False,
            "cursor_blink": False,
            "animations": False,
            "settings": TuiSettings(),
            "backend": backend,
        }
        if name is None:
            defaults["text"] = code
        return make_app(path, **{**defaults, **options})

    return build
