"""The workbench project file: `.isol8-workbench.json` beside the code (the open file's folder, else
the working directory). It keeps the sessions (runtime, network policy and lists) with their run
settings, so a restart brings them back; their containers are new, so /sandbox starts empty (and a
stateful session's interpreter starts fresh).

    {"version": 1, "sessions": [{"runtime": "python", "network": "filtered", "stateful": true,
      "whitelist": ["(.*\\\\.)?pypi\\\\.org"], "blacklist": [], "ports": [],
      "settings": {"timeoutMs": 10000, "memoryLimit": "1g", "env": {"MODE": "dev"},
                   "stdinFile": "input.txt", "packages": ["rich"]}}]}
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from engine.models import NetworkMode
from isol8_tui.sessions import RunSettings, SessionSpec

PROJECT_FILE = ".isol8-workbench.json"


class SavedSettings(RunSettings):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


class SavedSession(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    runtime: str
    network: NetworkMode = "none"
    whitelist: list[str] = Field(default_factory=list)
    blacklist: list[str] = Field(default_factory=list)
    ports: list[int] = Field(default_factory=list)
    settings: SavedSettings = Field(default_factory=SavedSettings)
    stateful: bool = False

    @classmethod
    def of(cls, spec: SessionSpec) -> SavedSession:
        settings = SavedSettings(**spec.settings.model_dump())
        return cls(
            runtime=spec.runtime,
            network=spec.network,
            whitelist=list(spec.whitelist),
            blacklist=list(spec.blacklist),
            ports=list(spec.ports),
            settings=settings,
            stateful=spec.stateful,
        )

    def spec(self) -> SessionSpec:
        settings = RunSettings(**self.settings.model_dump())
        return SessionSpec(
            self.runtime,
            self.network,
            tuple(self.whitelist),
            tuple(self.blacklist),
            tuple(self.ports),
            settings,
            self.stateful,
        )


class Project(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    sessions: list[SavedSession] = Field(default_factory=list)


class ProjectFileInvalid(ValueError):
    """The project file is not one this workbench wrote (it is left as it is)."""


def project_path(code: Path | None) -> Path:
    return (code.resolve().parent if code is not None else Path.cwd()) / PROJECT_FILE


def load(path: Path) -> Project | None:
    """The project at `path`, None when there is none; ProjectFileInvalid when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProjectFileInvalid(f"Cannot read {path}: {exc.strerror or exc}; fix or remove it.") from exc
    try:
        return Project.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ProjectFileInvalid(
            f"{path} is not a workbench project file ({where}: {first['msg']}); fix or remove it."
        ) from exc


def save(path: Path, sessions: list[SessionSpec]) -> None:
    """Write the project whole (a temporary file renamed over the old one: never half a file)."""
    project = Project(sessions=[SavedSession.of(spec) for spec in sessions])
    text = json.dumps(project.model_dump(by_alias=True, exclude_defaults=False), indent=2) + "\n"
    fd, temporary = tempfile.mkstemp(prefix=".isol8-workbench-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
