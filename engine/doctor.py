"""`isol8 doctor`: the troubleshooting guide's triage flow, walked by the machine.

Each check is a function returning a Check (name, status, detail, and for anything not ok the
guide's remedy); `run_checks` runs them in the guide's order. A check that cannot run because an
earlier one failed (no Docker, no images) says so as `skipped`. No UI here: the command
(isol8_tui/commands/doctor.py) renders the report.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from engine.config import LoadedConfig, load_config
from engine.docker import DockerClient
from engine.engine import DockerIsol8
from engine.errors import ConfigError, Isol8Error
from engine.images import image_ready
from engine.models import ExecutionRequest, Model, NetworkFilter
from engine.runtimes import RUNTIMES, get_runtime
from engine.seccomp import seccomp_security_opt

Status = Literal["ok", "warning", "failure", "skipped"]

# The remedies, word for word from the troubleshooting guide (seed-troubleshooting.txt).
DOCKER_REMEDY = "start Docker daemon/Desktop; ensure current user can access Docker socket"
SOCKET_REMEDY = "ensure current user can access Docker socket (e.g. add it to the `docker` group, then log in again)"
IMAGES_REMEDY = "prefer pre-baked dependencies via `isol8 setup` for production stability (run `isol8 setup`)"
CONFIG_REMEDY = "Config drift: always confirm effective config first (`isol8 config`); fix the key named above"
SECCOMP_REMEDY = (
    'verify security.customProfilePath if using custom profile; keep security.seccomp: "strict" for default '
    "hardening; if strict/custom profile loading fails, execution is blocked by design"
)
NETWORK_REMEDY = (
    "container-level startup issue or capability/environment constraints: retry with --debug and inspect logs; "
    "validate Docker environment and image health"
)
GVISOR_REMEDY = "register runsc with Docker (`runsc install`, then restart Docker) or unset security.runtime"
HEALTH_REMEDY = "verify host/port; confirm server process is running"
AUTH_401_REMEDY = "401: missing Authorization header: pass --key (or $ISOL8_API_KEY, or `isol8 login`)"
AUTH_403_REMEDY = "403: invalid Bearer token: use a valid key for this server"
PORT_REMEDY = (
    "enter another port, or let isol8 find an available port automatically; to set a port non-interactively, "
    "use precedence: --port, ISOL8_PORT, PORT, fallback 3000"
)

MIN_API_VERSION = (1, 41)  # Docker 20.10
DISK_FAIL_BYTES = 1 << 30
DISK_WARN_BYTES = 5 << 30
PROBE_PORT = 8080
PROBE_SERVER = f"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"isol8 doctor"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", {PROBE_PORT}), H).serve_forever()
"""
PROBE_CLIENT = """
import sys, time, urllib.request, urllib.error
def get(url, tries):
    for _ in range(tries):
        try:
            return urllib.request.urlopen(url, timeout=5).status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            time.sleep(0.2)
    return "unreachable"
print(get(sys.argv[1], 50), get(sys.argv[2], 1))
"""
BLOCKED_HOST = "blocked.isol8-doctor.invalid"


class ConfigValue(Model):
    key: str
    value: Any
    source: Literal["file", "default"]


class Check(Model):
    name: str
    status: Status
    detail: str
    remedy: str | None = None
    values: list[ConfigValue] | None = None  # the config check: every effective value and its source


class DoctorReport(Model):
    checks: list[Check]

    @property
    def exit_code(self) -> int:
        """0 all fine, 1 any failure, 2 warnings only."""
        statuses = {check.status for check in self.checks}
        return 1 if "failure" in statuses else 2 if "warning" in statuses else 0


def ok(name: str, detail: str) -> Check:
    return Check(name=name, status="ok", detail=detail)


def bad(name: str, status: Status, detail: str, remedy: str) -> Check:
    return Check(name=name, status=status, detail=detail, remedy=remedy)


def skipped(name: str, why: str) -> Check:
    return Check(name=name, status="skipped", detail=why)


