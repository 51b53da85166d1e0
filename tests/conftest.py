"""Shared fixtures. Engine tests drive the real Docker daemon and the real isol8 images."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import pytest

from engine.docker import DockerClient
from engine.engine import DockerIsol8
from engine.errors import DockerUnavailable
from engine.hardening import OWNER_LABEL, owner_alive, owner_id
from engine.images import image_ready
from engine.runtimes import RUNTIMES


@pytest.fixture(scope="session")
def docker_client() -> DockerClient:
    client = DockerClient()
    try:
        client.ping()
    except DockerUnavailable as exc:
        pytest.fail(f"{exc} (run the README's test command, which starts it)")
    missing = [name for name in RUNTIMES if not image_ready(client, name)]
    if missing:
        pytest.fail(f"images missing or outdated for {', '.join(missing)}: run `isol8 setup` first")
    return client


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that reaches the daemon through the Docker fixtures must carry the `docker` marker, so
    `pytest -m "not docker"` runs everything else on a machine without Docker."""
    unmarked = [
        item.nodeid
        for item in items
        if "docker_client" in getattr(item, "fixturenames", ()) and item.get_closest_marker("docker") is None
    ]
    if unmarked:
        raise pytest.UsageError(f"tests use Docker without pytest.mark.docker: {', '.join(unmarked[:5])}")


@pytest.fixture(scope="session", autouse=True)
def no_leftover_containers() -> Iterator[None]:
    """The suite must leave no managed container behind: none of this process's, and none made since
    it started by a process that has ended (the CLI and servers the tests run). Containers of other
    live processes on the same daemon (another suite, a benchmark) are theirs, not leftovers."""
    started = time.time() - 1
    yield
    try:
        client = DockerClient()
        client.ping()
    except DockerUnavailable:
        return
    mine = owner_id()
    left = [
        container
        for container in client.managed_containers()
        if container["Labels"].get(OWNER_LABEL) == mine
        or (container["Created"] >= started and not owner_alive(container["Labels"].get(OWNER_LABEL, "")))
    ]
    assert not left, f"containers left behind: {[c['Id'][:12] for c in left]}"


@pytest.fixture
async def engine(docker_client: DockerClient) -> AsyncIterator[DockerIsol8]:
    async with DockerIsol8() as instance:
        yield instance
