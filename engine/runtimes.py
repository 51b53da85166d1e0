"""The five runtimes, the one place that says what each is: its name, image, file extensions, how a
code file is run (cold and pre-started), how packages are installed at run time and from which
registries, and how a custom image installs them. Models, the package installer, custom images,
the CLI and the workbench all read `RUNTIMES`.

Code is always written to a file in /sandbox and run from there, inline or not, so the same code
behaves the same on every path (Node is ESM unless the extension is `.cjs`; packages installed in
/sandbox resolve; tracebacks name a real file) and no size limit on argv applies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal, get_args

from engine.errors import Isol8Error

CODE_DIR = "/sandbox"
AGENT_DIR = "/opt/isol8"

RuntimeName = Literal["python", "node", "bun", "deno", "bash"]
"""The runtimes' names as a type (config schemas and type checking); `RUNTIMES` must match it."""

Argv = Callable[[list[str]], list[str]]


@dataclass(frozen=True)
class Kernel:
    """A stateful session's long-lived interpreter (engine/agent/kernel.py starts it): its argv, how
    a cell is written to it (JSON, or words for bash), and whether SIGINT ends a cell and keeps
    the interpreter's state (else a timeout kills it and the state is lost). An interrupted cell
    has `grace_ms` to stop before the interpreter is killed."""

    argv: tuple[str, ...]
    cells: Literal["json", "words"] = "json"
    interruptible: bool = True
    grace_ms: int = 1000

    def spec(self) -> dict[str, object]:
        return {"argv": list(self.argv), "cells": self.cells, "interruptible": self.interruptible,
                "grace_ms": self.grace_ms if self.interruptible else 0}  # fmt: skip


@dataclass(frozen=True)
class RuntimeSpec:
    """A runtime. `warm` is the option that gives its interpreter the agent's preload, so the
    interpreter can be started before its job (the preload waits for the job's env and cwd, then
    the file runs as the main module, as with `argv`). `startup_env` are the environment variables
    (names, or prefixes ending in `_`) it reads while starting: a job that sets one runs cold."""

    name: RuntimeName
    extensions: tuple[str, ...]  # the first is the default for inline code
    command: tuple[str, ...]  # argv before the code file
    registries: tuple[str, ...]  # host patterns its installer reaches (the filtered allow list for installs)
    install: Argv | str  # the argv installing packages into /sandbox as the sandbox user, or why it cannot
    image_install: Argv | None  # an image build's exec-form RUN installing system-wide, if supported
    warm: tuple[str, ...] = ()
    startup_env: tuple[str, ...] = ()
    kernel: Kernel | None = None  # a stateful session's interpreter, where the runtime has one

    @property
    def image(self) -> str:
        return f"isol8:{self.name}"

    def install_argv(self, packages: list[str]) -> list[str]:
        """The run-time install command for (validated) `packages`; Isol8Error when there is none."""
        if isinstance(self.install, str):
            raise Isol8Error(self.install)
        return self.install(packages)

    def image_install_argv(self, packages: list[str]) -> list[str]:
        if self.image_install is None:
            raise Isol8Error(f"Custom images for {self.name} are not supported; install its packages at run time.")
        return self.image_install(packages)

    def argv(self, code_file: str) -> list[str]:
        return [*self.command, code_file]

    def warm_argv(self, code_file: str, env: dict[str, str]) -> list[str] | None:
        """The pre-started interpreter's argv for this file, or None when it cannot serve the job."""
        if not self.warm or any(_starts_with(name, self.startup_env) for name in env):
            return None
        return [*self.command, *self.warm, code_file]


def _starts_with(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == pattern or (pattern.endswith("_") and name.startswith(pattern)) for pattern in patterns)


def start_from_agent_dir(module: str) -> str:
    """Python code that runs /opt/isol8/<module>.py's main() from its compiled form (a script is
    compiled at each start), its folder, not the working directory, first on the path."""
    return f"import sys; sys.path[0] = {AGENT_DIR!r}; import {module}; {module}.main()"


# Read by Node and Deno as they start (the loader's paths, TLS, locale, proxies), not later.
_COMMON_STARTUP = ("HOME", "LANG", "LC_", "LD_", "SSL_", "TZ")


def _pip_user(packages: list[str]) -> list[str]:
    return ["python3", "-m", "pip", "install", "--user", "--no-cache-dir", "--break-system-packages",
            "--disable-pip-version-check", "--no-input", "--progress-bar", "off", *packages]  # fmt: skip