# --- Docker ---------------------------------------------------------------------------------------
def check_docker(docker: DockerClient) -> Check:
    try:
        docker.ping()
    except Isol8Error as exc:
        return bad("docker", "failure", str(exc), DOCKER_REMEDY)
    return ok("docker", f"the daemon answers at {docker_host()}")


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def check_socket() -> Check:
    host = docker_host()
    if not host.startswith("unix://"):
        return ok("docker socket", f"{host} is not a local socket: nothing to check")
    path = host.removeprefix("unix://")
    if not os.path.exists(path):
        return bad("docker socket", "failure", f"{path} does not exist", DOCKER_REMEDY)
    if not os.access(path, os.R_OK | os.W_OK):
        return bad("docker socket", "failure", f"this user cannot read and write {path}", SOCKET_REMEDY)
    return ok("docker socket", f"{path} is readable and writable by this user")


def check_version(info: dict[str, Any], version: dict[str, Any]) -> Check:
    api = tuple(int(part) for part in str(version.get("ApiVersion", "0.0")).split(".")[:2])
    detail = f"Docker {version.get('Version', '?')} (API {version.get('ApiVersion', '?')}), {info.get('OSType', '?')}"
    if api < MIN_API_VERSION:
        return bad("docker version", "failure", f"{detail}: isol8 needs Docker 20.10 or newer", DOCKER_REMEDY)
    return ok("docker version", detail)


def check_cgroups(info: dict[str, Any]) -> Check:
    detail = f"cgroup v{info.get('CgroupVersion', '?')} ({info.get('CgroupDriver', '?')})"
    missing = [name for name, key in (("memory", "MemoryLimit"), ("pids", "PidsLimit")) if not info.get(key)]
    if missing:
        return bad(
            "cgroups",
            "failure",
            f"{detail}: the daemon cannot enforce {' and '.join(missing)} limits",
            "enable the memory and pids cgroup controllers for Docker (kernel boot options), then restart Docker",
        )
    return ok("cgroups", f"{detail}: memory, CPU and pids limits enforced")


def check_disk(info: dict[str, Any]) -> Check:
    root = str(info.get("DockerRootDir") or "/var/lib/docker")
    try:
        free = shutil.disk_usage(root).free
    except OSError as exc:
        return bad("disk", "warning", f"cannot measure free space at {root}: {exc.strerror or exc}", IMAGES_REMEDY)
    detail = f"{free / (1 << 30):.1f} GiB free at {root}"
    if free < DISK_FAIL_BYTES:
        return bad(
            "disk", "failure", detail, "free disk space for images (e.g. `isol8 cleanup --images`, docker prune)"
        )
    if free < DISK_WARN_BYTES:
        return bad("disk", "warning", detail, "free disk space for images (e.g. `docker system prune`)")
    return ok("disk", detail)


# --- images and config ----------------------------------------------------------------------------
def check_images(docker: DockerClient, loaded: LoadedConfig | None) -> Check:
    stale = [get_runtime(runtime).image for runtime in RUNTIMES if not image_ready(docker, runtime)]
    prebuilt = [image.tag for image in loaded.config.prebuilt_images] if loaded else []
    missing = [tag for tag in prebuilt if docker.image_id(tag) is None]
    if stale or missing:
        parts = []
        if stale:
            parts.append(f"missing or outdated: {', '.join(stale)}")
        if missing:
            parts.append(f"prebuiltImages not built: {', '.join(missing)}")
        return bad("images", "failure", "; ".join(parts), IMAGES_REMEDY)
    extra = f", and {len(prebuilt)} prebuilt" if prebuilt else ""
    return ok("images", f"current for {', '.join(RUNTIMES)}{extra}")


