"""`isol8 run`: run files, inline code, commands or stdin in a sandbox; exit with the exit code."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path, PurePosixPath
from typing import Any, get_args
from urllib.parse import urlsplit

import click

from engine import readiness
from engine.cluster import RayIsol8
from engine.config import load_config
from engine.docker import DockerClient
from engine.engine import DockerIsol8
from engine.errors import Isol8Error
from engine.models import ExecutionRequest, Isol8Options, NetworkFilter, NetworkMode
from engine.runtimes import RUNTIME_NAMES, detect_runtime, get_runtime
from isol8_tui.commands.cluster import cluster_flag
from isol8_tui.commands.setup import build_progress
from isol8_tui.output import err, info, setup_logging, user_errors, warn
from isol8_tui.printing import Printing, run_requests

SKIPPED_DIRS = {".git", "node_modules", "__pycache__", ".venv", "venv", ".tox"}


def _pairs(values: tuple[str, ...], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            raise Isol8Error(f"{flag} expects NAME=VALUE, got {value!r}.")
        pairs[name] = rest
    return pairs


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


def _setup_script(values: tuple[str, ...]) -> str | None:
    """`--setup` values joined by newlines; a value naming an existing file is that file's text."""
    parts = [Path(v).read_text() if Path(v).is_file() else v for v in values]
    return "\n".join(parts) or None


def _requests(
    paths: tuple[str, ...],
    code: str | None,
    cmds: tuple[str, ...],
    runtime: str | None,
    url: tuple[str | None, str | None, bool],
    **fields: Any,
) -> list[ExecutionRequest]:
    """What to run, in order: the --cmd values, -e, --url, the FILEs, or else stdin."""
    code_url, code_hash, insecure = url
    if cmds and (paths or code is not None or code_url):
        raise Isol8Error("--cmd cannot be combined with file input, --eval or --url.")
    if code is not None and paths:
        raise Isol8Error("--eval cannot be combined with file input.")
    if code_url and (paths or code is not None):
        raise Isol8Error("--url cannot be used with file input or --eval.")
    if (code_hash or insecure) and not code_url:
        raise Isol8Error("--hash and --allow-insecure-code-url go with --url URL.")
    if cmds:
        return [ExecutionRequest(cmd=cmd, runtime=runtime or "bash", **fields) for cmd in cmds]
    if code_url:
        url_path = urlsplit(code_url).path
        suffix = PurePosixPath(url_path).suffix
        try:
            spec = get_runtime(runtime) if runtime else detect_runtime(url_path)
        except Isol8Error:
            if runtime:
                raise
            raise Isol8Error("Cannot detect runtime from URL path. Use --runtime to specify.") from None
        extension = suffix if suffix in spec.extensions else None
        source = {"code_url": code_url, "code_hash": code_hash, "allow_insecure_code_url": insecure}
        return [ExecutionRequest(runtime=spec.name, file_extension=extension, **source, **fields)]
    if code is not None:
        return [ExecutionRequest(code=code, runtime=runtime or "python", **fields)]
    if not paths:
        if sys.stdin.isatty():
            click.echo("Reading code from stdin (end with Ctrl-D)...", err=True)
        return [ExecutionRequest(code=sys.stdin.read(), runtime=runtime or "python", **fields)]
    requests = []
    for file in paths:
        path = Path(file)
        if not path.is_file():
            raise Isol8Error(f"File not found: {file}")
        spec = get_runtime(runtime) if runtime else detect_runtime(file)
        extension = path.suffix if path.suffix in spec.extensions else None  # `-r deno x.ts`: deno's own kind
        text = path.read_text(encoding="utf-8", errors="replace")
        requests.append(ExecutionRequest(code=text, runtime=spec.name, file_extension=extension, **fields))
    return requests


async def _run(
    options: Isol8Options,
    requests: list[ExecutionRequest],
    stream: bool,
    output: tuple[str | None, Path, bool],
    cluster: str | None,
) -> int:
    """Run the requests in order in one engine; stop at the first that exits non-zero."""
    engine = DockerIsol8(options) if cluster is None else RayIsol8(cluster, options)
    out_path, results_dir, as_json = output
    with open(out_path, "w", encoding="utf-8") if out_path else contextlib.nullcontext(sys.stdout) as out:
        async with engine:
            printing = Printing(out, results_dir, as_json)
            exit_code = await run_requests(
                engine, requests, stream=stream, printing=printing, log_network=options.log_network
            )
            for container_id in engine.persisted if isinstance(engine, DockerIsol8) else ():
                info(
                    f"Container {container_id[:12]} left running (--persist). Inspect it with "
                    f"`docker exec -it {container_id[:12]} bash`; remove it with `isol8 cleanup`."
                )
    return exit_code


