"""`isol8 run`: run a file, inline code, a command or stdin in a sandbox; exit with its exit code."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import TextIO

import click

from engine.config import load_config
from engine.docker import DockerClient
from engine.engine import DockerIsol8
from engine.errors import Isol8Error
from engine.images import image_ready
from engine.models import ExecutionRequest, ExecutionResult, Isol8Options
from engine.runtimes import detect_runtime, get_runtime
from isol8_tui.commands.setup import build_images, ca_bundle_option
from isol8_tui.output import err, setup_logging, user_errors, warn


def _pairs(values: tuple[str, ...], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            raise Isol8Error(f"{flag} expects NAME=VALUE, got {value!r}.")
        pairs[name] = rest
    return pairs


SKIPPED_DIRS = {".git", "node_modules", "__pycache__", ".venv", "venv", ".tox"}


def _input_files(file_specs: tuple[str, ...], tree: str | None) -> dict[str, bytes]:
    """Host files for the sandbox: `--file HOST:SANDBOX` pairs and a `--files DIR` tree."""
    files: dict[str, bytes] = {}
    if tree:
        root = Path(tree)
        if not root.is_dir():
            raise Isol8Error(f"--files path is not a directory: {tree}")
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if path.is_file() and not SKIPPED_DIRS.intersection(relative.parts):
                files[f"/sandbox/{relative.as_posix()}"] = path.read_bytes()
    for spec in file_specs:
        host, sep, target = spec.rpartition(":")
        if not sep or not host or not target:
            raise Isol8Error(f"--file expects HOST_PATH:SANDBOX_PATH, got {spec!r}.")
        if not Path(host).is_file():
            raise Isol8Error(f"File not found: {host}")
        files[target] = Path(host).read_bytes()
    return files


def _request(
    file: str | None, code: str | None, cmd: str | None, runtime: str | None, **fields: object
) -> ExecutionRequest:
    """Pick the input (--cmd, -e, FILE, then stdin) and the runtime it implies."""
    if cmd is not None and (file or code is not None):
        raise Isol8Error("--cmd cannot be combined with file input or --eval.")
    if cmd is not None:
        return ExecutionRequest(cmd=cmd, runtime=runtime or "bash", **fields)
    extension = None
    if code is None and file:
        path = Path(file)
        if not path.is_file():
            raise Isol8Error(f"File not found: {file}")
        code = path.read_text(encoding="utf-8", errors="replace")
        extension = path.suffix or None
        runtime = runtime or detect_runtime(file).name
    elif code is None:
        if sys.stdin.isatty():
            click.echo("Reading code from stdin (end with Ctrl-D)...", err=True)
        code = sys.stdin.read()
    runtime = runtime or "python"
    spec = get_runtime(runtime)
    if extension and extension not in spec.extensions:
        extension = None  # e.g. `-r deno script.ts`: run it as the runtime's own kind of file
    return ExecutionRequest(code=code, runtime=runtime, file_extension=extension, **fields)


async def _stream(engine: DockerIsol8, request: ExecutionRequest, out: TextIO) -> int:
    exit_code = 1
    async for event in engine.execute_stream(request):
        if event.type == "stdout":
            out.write(event.data)
            out.flush()
        elif event.type == "stderr":
            sys.stderr.write(event.data)
            sys.stderr.flush()
        elif event.type == "error":
            err(event.data)
        elif event.type == "exit":
            exit_code = int(event.data)
            if event.truncated:
                warn("Output was truncated")
    return exit_code


def _print_result(result: ExecutionResult, out: TextIO) -> int:
    out.write(result.stdout)
    out.flush()
    sys.stderr.write(result.stderr)
    if result.truncated:
        warn("Output was truncated")
    return result.exit_code


async def _run(options: Isol8Options, request: ExecutionRequest, stream: bool, out_path: str | None) -> int:
    with open(out_path, "w", encoding="utf-8") if out_path else contextlib.nullcontext(sys.stdout) as out:
        async with DockerIsol8(options) as engine:
            if stream:
                return await _stream(engine, request, out)
            return _print_result(await engine.execute(request), out)


@click.command("run")
@click.argument("file", required=False)
@click.option("-e", "--eval", "code", metavar="CODE", help="Inline code to run.")
@click.option("--cmd", metavar="CMD", help="A shell command, run with `bash -c` in the runtime's image.")
@click.option("-r", "--runtime", metavar="NAME", help="python, node, bun, deno or bash (default: detected).")
@click.option("--timeout", "timeout_ms", type=int, metavar="MS", help="Time limit in milliseconds.")
@click.option("--memory", "memory_limit", metavar="SIZE", help="Memory limit, e.g. 512m or 1g.")
@click.option("--cpu", "cpu_limit", type=float, metavar="CORES", help="CPU limit in cores, e.g. 0.5.")
@click.option("--pids-limit", type=int, metavar="N", help="Maximum number of processes and threads.")
@click.option("--sandbox-size", metavar="SIZE", help="Size of the /sandbox tmpfs.")
@click.option("--tmp-size", metavar="SIZE", help="Size of the /tmp tmpfs.")
@click.option("--max-output", "max_output_size", type=int, metavar="BYTES", help="Cap per output stream.")
@click.option("--net", "network", type=click.Choice(["none", "host"]), help="Network mode (default: none).")
@click.option("--image", metavar="IMAGE", help="Run in this image instead of isol8:<runtime>.")
@click.option("--stdin", "stdin_data", metavar="DATA", help="Data for the program's standard input.")
@click.option("--env", "env_pairs", multiple=True, metavar="NAME=VALUE", help="Environment variable.")
@click.option(
    "--secret",
    "secret_pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="Secret env var, masked as *** in output.",
)
@click.option("--file", "file_specs", multiple=True, metavar="HOST:SANDBOX", help="Copy a host file in.")
@click.option("--files", "files_dir", metavar="DIR", help="Copy a host directory tree into /sandbox.")
@click.option("--out", "out_path", metavar="FILE", help="Write the program's stdout to FILE.")
@click.option("--workdir", metavar="PATH", help="Working directory inside /sandbox.")
@click.option("--no-stream", is_flag=True, help="Print the output when the run ends instead of live.")
@click.option("--debug", is_flag=True, help="Log what the engine does to stderr.")
def command(
    file: str | None,
    code: str | None,
    cmd: str | None,
    runtime: str | None,
    timeout_ms: int | None,
    stdin_data: str | None,
    env_pairs: tuple[str, ...],
    secret_pairs: tuple[str, ...],
    file_specs: tuple[str, ...],
    files_dir: str | None,
    out_path: str | None,
    workdir: str | None,
    no_stream: bool,
    debug: bool,
    **limits: object,
) -> None:
    """Run FILE, inline code (-e), a command (--cmd) or code from stdin in a sandbox."""
    with user_errors():
        loaded = load_config()
        setup_logging(debug or loaded.config.debug)
        options = loaded.config.engine_options(timeout_ms=timeout_ms, **limits)
        request = _request(
            file,
            code,
            cmd,
            runtime,
            timeout_ms=timeout_ms,
            stdin=stdin_data,
            env=_pairs(env_pairs, "--env"),
            secrets=_pairs(secret_pairs, "--secret"),
            files=_input_files(file_specs, files_dir),
            workdir=workdir,
        )
        if options.network == "host":
            warn("Network mode host: the sandbox has the host's network, fully open.")
        docker = DockerClient()
        docker.ping()
        if options.image is None and not image_ready(docker, request.runtime):
            click.echo(
                f"[..] isol8:{request.runtime} is missing or outdated: building it (first use)", err=True
            )
            build_images([request.runtime], refresh_base=False, ca_bundle=ca_bundle_option(None))
        try:
            exit_code = asyncio.run(_run(options, request, not no_stream, out_path))
        except KeyboardInterrupt:
            err("Interrupted; the sandbox was removed.")
            raise SystemExit(130) from None
    raise SystemExit(exit_code)
