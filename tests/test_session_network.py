"""A filtered session's allow and deny lists changed while it lives (`PUT /session/{id}/network`,
RemoteIsol8.set_network_filter): applied by its proxy at once, and never wider than the operator's
policy. The hosts named are never resolved: the proxy decides on lists before any lookup."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from test_server_support import ServerProcess, serve

from engine import ExecutionRequest, Isol8Options, NetworkFilter
from engine.errors import Isol8Error, PolicyRefused, SessionNotFound
from engine.remote import RemoteIsol8

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_client")]

CONFIG = {
    "defaults": {"network": "filtered"},
    "network": {"blacklist": [r"^evil\.example$"]},
    "server": {"allowedHosts": []},
}
PROBE = """
import urllib.request, urllib.error
for host in HOSTS:
    try:
        urllib.request.urlopen(f"http://{host}/", timeout=5)
    except urllib.error.HTTPError as e:
        print(host, e.code, e.read().decode().strip())
    except OSError as e:
        print(host, "error")
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("session-network")
    with serve(folder, CONFIG, "--auth-db", str(folder / "keys.db")) as running:
        yield running


@pytest.fixture
async def session(server: ServerProcess) -> AsyncIterator[RemoteIsol8]:
    async with RemoteIsol8(server.url, server.key, "net-1", Isol8Options(log_network=True)) as remote:
        yield remote


async def probe(remote: RemoteIsol8, *hosts: str) -> str:
    result = await remote.execute(ExecutionRequest(code=f"HOSTS = {list(hosts)!r}\n{PROBE}"))
    return result.stdout


async def test_new_lists_apply_to_the_live_session(session: RemoteIsol8) -> None:
    first = await probe(session, "evil.example", "b.example")
    assert "evil.example 403 isol8: request to evil.example blocked by network filter (blacklist:" in first
    assert "b.example 403" not in first  # not blocked by a list (it cannot resolve here)
    await session.set_network_filter(NetworkFilter(whitelist=[r"^a\.example$"]))
    after = await probe(session, "b.example")
    assert "b.example 403 isol8: request to b.example blocked by network filter (not in whitelist)" in after


async def test_a_client_cannot_drop_the_operators_blacklist(session: RemoteIsol8) -> None:
    await probe(session, "x.example")  # the session exists
    await session.set_network_filter(NetworkFilter(blacklist=[], whitelist=[]))
    assert "evil.example 403" in await probe(session, "evil.example")


async def test_lists_beyond_the_policy_are_refused(server: ServerProcess, session: RemoteIsol8) -> None:
    await probe(session, "x.example")
    with pytest.raises(PolicyRefused, match="whitelistReachesPrivate true is not allowed"):
        await session.set_network_filter(
            NetworkFilter(whitelist=["^host.docker.internal$"], whitelist_reaches_private=True)
        )
    with pytest.raises(PolicyRefused, match=r"networkFilter\.ports entry 22 is not allowed"):
        await session.set_network_filter(NetworkFilter(ports=[22]))
    bad = httpx.put(f"{server.url}/session/net-1/network", json={"whitelist": ["("]}, headers=server.headers)
    assert bad.status_code == 400


async def test_an_unknown_or_foreign_session_is_not_found(server: ServerProcess) -> None:
    async with RemoteIsol8(server.url, server.key, session_id="nobody-here") as remote:
        with pytest.raises(SessionNotFound):
            await remote.set_network_filter(NetworkFilter(whitelist=["^a$"]))
    async with RemoteIsol8(server.url, server.key) as stateless:
        with pytest.raises(Isol8Error, match="requires a sessionId"):
            await stateless.set_network_filter(NetworkFilter())


async def test_another_tenant_cannot_change_a_sessions_lists(server: ServerProcess, session: RemoteIsol8) -> None:
    await probe(session, "x.example")  # the default tenant's session exists
    other = httpx.post(f"{server.url}/auth/keys", json={"name": "other", "tenantId": "other"}, headers=server.headers)
    key = other.json()["key"]
    async with RemoteIsol8(server.url, key, "net-1") as intruder:
        with pytest.raises(SessionNotFound):
            await intruder.set_network_filter(NetworkFilter(whitelist=[r"^only\.example$"]))
    assert "not in whitelist" not in await probe(session, "x.example")  # the owner's lists are as they were