@click.command("run")
@click.argument("files", nargs=-1)
@click.option("-e", "--eval", "code", metavar="CODE", help="Inline code to run.")
@click.option("--cmd", "cmds", multiple=True, metavar="CMD", help="A shell command (bash -c); repeatable.")
@click.option("--url", "code_url", metavar="URL", help="Fetch the code from URL (needs remoteCode.enabled).")
@click.option("--hash", "code_hash", metavar="SHA256", help="With --url: the code's expected SHA-256, in hex.")
@click.option("--allow-insecure-code-url", is_flag=True, help="With --url: allow an http:// URL.")
@click.option("-r", "--runtime", metavar="NAME", help=f"{', '.join(RUNTIME_NAMES)} (default: detected).")
@click.option("--timeout", "timeout_ms", type=int, metavar="MS", help="Time limit in milliseconds.")
@click.option("--memory", "memory_limit", metavar="SIZE", help="Memory limit, e.g. 512m or 1g.")
@click.option("--cpu", "cpu_limit", type=float, metavar="CORES", help="CPU limit in cores, e.g. 0.5.")
@click.option("--pids-limit", type=int, metavar="N", help="Maximum number of processes and threads.")
@click.option("--sandbox-size", metavar="SIZE", help="Size of the /sandbox tmpfs.")
@click.option("--tmp-size", metavar="SIZE", help="Size of the /tmp tmpfs.")
@click.option("--max-output", "max_output_size", type=int, metavar="BYTES", help="Cap per output stream.")
@click.option("--net", "network", type=click.Choice(get_args(NetworkMode)), help="Network mode (default: none).")
@click.option("--allow", multiple=True, metavar="REGEX", help="Filtered mode: allow hosts matching (repeatable).")
@click.option("--deny", multiple=True, metavar="REGEX", help="Filtered mode: block hosts matching (repeatable).")
@click.option(
    "--allow-port",
    "allow_ports",
    multiple=True,
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Filtered mode: HTTPS may also reach this port besides 443 (repeatable; adds to the config's).",
)
@click.option("--log-network", is_flag=True, help="Filtered mode: print every request after the run.")
@click.option("--image", metavar="IMAGE", help="Run in this image instead of isol8:<runtime>.")
@click.option("--install", "packages", multiple=True, metavar="PKG", help="Install a package first; repeatable.")
@click.option("--setup", "setup", multiple=True, metavar="CMD|FILE", help="Setup script run before the code.")
@click.option("--stdin", "stdin_data", metavar="DATA", help="Data for the program's standard input.")
@click.option("--env", "env_pairs", multiple=True, metavar="NAME=VALUE", help="Environment variable.")
@click.option("--secret", "secret_pairs", multiple=True, metavar="NAME=VALUE", help="Secret env var, masked in output.")
@click.option("--file", "file_specs", multiple=True, metavar="HOST:SANDBOX", help="Copy a host file in.")
@click.option("--files", "files_dir", metavar="DIR", help="Copy a host directory tree into /sandbox.")
@click.option("--out", "out_path", metavar="FILE", help="Write the program's stdout to FILE.")
@click.option("--workdir", metavar="PATH", help="Working directory inside /sandbox.")
@click.option("--persistent", is_flag=True, help="Run every input of this command in one container.")
@click.option(
    "--stateful",
    is_flag=True,
    help="With --persistent or --session-id: code runs on one interpreter that keeps its variables, "
    "and returns rich results (images and PDFs go to files).",
)
@click.option(
    "--results-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(),
    show_default="the current directory",
    help="Where --stateful runs' images and PDFs are written (result-N.png, ...; never overwriting a file).",
)
@click.option("--json", "as_json", is_flag=True, help="Print each execution's whole result as one JSON line.")
@click.option("--persist", is_flag=True, help="Leave the container running after exit (debugging).")
@click.option("--no-stream", is_flag=True, help="Print the output when the run ends instead of live.")
@click.option("--debug", is_flag=True, help="Log what the engine does to stderr.")
@click.option("--host", metavar="URL", help="Run on an isol8 server (`isol8 serve`) instead of locally.")
@click.option("--key", metavar="KEY", help="With --host: API key (default: $ISOL8_API_KEY, else `isol8 login`'s).")
@click.option("--session-id", metavar="ID", help="With --host: run in this server session (state persists).")
@click.option("--cluster", metavar="ADDRESS", help="Run on a Ray cluster (ray://HEAD:10001, HEAD:6379 or auto).")
def command(
    files: tuple[str, ...],
    code: str | None,
    cmds: tuple[str, ...],
    code_url: str | None,
    code_hash: str | None,
    allow_insecure_code_url: bool,
    runtime: str | None,
    timeout_ms: int | None,
    packages: tuple[str, ...],
    setup: tuple[str, ...],
    stdin_data: str | None,
    env_pairs: tuple[str, ...],
    secret_pairs: tuple[str, ...],
    file_specs: tuple[str, ...],
    files_dir: str | None,
    out_path: str | None,
    workdir: str | None,
    persistent: bool,
    stateful: bool,
    results_dir: Path,
    as_json: bool,
    persist: bool,
    allow: tuple[str, ...],
    deny: tuple[str, ...],
    allow_ports: tuple[int, ...],
    log_network: bool,
    no_stream: bool,
    debug: bool,
    cluster: str | None,
    **limits: Any,
) -> None:
    """Run FILES, inline code (-e), commands (--cmd) or code from stdin in a sandbox.

    Several FILES or --cmd values run in order and stop at the first failure; with --persistent
    they share one container, so files and state carry over.
    """
    with user_errors():
        loaded = load_config()
        setup_logging(debug or loaded.config.debug)
        requests = _requests(
            files,
            code,
            cmds,
            runtime,
            (code_url, code_hash, allow_insecure_code_url),
            timeout_ms=timeout_ms,
            stdin=stdin_data,
            env=_pairs(env_pairs, "--env"),
            secrets=_pairs(secret_pairs, "--secret"),
            files=_input_files(file_specs, files_dir),
            install_packages=list(packages),
            setup_script=_setup_script(setup),
            workdir=workdir,
        )
        remote = {name: limits.pop(name) for name in ("host", "key", "session_id")}
        if stateful and not (persistent or remote["session_id"]):
            raise Isol8Error(
                "--stateful needs a session: add --persistent, or run on a server with --host URL --session-id ID."
            )
        output = (out_path, results_dir, as_json)
        if any(remote.values()):
            from isol8_tui.remote_run import run_remote

            flags = {**limits, "persist": persist, "log_network": log_network, "stateful": stateful}
            flags.update(allow=allow, deny=deny, allow_ports=allow_ports)
            stream = not no_stream
            exit_code = run_remote(
                **remote, requests=requests, persistent=persistent, stream=stream, output=output, flags=flags
            )
            raise SystemExit(exit_code)
        # --allow/--deny replace the config's lists, --allow-port adds to its ports.
        network_filter = loaded.config.network
        network_filter = NetworkFilter(
            whitelist=list(allow) or network_filter.whitelist,
            blacklist=list(deny) or network_filter.blacklist,
            ports=[*network_filter.ports, *allow_ports],
            whitelist_reaches_private=network_filter.whitelist_reaches_private,
        )
        if packages and limits["network"] is None:
            # Installs need a registry, and nothing else: filtered mode limited to its hosts.
            limits["network"] = "filtered"
            hosts = sorted({h for r in requests for h in get_runtime(r.runtime).registries})
            network_filter = network_filter.model_copy(update={"whitelist": [*network_filter.whitelist, *hosts]})
        options = loaded.config.engine_options(
            timeout_ms=timeout_ms,
            mode="persistent" if persistent else "ephemeral",
            runtime=requests[0].runtime if persistent else None,
            persist=persist,
            stateful=stateful,
            network_filter=network_filter,
            log_network=log_network or None,
            # One command runs a few executions at most: a warm spare would only be started and removed.
            pool_size=None if loaded.origin("poolSize") == "file" else 0,
            **limits,
        )
        if options.log_network and options.network != "filtered":
            warn("--log-network only logs in filtered mode (--net filtered).")
        if options.network == "host":
            warn("Network mode host: the sandbox has the host's network, fully open.")
        if cluster is not None:
            cluster = cluster_flag(cluster)  # each node has its own images (`isol8 setup` there)
        elif options.image is None:
            with build_progress() as progress:
                readiness.prepare(sorted({r.runtime for r in requests}), progress)
        else:
            DockerClient().ping()
        try:
            exit_code = asyncio.run(_run(options, requests, not no_stream, output, cluster))
        except KeyboardInterrupt:
            err("Interrupted; the sandbox was removed.")
            raise SystemExit(130) from None
    raise SystemExit(exit_code)