def _pip_system(packages: list[str]) -> list[str]:
    return ["python3", "-m", "pip", "install", "--break-system-packages", "--no-cache-dir",
            "--root-user-action=ignore", "--disable-pip-version-check", *packages]  # fmt: skip


def _npm_sandbox(packages: list[str]) -> list[str]:
    return ["npm", "install", "--prefix", CODE_DIR, "--no-audit", "--no-fund", *packages]


def _npm_system(packages: list[str]) -> list[str]:
    # /node_modules: ESM `import` and `require` both walk up from /sandbox to it.
    return ["npm", "install", "--prefix", "/", "--no-audit", "--no-fund", *packages]


def _bun_add(packages: list[str]) -> list[str]:
    return ["bun", "add", *packages]


def _deno_cache(packages: list[str]) -> list[str]:
    return ["deno", "cache", *(p if p.startswith(("npm:", "jsr:")) else f"npm:{p}" for p in packages)]


def _apt_system(packages: list[str]) -> list[str]:
    return ["sh", "-c", 'apt-get update && apt-get install -y --no-install-recommends "$@" '
            "&& rm -rf /var/lib/apt/lists/*", "install", *packages]  # fmt: skip


_NPM = (r"registry\.npmjs\.org",)
_NO_APT_AT_RUN_TIME = (
    "Installing Debian packages at run time needs a writable root filesystem, and sandboxes' is "
    "read-only. Bake them into an image: `isol8 build --base bash --install PKG --tag TAG`."
)

RUNTIMES: dict[str, RuntimeSpec] = {
    spec.name: spec
    for spec in (
        RuntimeSpec(
            "python",
            (".py",),
            ("python3",),
            registries=(r"pypi\.org", r"files\.pythonhosted\.org"),
            install=_pip_user,
            image_install=_pip_system,
            kernel=Kernel(("python3", "-c", start_from_agent_dir("kernel_python"))),
        ),
        RuntimeSpec(
            "node",
            (".mjs", ".js", ".cjs"),
            ("node",),
            registries=_NPM,
            install=_npm_sandbox,
            image_install=_npm_system,
            warm=("--require", f"{AGENT_DIR}/warm-node.cjs"),
            startup_env=(*_COMMON_STARTUP, "NODE_", "UV_", "OPENSSL_", "ICU_DATA"),
            kernel=Kernel(("node", "--expose-internals", f"{AGENT_DIR}/kernel-node.cjs")),
        ),
        RuntimeSpec(
            "bun",
            (".ts", ".tsx", ".jsx"),
            ("bun", "run"),
            registries=_NPM,
            install=_bun_add,
            image_install=_npm_system,
        ),
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
            registries=(*_NPM, r"jsr\.io", r"(.*\.)?jsr\.io"),
            install=_deno_cache,
            image_install=None,
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
        RuntimeSpec(
            "bash",
            (".sh",),
            ("bash",),
            registries=(r"deb\.debian\.org",),
            install=_NO_APT_AT_RUN_TIME,
            image_install=_apt_system,
            kernel=Kernel(("bash", f"{AGENT_DIR}/kernel-bash.sh"), cells="words", interruptible=False),
        ),
    )
}
RUNTIME_NAMES: tuple[RuntimeName, ...] = get_args(RuntimeName)
if tuple(RUNTIMES) != RUNTIME_NAMES:  # pragma: no cover - a registry edit that forgot the type
    raise RuntimeError(f"RuntimeName {RUNTIME_NAMES} does not match RUNTIMES {tuple(RUNTIMES)}")

_BY_EXTENSION = {ext: spec for spec in RUNTIMES.values() for ext in spec.extensions}


def unknown_runtime(name: str) -> str:
    return f'Unknown runtime: "{name}". Available: {", ".join(RUNTIME_NAMES)}'


def get_runtime(name: str) -> RuntimeSpec:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise Isol8Error(unknown_runtime(name)) from None


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


def code_file(spec: RuntimeSpec, extension: str | None, name: str | None = None) -> str:
    """Where the code is written: `/sandbox/<name>` when the request names it, else `/sandbox/main<ext>`."""
    if name is not None:
        return f"{CODE_DIR}/{name}"
    return f"{CODE_DIR}/main{extension or spec.extensions[0]}"
