"""`isol8 serve --cluster`: two servers on one cluster share sessions, with the same auth and policy;
`isol8 run --cluster` and `isol8 cluster status`."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_cli
from local_cluster import LocalCluster
from test_server_support import ServerProcess, serve

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, cluster: LocalCluster) -> Iterator[list[ServerProcess]]:
    db = tmp_path_factory.mktemp("keys") / "keys.db"
    config = {"server": {"cluster": cluster.address, "authDb": str(db)}}
    with (
        serve(tmp_path_factory.mktemp("a"), config) as a,
        serve(tmp_path_factory.mktemp("b"), {}, "--cluster", cluster.address, "--auth-db", str(db)) as b,
    ):
        yield [a, b]


def test_a_session_made_through_one_server_is_used_through_another(servers: list[ServerProcess]) -> None:
    a, b = servers
    with a.client() as first, b.client() as second:
        made = first.post(
            "/execute",
            json={"sessionId": "shared", "request": {"cmd": "echo from-a > /sandbox/a.txt", "runtime": "bash"}},
        )
        assert made.status_code == 200, made.text
        read = second.get("/file", params={"sessionId": "shared", "path": "/sandbox/a.txt"})
        assert read.status_code == 200, read.text
        assert base64.b64decode(read.json()["content"]) == b"from-a\n"
        ran = second.post("/execute", json={"sessionId": "shared", "request": {"cmd": "cat a.txt", "runtime": "bash"}})
        assert ran.json()["stdout"] == "from-a\n"
        assert second.delete("/session/shared").status_code == 200
        gone = first.get("/file", params={"sessionId": "shared", "path": "/sandbox/a.txt"})
        assert gone.status_code == 404, gone.text


def test_each_tenant_sees_only_its_own_cluster_sessions(servers: list[ServerProcess]) -> None:
    a, b = servers
    with a.client() as master:
        alice = master.post("/auth/keys", json={"name": "alice", "tenantId": "alice"}).json()["key"]
        bob = master.post("/auth/keys", json={"name": "bob", "tenantId": "bob"}).json()["key"]
    with a.client(alice) as as_alice, b.client(bob) as as_bob:
        body = {"sessionId": "mine", "request": {"cmd": "echo secret > /sandbox/s", "runtime": "bash"}}
        assert as_alice.post("/execute", json=body).status_code == 200
        # Bob names the same id on the other server: he gets no file of Alice's.
        peek = as_bob.get("/file", params={"sessionId": "mine", "path": "/sandbox/s"})
        assert peek.status_code == 404, peek.text
        assert as_bob.delete("/session/mine").status_code in (200, 404)
        with b.client(alice) as alice_on_b:
            still = alice_on_b.get("/file", params={"sessionId": "mine", "path": "/sandbox/s"})
            assert base64.b64decode(still.json()["content"]) == b"secret\n"
            assert alice_on_b.delete("/session/mine").status_code == 200


def test_auth_and_policy_hold_on_the_cluster(servers: list[ServerProcess]) -> None:
    _, b = servers
    with b.client("wrong-key") as stranger:
        assert stranger.post("/execute", json={"request": {"code": "print(1)"}}).status_code == 403
    with b.client() as master:
        refused = master.post("/execute", json={"request": {"code": "print(1)"}, "options": {"network": "host"}})
        assert refused.status_code == 403 and "network" in refused.json()["error"]
        ok = master.post("/execute", json={"request": {"code": "print(6 * 7)"}})
        assert ok.json()["stdout"] == "42\n"


def test_run_and_status_commands(cluster: LocalCluster, tmp_path: Path) -> None:
    ran = run_cli("run", "--cluster", cluster.address, "-e", "print('on the cluster')", cwd=tmp_path)
    assert (ran.returncode, ran.stdout) == (0, "on the cluster\n"), ran.stderr
    client = cluster.address.replace(":6379", ":10001")  # the head's Ray Client server
    streamed = run_cli("run", "--cluster", f"ray://{client}", "--cmd", "echo a; echo b", cwd=tmp_path)
    assert (streamed.returncode, streamed.stdout) == (0, "a\nb\n"), streamed.stderr
    failed = run_cli("run", "--cluster", cluster.address, "--cmd", "exit 7", cwd=tmp_path)
    assert failed.returncode == 7, failed.stderr
    bad = run_cli("run", "--cluster", "head;rm -rf /", "-e", "print(1)", cwd=tmp_path)
    assert bad.returncode != 0 and "not a Ray address" in bad.stderr
    status = run_cli("cluster", "status", "--cluster", cluster.address, "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    nodes = json.loads(status.stdout)
    assert len(nodes) == 3 and all(n["alive"] for n in nodes)
    assert any(p["image"] == "isol8:python" for n in nodes for p in n["pools"])


def test_audit_records_written_on_the_nodes_name_the_servers_caller(
    tmp_path_factory: pytest.TempPathFactory, cluster: LocalCluster
) -> None:
    """The caller's context does not travel over Ray by itself: each run carries it to its node."""
    log_dir = tmp_path_factory.mktemp("audit")
    db = tmp_path_factory.mktemp("audit-keys") / "keys.db"
    config = {
        "server": {"cluster": cluster.address, "authDb": str(db)},
        "audit": {"enabled": True, "logDir": str(log_dir)},
    }
    with serve(tmp_path_factory.mktemp("audited"), config) as server:
        with server.client() as master:
            created = master.post("/auth/keys", json={"name": "auditor", "tenantId": "acme"}).json()
        with server.client(created["key"]) as user:
            assert user.post("/execute", json={"request": {"cmd": "echo plain"}}).status_code == 200
            with user.stream("POST", "/execute/stream", json={"request": {"cmd": "echo streamed"}}) as reply:
                assert '"exit"' in "".join(reply.iter_text())
            in_session = {"sessionId": "audited", "request": {"cmd": "echo session"}}
            assert user.post("/execute", json=in_session).status_code == 200
            assert user.delete("/session/audited").status_code == 200
    path = log_dir / "executions.log"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 3
    assert {(r["tenantId"], r["keyId"]) for r in records} == {("acme", created["id"])}


def test_a_stateful_session_made_through_one_server_is_stateful_through_another(servers: list[ServerProcess]) -> None:
    a, b = servers
    with a.client() as first, b.client() as second:
        made = first.post(
            "/execute", json={"sessionId": "interp", "options": {"stateful": True}, "request": {"code": "x = 41"}}
        )
        assert made.status_code == 200 and made.json()["state"] == "fresh", made.text
        kept = second.post(
            "/execute", json={"sessionId": "interp", "options": {"stateful": True}, "request": {"code": "x + 1"}}
        )
        assert kept.status_code == 200, kept.text
        assert (kept.json()["state"], kept.json()["results"][0]["data"]["text/plain"]) == ("kept", "42")
        listed = second.get("/sessions").json()["sessions"]
        assert [s["stateful"] for s in listed if s["id"] == "interp"] == [True]
        assert second.post("/session/interp/reset").status_code == 200
        fresh = first.post("/execute", json={"sessionId": "interp", "request": {"code": "print('x' in globals())"}})
        assert (fresh.json()["stdout"], fresh.json()["state"]) == ("False\n", "fresh"), fresh.text
        assert first.delete("/session/interp").status_code == 200
