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


AGENT_DIR = "/opt/isol8"


@dataclass(frozen=True)
class RuntimeSpec:
    """A runtime. `warm` is the option that gives its interpreter the agent's preload, so the
    interpreter can be started before its job (the preload waits for the job's env and cwd, then
    the file runs as the main module, as with `argv`). `startup_env` are the environment variables
    (names, or prefixes ending in `_`) it reads while starting: a job that sets one runs cold."""

    name: str
    extensions: tuple[str, ...]  # the first is the default for inline code
    command: tuple[str, ...]  # argv before the code file
    warm: tuple[str, ...] = ()
    startup_env: tuple[str, ...] = ()

    @property
    def image(self) -> str:
        return f"isol8:{self.name}"

    def argv(self, code_file: str) -> list[str]:
        return [*self.command, code_file]

    def warm_argv(self, code_file: str, env: dict[str, str]) -> list[str] | None:
        """The pre-started interpreter's argv for this file, or None when it cannot serve the job."""
        if not self.warm or any(_starts_with(name, self.startup_env) for name in env):
            return None
        return [*self.command, *self.warm, code_file]


def _starts_with(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == pattern or (pattern.endswith("_") and name.startswith(pattern)) for pattern in patterns)


# Read by Node and Deno as they start (the loader's paths, TLS, locale, proxies), not later.
_COMMON_STARTUP = ("HOME", "LANG", "LC_", "LD_", "SSL_", "TZ")


RUNTIMES: dict[str, RuntimeSpec] = {
    spec.name: spec
    for spec in (
        RuntimeSpec("python", (".py",), ("python3",)),
        RuntimeSpec(
            "node",
            (".mjs", ".js", ".cjs"),
            ("node",),
            warm=("--require", f"{AGENT_DIR}/warm-node.cjs"),
            startup_env=(*_COMMON_STARTUP, "NODE_", "UV_", "OPENSSL_", "ICU_DATA"),
        ),
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
            warm=(f"--preload={AGENT_DIR}/warm-deno.js",),
            startup_env=(
                *_COMMON_STARTUP,
                "DENO_",
                "RUST_",
                "NO_COLOR",
                "HTTP_PROXY",
                "HTTPS_PROXY",
                "NO_PROXY",
                "http_proxy",
                "https_proxy",
                "no_proxy",
                "ALL_PROXY",
                "all_proxy",
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