def check_config(cwd: Any = None) -> tuple[Check, LoadedConfig | None]:
    try:
        loaded = load_config(cwd)
    except ConfigError as exc:
        return bad("config", "failure", str(exc), CONFIG_REMEDY), None
    values = [
        ConfigValue(key=key, value=value, source=loaded.origin(key))
        for key, value in _flatten(loaded.config.model_dump(by_alias=True, mode="json", exclude={"schema_"}))
    ]
    where = str(loaded.source) if loaded.source else "no config file: the defaults apply"
    from_file = sum(value.source == "file" for value in values)
    check = Check(name="config", status="ok", detail=f"{where} ({from_file} values from the file)", values=values)
    return check, loaded


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("keymap",):
            out.extend(_flatten(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def check_seccomp(loaded: LoadedConfig | None) -> Check:
    if loaded is None:
        return skipped("seccomp", "the config is invalid")
    security = loaded.config.security
    try:
        seccomp_security_opt(security.seccomp, security.custom_profile_path)
    except ConfigError as exc:
        return bad("seccomp", "failure", str(exc), SECCOMP_REMEDY)
    if security.seccomp == "unconfined":
        return bad("seccomp", "warning", 'security.seccomp is "unconfined": no syscall filter', SECCOMP_REMEDY)
    where = f" from {security.custom_profile_path}" if security.seccomp == "custom" else ""
    return ok("seccomp", f"the {security.seccomp} profile{where} loads")


# --- sandboxes --------------------------------------------------------------------------------------
@dataclass
class ProbeServer:
    network: str
    name: str
    container_id: str


def start_probe(docker: DockerClient) -> ProbeServer:
    """A plain HTTP server in a container on a network of its own: the filtered sandbox's only peer."""
    suffix = uuid.uuid4().hex[:10]
    network, name = f"isol8-doctor-{suffix}", f"isol8-doctor-web-{suffix}"
    docker.create_network(network)
    try:
        container_id = docker.run_service(get_runtime("python").image, ["python3", "-c", PROBE_SERVER], name, network)
    except Exception:
        docker.remove_network(network)
        raise
    return ProbeServer(network, name, container_id)


def stop_probe(docker: DockerClient, probe: ProbeServer) -> None:
    docker.remove(probe.container_id)
    docker.remove_network(probe.network)


async def check_network(docker: DockerClient, loaded: LoadedConfig) -> Check:
    """A filtered sandbox reaches the whitelisted probe server (ALLOW) and is refused another host (BLOCK)."""
    name = "filtered network"
    try:
        probe = await asyncio.to_thread(start_probe, docker)
    except Exception as exc:  # docker-py's own errors: the daemon refused a network or a container
        return bad(name, "failure", f"the doctor's probe server did not start: {exc}", NETWORK_REMEDY)
    try:
        settings: dict[str, Any] = {
            "network": "filtered",
            "docker_network": probe.network,
            "network_filter": NetworkFilter(whitelist=[f"^{probe.name}$"]),
            "log_network": True,
            "prewarm": [],
        }
        # The config in force (its seccomp profile, its OCI runtime), with the probe's network.
        engine = DockerIsol8(loaded.config.engine_options(**settings))
        allowed, blocked = f"http://{probe.name}:{PROBE_PORT}/", f"http://{BLOCKED_HOST}/"
        async with engine:
            code = f"import sys\nsys.argv[1:] = {[allowed, blocked]!r}\n{PROBE_CLIENT}"
            result = await engine.execute(ExecutionRequest(code=code, runtime="python", timeout_ms=30_000))
    except Isol8Error as exc:
        return bad(name, "failure", f"the sandbox did not run: {exc}", NETWORK_REMEDY)
    finally:
        await asyncio.to_thread(stop_probe, docker, probe)
    actions = {(entry.host, entry.action) for entry in result.network_logs or []}
    if result.stdout.split() != ["200", "403"] or (BLOCKED_HOST, "BLOCK") not in actions:
        seen = (result.stdout.strip() or result.stderr.strip())[:200]
        return bad(
            name,
            "failure",
            f"expected the probe allowed (200) and another host blocked (403), got: {seen}",
            NETWORK_REMEDY,
        )
    return ok(name, "proxy and firewall rules up; a whitelisted request was allowed and another host blocked")


async def check_gvisor(docker: DockerClient, info: dict[str, Any], loaded: LoadedConfig | None) -> Check:
    configured = loaded.config.security.runtime if loaded else None
    runtimes = info.get("Runtimes") or {}
    if "runsc" not in runtimes:
        if configured == "runsc":
            return bad("gvisor", "failure", "security.runtime is runsc but Docker has no runsc runtime", GVISOR_REMEDY)
        return skipped("gvisor", "runsc is not registered with Docker (optional)")
    try:
        async with DockerIsol8(security={"runtime": "runsc"}) as engine:
            result = await engine.execute(ExecutionRequest(cmd="echo gvisor", runtime="bash"))
    except Isol8Error as exc:
        return bad("gvisor", "failure", f"runsc is registered but a sandbox failed: {exc}", GVISOR_REMEDY)
    if result.exit_code != 0 or result.stdout != "gvisor\n":
        return bad(
            "gvisor", "failure", f"a runsc sandbox exited {result.exit_code}: {result.stderr[:200]}", GVISOR_REMEDY
        )
    return ok("gvisor", "runsc is registered and runs a sandbox")


# --- server and port --------------------------------------------------------------------------------
def check_server(host: str, key: str | None) -> Check:
    import httpx  # here, as in engine/remote.py: importing httpx pulls in its CLI's UI packages

    name = "server"
    try:
        health = httpx.get(f"{host.rstrip('/')}/health", timeout=10)
    except httpx.HTTPError as exc:
        return bad(
            name, "failure", f"Remote server health check failed: {str(exc) or type(exc).__name__}", HEALTH_REMEDY
        )
    if health.status_code != 200:
        return bad(name, "failure", f"Remote server health check failed: {health.status_code}", HEALTH_REMEDY)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        reply = httpx.get(f"{host.rstrip('/')}/sessions", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        return bad(name, "failure", f"{host} answered /health but not /sessions: {exc}", HEALTH_REMEDY)
    if reply.status_code == 401:
        return bad(
            name, "failure", f"{host} is up; 401: the request had no valid Authorization header", AUTH_401_REMEDY
        )
    if reply.status_code == 403:
        return bad(name, "failure", f"{host} is up; 403: the server refused this key", AUTH_403_REMEDY)
    if reply.status_code != 200:
        return bad(name, "failure", f"{host} is up but /sessions answered {reply.status_code}", HEALTH_REMEDY)
    version = health.json().get("version", "?")
    return ok(name, f"{host} is up (isol8 {version}) and accepts the key")


def check_port(bind: str, port: int) -> Check:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return bad("port", "warning", f"EADDRINUSE: {bind}:{port} is in use", PORT_REMEDY)
            return bad("port", "failure", f"cannot listen on {bind}:{port}: {exc.strerror or exc}", PORT_REMEDY)
    return ok("port", f"{bind}:{port} is free for `isol8 serve`")


# --- the walk ---------------------------------------------------------------------------------------
async def run_checks(
    port: int, host: str | None = None, key: str | None = None, progress: Callable[[Check], None] = lambda _: None
) -> DoctorReport:
    """Every check in the guide's order; `host` adds the remote server check."""
    checks: list[Check] = []

    def add(check: Check) -> None:
        checks.append(check)
        progress(check)

    docker = DockerClient()
    add(check_docker(docker))
    add(check_socket())
    docker_up = checks[0].status == "ok"
    info: dict[str, Any] = {}
    if docker_up:
        info = await asyncio.to_thread(docker.api.info)
        add(check_version(info, await asyncio.to_thread(docker.api.version)))
        add(check_cgroups(info))
        add(check_disk(info))
    else:
        for name in ("docker version", "cgroups", "disk"):
            add(skipped(name, "Docker is not reachable"))
    config, loaded = check_config()
    add(check_images(docker, loaded) if docker_up else skipped("images", "Docker is not reachable"))
    add(config)
    add(check_seccomp(loaded))
    # Every isol8 command refuses a broken config, so no sandbox is tried without a valid one.
    sandboxes = docker_up and checks[-3].status == "ok" and checks[-1].status != "failure"
    if sandboxes and loaded is not None:
        add(await check_network(docker, loaded))
        add(await check_gvisor(docker, info, loaded))
    else:
        why = "an earlier check failed (Docker, images, config or seccomp)"
        add(skipped("filtered network", why))
        add(skipped("gvisor", why))
    add(check_server(host, key) if host else skipped("server", "no --host given"))
    bind = loaded.config.server.bind if loaded else "127.0.0.1"
    add(check_port(bind, port))
    return DoctorReport(checks=checks)
