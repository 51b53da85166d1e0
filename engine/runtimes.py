"""The five runtimes: their image, file extensions and how a code file is run.

Code is always written to a file in /sandbox and run from there, inline or not, so the same code
behaves the same on every path (Node is ESM unless the extension is `.cjs`; packages installed in
/sandbox resolve; tracebacks name a real file) and no size limit on argv applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from engine.errors import Isol8Error
from engine.models import RUNTIME_NAMES

CODE_DIR = "/sandbox"


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    extensions: tuple[str, ...]  # the first is the default for inline code
    command: tuple[str, ...]  # argv before the code file

    @property
    def image(self) -> str:
        return f"isol8:{self.name}"

    def argv(self, code_file: str) -> list[str]:
        return [*self.command, code_file]


RUNTIMES: dict[str, RuntimeSpec] = {
    spec.name: spec
    for spec in (
        RuntimeSpec("python", (".py",), ("python3",)),
        RuntimeSpec("node", (".mjs", ".js", ".cjs"), ("node",)),
        RuntimeSpec("bun", (".ts", ".tsx", ".jsx"), ("bun", "run")),
        RuntimeSpec(
            "deno",
            (".mts",),
            (
                "deno",
                "run",
                "--quiet",
                "--no-prompt",
                "--allow-read=/sandbox,/tmp",
                "--allow-write=/sandbox,/tmp",
                "--allow-env",
                "--allow-net",
            ),
        ),
        RuntimeSpec("bash", (".sh",), ("bash",)),
    )
}

_BY_EXTENSION = {ext: spec for spec in RUNTIMES.values() for ext in spec.extensions}


def get_runtime(name: str) -> RuntimeSpec:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise Isol8Error(f'Unknown runtime: "{name}". Available: {", ".join(RUNTIME_NAMES)}') from None


def detect_runtime(filename: str) -> RuntimeSpec:
    """The runtime for a file name, by its extension (`.ts` is bun, `.mts` is deno)."""
    suffix = PurePosixPath(filename).suffix.lower()
    spec = _BY_EXTENSION.get(suffix)
    if spec is None:
        known = ", ".join(_BY_EXTENSION)
        raise Isol8Error(
            f'Cannot detect runtime for "{filename}". Known extensions: {known}. Use --runtime to specify.'
        )
    return spec


def code_file(spec: RuntimeSpec, extension: str | None) -> str:
    """Where the code is written: `/sandbox/main<ext>`."""
    return f"{CODE_DIR}/main{extension or spec.extensions[0]}"
