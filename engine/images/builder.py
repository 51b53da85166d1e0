"""Builds the images: one shared Debian 13 base, then a thin agent layer per runtime.

The base comes from `debian:trixie-slim` when a registry answers, otherwise from debootstrap and
`docker import` (air-gapped machines, and our CI). Each image carries a content-hash label; an
image whose hash matches is left alone, a replaced one is removed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from engine.docker import DockerClient, Progress
from engine.errors import Isol8Error
from engine.hardening import PROXY_UID, SANDBOX_UIDS
from engine.images import tools
from engine.runtimes import RUNTIMES, get_runtime, start_from_agent_dir

REPOSITORY = "isol8"
BASE_TAG = "base"
ROOTFS_TAG = "rootfs"
HASH_LABEL = "isol8.build.hash"
RECIPE_VERSION = 3
SUITE = "trixie"
MIRROR = os.environ.get("ISOL8_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = (
    "python3",
    "python3-pip",
    "bash",
    "coreutils",
    "ca-certificates",
    "iptables",
    "curl",
    "procps",
)
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"
AGENT_FILES = (
    "agent.py",
    "protocol.py",
    "zygote.py",
    "proxy.py",
    "kernel.py",
    "kernel_python.py",
    "kernel-node.cjs",
    "kernel-bash.sh",
    "node-proxy.cjs",
    "warm-node.cjs",
    "warm-deno.js",
)

# Everything a job sees by default. Installs land in /sandbox because /tmp is noexec.
ENVIRONMENT = {
    "HOME": "/sandbox",
    "LANG": "C.UTF-8",
    "PATH": "/sandbox/.local/bin:/sandbox/.npm-global/bin:/sandbox/.bun-global/bin:"
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUSERBASE": "/sandbox/.local",
    "PIP_CERT": SYSTEM_CA,
    "REQUESTS_CA_BUNDLE": SYSTEM_CA,
    "SSL_CERT_FILE": SYSTEM_CA,
    "NPM_CONFIG_PREFIX": "/sandbox/.npm-global",
    "NPM_CONFIG_CACHE": "/sandbox/.npm-cache",
    "NPM_CONFIG_UPDATE_NOTIFIER": "false",
    "NPM_CONFIG_FUND": "false",
    "NODE_PATH": "/usr/local/lib/node_modules:/sandbox/.npm-global/lib/node_modules:/sandbox/node_modules",
    "BUN_INSTALL_CACHE_DIR": "/sandbox/.bun-cache",
    "DENO_DIR": "/sandbox/.deno",
    "DENO_NO_UPDATE_CHECK": "1",
    "DENO_TLS_CA_STORE": "system",
    # Node and Bun ship their own CA lists; this makes them use the system store (which has the
    # extra CA). NODE_EXTRA_CA_CERTS would cost Node 45 ms a start.
    "NODE_USE_SYSTEM_CA": "1",
}


@dataclass(frozen=True)
class ImageStatus:
    image: str
    built: bool  # False: it was up to date


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def _agent_sources() -> dict[str, bytes]:
    agent = files("engine.agent")
    return {name: agent.joinpath(name).read_bytes() for name in AGENT_FILES}


def base_hash(ca_bundle: Path | None) -> str:
    recipe = {
        "recipe": RECIPE_VERSION,
        "suite": SUITE,
        "packages": PACKAGES,
        "tools": [(t.package, t.version) for t in tools.tools_for_host()],
        "uids": [SANDBOX_UIDS.start, SANDBOX_UIDS.stop],
        "proxy_uid": PROXY_UID,
        "env": ENVIRONMENT,
    }
    ca = ca_bundle.read_bytes() if ca_bundle else b""
    return _digest(json.dumps(recipe, sort_keys=True), ca)


def runtime_hash(base: str, runtime: str) -> str:
    sources = _agent_sources()
    return _digest(base, runtime, _runtime_dockerfile(runtime, base), *(sources[n] for n in AGENT_FILES))


def _runtime_dockerfile(runtime: str, build_hash: str) -> str:
    return (
        f"FROM {REPOSITORY}:{BASE_TAG}\n"
        f"COPY {' '.join(AGENT_FILES)} /opt/isol8/\n"
        # Compiled once here: the agent starts with every container, and compiling it took ~8 ms.
        "RUN python3 -m compileall -q /opt/isol8\n"
        f"ENV ISOL8_RUNTIME={runtime}\n"
        f'LABEL {HASH_LABEL}="{build_hash}" isol8.runtime="{runtime}" isol8.managed="true"\n'
        "WORKDIR /sandbox\n"
        f'ENTRYPOINT ["python3", "-E", "-s", "-S", "-B", "-c", "{start_from_agent_dir("agent")}"]\n'
    )


def _base_dockerfile(source: str, pulled: bool, build_hash: str, with_ca: bool) -> str:
    apt = (
        "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
        + " ".join(PACKAGES)
        + " && rm -rf /var/lib/apt/lists/*\n"
        if pulled
        else ""
    )
    ca = f" && cat /usr/local/share/ca-certificates/isol8-extra.crt >> {SYSTEM_CA}" if with_ca else ""
    env = " ".join(f"{key}={json.dumps(value)}" for key, value in ENVIRONMENT.items())
    return (
        f"FROM {source}\n{apt}"
        "COPY tools/ /usr/local/\n"
        + ("COPY isol8-extra.crt /usr/local/share/ca-certificates/isol8-extra.crt\n" if with_ca else "")
        + f"RUN {_sandbox_users()}"
        f" && groupadd -g {PROXY_UID} isol8proxy"
        f" && useradd -u {PROXY_UID} -g {PROXY_UID} -d /nonexistent -s /usr/sbin/nologin -M isol8proxy"
        f" && mkdir -p /sandbox /opt/isol8 && rm -rf /var/cache/apt/archives/*.deb{ca}\n"
        f"ENV {env}\n"
        f'LABEL {HASH_LABEL}="{build_hash}" isol8.managed="true"\n'
    )


def _sandbox_users() -> str:
    """Shell that adds every sandbox uid as the user `sandbox`, each with its own group of that name.

    useradd refuses a name twice, so the lines are written directly: `id` and `whoami` then say
    `sandbox` whichever uid a job runs as, and the agent finds the uids by that name.
    """
    passwd = "".join(f"sandbox:x:{uid}:{uid}::/sandbox:/bin/bash\\n" for uid in SANDBOX_UIDS)
    group = "".join(f"sandbox:x:{uid}:\\n" for uid in SANDBOX_UIDS)
    return f"printf '{passwd}' >> /etc/passwd && printf '{group}' >> /etc/group"


def _debootstrap(docker: DockerClient, progress: Progress) -> None:
    """Make `isol8:rootfs` from Debian packages: debootstrap into a folder, then import it."""
    if shutil.which("debootstrap") is None:
        raise Isol8Error(
            "No container registry answers and debootstrap is not installed. Install it "
            "(`sudo apt-get install debootstrap`) or make `docker pull debian:trixie-slim` work."
        )
    if os.geteuid() != 0:
        raise Isol8Error("Building the base image with debootstrap needs root. Run `sudo isol8 setup`.")
    with tempfile.TemporaryDirectory(prefix="isol8-rootfs-") as tmp:
        root = Path(tmp) / "root"
        progress(f"debootstrap {SUITE} from {MIRROR} (about a minute)")
        command = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(root),
            MIRROR,
        ]
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            assert proc.stdout
            tail: list[str] = []
            for line in proc.stdout:
                tail = [*tail[-9:], line.rstrip()]
                if line.startswith(("I: Retrieving", "I: Extracting", "I: Installing", "I: Configuring")):
                    progress(line.strip()[3:])
        if proc.returncode != 0:
            raise Isol8Error(f"debootstrap failed (exit code {proc.returncode}): {' | '.join(tail[-3:])}")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        archive = Path(tmp) / "rootfs.tar"
        progress("packing the root filesystem")
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(archive), "."], check=True)
        progress("importing it into Docker")
        docker.import_rootfs(archive, REPOSITORY, ROOTFS_TAG)


def build_base(docker: DockerClient, ca_bundle: Path | None, progress: Progress) -> None:
    build_hash = base_hash(ca_bundle)
    pulled = docker.try_pull("debian", "trixie-slim")
    if pulled:
        progress("using debian:trixie-slim from the registry")
        source = "debian:trixie-slim"
    else:
        progress("no container registry answers: building the Debian base with debootstrap")
        _debootstrap(docker, progress)
        source = f"{REPOSITORY}:{ROOTFS_TAG}"
    with tempfile.TemporaryFile() as context_file:
        with tarfile.open(fileobj=context_file, mode="w") as context:
            progress(f"fetching bun {tools.BUN_VERSION}, deno {tools.DENO_VERSION}, npm {tools.NPM_VERSION}")
            tools.add_to_context(context, tools.tools_for_host(), ca_bundle)
            if ca_bundle:
                _add_bytes(context, "isol8-extra.crt", ca_bundle.read_bytes())
            dockerfile = _base_dockerfile(source, pulled, build_hash, ca_bundle is not None)
            _add_bytes(context, "Dockerfile", dockerfile.encode())
        context_file.seek(0)
        base_ref = f"{REPOSITORY}:{BASE_TAG}"
        _replace(docker, base_ref, lambda: docker.build(context_file, base_ref, progress))
    if not pulled:
        docker.remove_image(f"{REPOSITORY}:{ROOTFS_TAG}")


def build_runtime(docker: DockerClient, runtime: str, build_hash: str, progress: Progress) -> None:
    context_file = io.BytesIO()
    with tarfile.open(fileobj=context_file, mode="w") as context:
        for name, data in _agent_sources().items():
            _add_bytes(context, name, data)
        _add_bytes(context, "Dockerfile", _runtime_dockerfile(runtime, build_hash).encode())
    context_file.seek(0)
    tag = f"{REPOSITORY}:{runtime}"
    _replace(docker, tag, lambda: docker.build(context_file, tag, progress))


def _replace(docker: DockerClient, tag: str, build: Callable[[], None]) -> None:
    """Build `tag`, then remove the image it replaced (no dangling images left behind)."""
    old = docker.image_id(tag)
    build()
    new = docker.image_id(tag)
    if old and old != new:
        docker.remove_image(old)  # refused while a sandbox still uses it; `isol8 cleanup --images`


def _add_bytes(context: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    context.addfile(info, io.BytesIO(data))


def ensure_images(
    docker: DockerClient,
    runtimes: list[str] | None = None,
    *,
    force: bool = False,
    refresh_base: bool = True,
    ca_bundle: Path | None = None,
    progress: Progress = lambda _: None,
) -> list[ImageStatus]:
    """Build what is missing or outdated (everything with `force`); report each image.

    With `refresh_base=False` an existing base is kept as it is (first-use builds from `isol8 run`
    must not rebuild a base that `isol8 setup` made with other options, such as a CA bundle).
    """
    docker.ping()
    if ca_bundle is not None and not ca_bundle.is_file():
        raise Isol8Error(f"CA bundle not found: {ca_bundle}. Pass an existing PEM file to --ca-bundle.")
    results = []
    want_base = base_hash(ca_bundle)
    base_ref = f"{REPOSITORY}:{BASE_TAG}"
    base_labels = docker.image_labels(base_ref)
    outdated = base_labels is not None and base_labels.get(HASH_LABEL) != want_base
    if force or base_labels is None or (outdated and refresh_base):
        progress(f"building {base_ref}")
        build_base(docker, ca_bundle, progress)
        results.append(ImageStatus(base_ref, True))
    else:
        want_base = (base_labels or {}).get(HASH_LABEL, want_base)
        results.append(ImageStatus(base_ref, False))
    for runtime in runtimes or list(RUNTIMES):
        get_runtime(runtime)
        ref = f"{REPOSITORY}:{runtime}"
        want = runtime_hash(want_base, runtime)
        labels = docker.image_labels(ref)
        if force or labels is None or labels.get(HASH_LABEL) != want:
            progress(f"building {ref}")
            build_runtime(docker, runtime, want, progress)
            results.append(ImageStatus(ref, True))
        else:
            results.append(ImageStatus(ref, False))
    return results


def image_ready(docker: DockerClient, runtime: str) -> bool:
    """True when `isol8:<runtime>` exists and carries this version's agent on the current base."""
    base = docker.image_labels(f"{REPOSITORY}:{BASE_TAG}")
    labels = docker.image_labels(f"{REPOSITORY}:{runtime}")
    if not base or labels is None:
        return False
    return labels.get(HASH_LABEL) == runtime_hash(base.get(HASH_LABEL, ""), runtime)
