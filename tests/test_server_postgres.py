"""The API-key store on a real Postgres: a throwaway cluster in a temporary directory, on loopback.

Skipped where PostgreSQL's server binaries (initdb, pg_ctl) or the `postgres` user are missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_server_support import free_port, serve

from engine.server.auth import PostgresKeyStore, digest, open_store

pytestmark = pytest.mark.docker

INITDB = shutil.which("initdb") or "/usr/lib/postgresql/15/bin/initdb"
PG_CTL = shutil.which("pg_ctl") or "/usr/lib/postgresql/15/bin/pg_ctl"


def _as_postgres(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, check=True)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user")
    if not (Path(INITDB).exists() and Path(PG_CTL).exists() and shutil.which("runuser") and os.geteuid() == 0):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) or runuser not available")
    # Not under pytest's tmp dirs: they are private to root, and postgres refuses to run as root.
    root = Path(tempfile.mkdtemp(prefix="isol8-pg-"))
    data = root / "data"
    data.mkdir()
    for path in (root, data):
        os.chown(path, user.pw_uid, user.pw_gid)
    port = free_port()
    _as_postgres(INITDB, "-D", str(data), "-A", "trust", "-U", "postgres")
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    _as_postgres(PG_CTL, "-D", str(data), "-o", options, "-l", str(data / "log"), "-w", "start")
    try:
        yield f"postgresql://postgres:unused-password@127.0.0.1:{port}/postgres"
    finally:
        _as_postgres(PG_CTL, "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_store_keeps_hashes_and_expires_keys(postgres_url: str) -> None:
    store = open_store(postgres_url)
    assert isinstance(store, PostgresKeyStore)
    created = store.create_key("pg", "tenant-pg", ttl_ms=60_000)
    info = store.validate(created.key)
    assert info is not None and info.tenant_id == "tenant-pg"
    rows = store._run("SELECT key_hash FROM api_keys WHERE id = ?", (created.id,))
    assert rows == [(digest(created.key),)]
    assert [k.id for k in store.list_keys("tenant-pg")] == [created.id]
    assert store.revoke_key(created.id)
    assert store.validate(created.key) is None
    assert store.purge() >= 1
    store.close()


def test_server_with_a_postgres_auth_db(postgres_url: str, tmp_path: Path, docker_client: Any) -> None:
    with serve(tmp_path, {}, "--auth-db", postgres_url) as srv, srv.client() as master:
        assert "       Auth DB: postgresql://postgres:***@127.0.0.1:" in srv.stderr()  # never the password
        created = master.post("/auth/keys", json={"name": "pg-user"})
        assert created.status_code == 201
        with srv.client(key=created.json()["key"]) as user:
            reply = user.post("/execute", json={"request": {"code": "print('pg')"}})
            assert reply.json()["stdout"] == "pg\n"
        assert master.delete(f"/auth/keys/{created.json()['id']}").json() == {"ok": True, "id": created.json()["id"]}
        with srv.client(key=created.json()["key"]) as revoked:
            assert revoked.get("/sessions").status_code == 403
