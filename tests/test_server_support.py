"""Shared by the server and remote tests: start a real `isol8 serve` on a free loopback port.

No tests live here (pytest collects nothing from it); test_server*.py and test_remote*.py import it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from helpers import ISOL8

from engine.docker import DockerClient

MASTER_KEY = "test-master-key-0123456789"
START_TIMEOUT_S = 120.0  # a first start may rebuild outdated runtime images


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A running `isol8 serve` subprocess."""

    url: str
    key: str
    proc: subprocess.Popen[str]
    stderr_path: Path
    session_ids: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/execute/ws"

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, **kwargs)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self) -> int:
        """SIGTERM, as a service manager would; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def wait_healthy(url: str, proc: subprocess.Popen[str], stderr_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"isol8 serve exited {proc.returncode}: {stderr_path.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"isol8 serve did not answer /health: {stderr_path.read_text()}")


@contextlib.contextmanager
def serve(
    workdir: Path,
    config: dict[str, Any] | None = None,
    *args: str,
    key: str = MASTER_KEY,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Iterator[ServerProcess]:
    """`isol8 serve` with `config` as ./isol8.config.json (so no user config applies), stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "isol8.config.json").write_text(json.dumps(config or {}))
    port = port or free_port()
    stderr_path = workdir / f"serve-{port}.err"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [ISOL8, "serve", "--port", str(port), "--key", key, *args],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", key, proc, stderr_path)
    try:
        wait_healthy(server.url, proc, stderr_path)
        yield server
    finally:
        code = server.stop()
        assert code == 0, server.stderr()


def running_container(marker: str, timeout: float = 15.0) -> str:
    """The id of the managed container whose processes include `marker` (waits for it to appear)."""
    docker = DockerClient()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for container in docker.managed_containers():
            with contextlib.suppress(Exception):
                top = docker.api.top(container["Id"])
                if any(marker in " ".join(proc) for proc in top.get("Processes") or []):
                    return str(container["Id"])
        time.sleep(0.1)
    raise AssertionError(f"no managed container runs {marker!r}")


def managed_ids() -> set[str]:
    """`docker ps --filter label=isol8.managed=true`, as ids."""
    out = subprocess.run(
        ["docker", "ps", "--no-trunc", "--filter", "label=isol8.managed=true", "--format", "{{.ID}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def sse_events(raw: str) -> list[dict[str, Any]]:
    """Frames `data: <json>\\n\\n`, strictly: anything else in the body fails the test."""
    assert raw.endswith("\n\n"), raw
    frames = raw[:-2].split("\n\n")
    assert all(frame.startswith("data: ") and "\n" not in frame for frame in frames), raw
    return [json.loads(frame.removeprefix("data: ")) for frame in frames]


@contextlib.contextmanager
def in_process(app: FastAPI, ws: str = "auto") -> Iterator[str]:
    """A real uvicorn in a thread; `ws="none"` is a server (or proxy) without WebSocket support."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, ws=ws, log_level="warning", lifespan="on")  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=60, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


PNG_SOURCE = """
import struct, zlib

def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

PNG = b"\\x89PNG\\r\\n\\x1a\\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)) + _chunk(
    b"IDAT", zlib.compress(b"\\x00\\xff\\x00\\x00")
) + _chunk(b"IEND", b"")
"""
"""A valid 1x1 PNG built with zlib and struct (no imaging library in the sandbox), as cell source."""
PNG_CELL = PNG_SOURCE + "\nclass Dot:\n    def _repr_png_(self):\n        return PNG\n"
"""A stateful python cell defining `Dot`, an object the kernel displays as that PNG."""
_namespace: dict[str, Any] = {}
exec(PNG_SOURCE, _namespace)  # the same bytes here as in the sandbox
PNG: bytes = _namespace["PNG"]
