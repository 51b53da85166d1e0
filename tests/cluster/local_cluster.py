"""A Ray cluster of several nodes on this one machine, for the cluster tests and the benchmark.

Each node is a `ray start --block` process of its own (its raylet, and the head's GCS, are its
children), advertising 127.0.0.1 and carrying the `isol8` resource plus `isol8-node-<n>`. Run it
inside a private network namespace with only `lo` up (`in_private_network()`): Ray otherwise binds
and advertises the machine's own address. It is stopped by the pids it started, never with
`ray stop` (which stops every Ray process on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

from engine.cluster import RESOURCE

HEAD_PORT = 6379
OBJECT_STORE_BYTES = 80 << 20  # Ray's minimum is 75 MiB
# Node failure is detected by the GCS's health checks: tighter than Ray's default so a killed node
# is declared dead within about a second.
FAST_FAILURE_ENV = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "2"}


def in_private_network() -> bool:
    """True when the only network interface is loopback (a namespace made by `unshare -n`)."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


class LocalCluster:
    """`with LocalCluster(nodes=3) as cluster: ray.init(cluster.address)`; `kill_raylet(n)` kills one."""

    def __init__(self, nodes: int = 3) -> None:
        self.nodes = nodes
        self.address = f"127.0.0.1:{HEAD_PORT}"
        self._temp = Path(tempfile.mkdtemp(prefix="i8ray-", dir="/tmp"))
        self._procs: list[subprocess.Popen[bytes]] = []
        self._ray = str(Path(sys.executable).with_name("ray"))

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()  # a node that did not come up must not leave the others running
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        if not in_private_network():
            raise RuntimeError("LocalCluster runs only in a private network namespace (unshare -n, lo up)")
        env = {**os.environ, **FAST_FAILURE_ENV, "RAY_USAGE_STATS_ENABLED": "0"}
        common = [
            "--block",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats",
        ]
        for n in range(self.nodes):
            resources = json.dumps({RESOURCE: 1, f"{RESOURCE}-node-{n}": 1})
            role = (
                ["--head", f"--port={HEAD_PORT}", "--include-dashboard=false", f"--temp-dir={self._temp}"]
                if n == 0
                else [f"--address={self.address}"]
            )
            log = open(self._temp / f"node-{n}.log", "wb")  # noqa: SIM115 - the child keeps it
            self._procs.append(
                subprocess.Popen(
                    [self._ray, "start", *role, *common, f"--resources={resources}"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
            self._wait_for_nodes(n + 1)  # one at a time: a node that takes over 30 s to register fails

    def _wait_for_nodes(self, count: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for n, proc in enumerate(self._procs):
                if proc.poll() is not None:
                    log = (self._temp / f"node-{n}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"ray node {n} exited ({proc.returncode}):\n{log}")
            logs = [(self._temp / f"node-{n}.log").read_bytes() for n in range(len(self._procs))]
            if sum(b"Ray runtime started." in log for log in logs) >= count:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the local Ray cluster did not reach {count} nodes in {timeout_s:.0f}s")

    def raylet_pids(self) -> dict[int, int]:
        """Node number -> the pid of its raylet (children of the `ray start` processes we started)."""
        import psutil

        pids: dict[int, int] = {}
        for n, proc in enumerate(self._procs):
            try:
                children = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for child in children:
                try:
                    if child.name() == "raylet":
                        pids[n] = child.pid
                except psutil.NoSuchProcess:
                    pass
        return pids

    def node_of_pid(self, pid: int) -> int | None:
        """The number of the node whose process tree holds `pid` (None: not one of ours)."""
        import psutil

        roots = {proc.pid: n for n, proc in enumerate(self._procs)}
        with contextlib.suppress(psutil.NoSuchProcess):
            for process in [psutil.Process(pid), *psutil.Process(pid).parents()]:
                if process.pid in roots:
                    return roots[process.pid]
        return None

    def kill_raylet(self, node: int) -> None:
        os.kill(self.raylet_pids()[node], signal.SIGKILL)

    def stop(self) -> None:
        """End every process we started, and their descendants, by pid (workers last)."""
        import psutil

        tree: list[psutil.Process] = []
        for proc in self._procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                tree += [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for proc in reversed(self._procs):  # workers first, the head (GCS) last
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=15)
        for leftover in alive:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):  # it ended meanwhile
                leftover.kill()
        psutil.wait_procs(alive, timeout=5)
        shutil.rmtree(self._temp, ignore_errors=True)
