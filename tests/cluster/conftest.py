"""A real three-node Ray cluster on this machine, over loopback, for the cluster backend's tests.

Run them inside a private network namespace with only `lo` up (.ci/test.sh does):

    unshare -n sh -c 'ip link set lo up && exec ./t.sh tests/cluster'

Elsewhere they are skipped: Ray would bind and advertise the machine's own address.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from local_cluster import LocalCluster, in_private_network

from engine.docker import DockerClient
from engine.hardening import OWNER_LABEL, owner_alive

HOW_TO_RUN = "needs a private network namespace: unshare -n sh -c 'ip link set lo up && exec ./t.sh tests/cluster'"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason=HOW_TO_RUN)
    for item in items:
        if "tests/cluster/" in str(item.path) and not in_private_network():
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster(docker_client: DockerClient) -> Iterator[LocalCluster]:
    ray = pytest.importorskip("ray", reason="pip install 'isol8[ray]'")
    started = time.time() - 1
    with LocalCluster(nodes=3) as local:
        ray.init(address=local.address, namespace="isol8", log_to_driver=False, logging_level="warning")
        try:
            assert wait_for(lambda: len(node_numbers()) == 3, 60), "the three nodes did not register"
            yield local
        finally:
            ray.shutdown()
    # The node engines died with the cluster: their containers go by themselves.
    assert wait_for(lambda: not orphans(docker_client, started), 30), orphans(docker_client, started)


def node_numbers() -> dict[str, int]:
    """Alive node id -> its number in the LocalCluster (from its `isol8-node-<n>` resource)."""
    import ray

    numbers: dict[str, int] = {}
    for node in ray.nodes():
        for name in node["Resources"] if node["Alive"] else ():
            if name.startswith("isol8-node-"):
                numbers[node["NodeID"]] = int(name.rsplit("-", 1)[1])
    return numbers


def orphans(client: DockerClient, since: float) -> list[dict[str, Any]]:
    """Managed containers made since `since` whose owner process has ended."""
    return [
        c
        for c in client.managed_containers()
        if c["Created"] >= since and not owner_alive(c["Labels"].get(OWNER_LABEL, ""))
    ]


def wait_for(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False
