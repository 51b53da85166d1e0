"""Audit records of real executions: plain, streaming, failing, timed out, abandoned, concurrent, and
run by the server (with the caller's tenant and key)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server_support import serve
from websockets.asyncio.client import connect

from engine.audit import acting_for
from engine.engine import ABANDONED, DockerIsol8
from engine.errors import SetupFailed
from engine.models import AuditOptions, ExecutionRequest, Isol8Options

pytestmark = pytest.mark.docker


def _records(log_dir: Path) -> list[dict[str, Any]]:
    path = log_dir / "executions.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _options(log_dir: Path, **audit: Any) -> Isol8Options:
    return Isol8Options(audit=AuditOptions(enabled=True, log_dir=str(log_dir), **audit))


async def test_a_plain_execution_is_recorded_with_the_results_id(docker_client: object, tmp_path: Path) -> None:
    code = "print('hi')"
    async with DockerIsol8(_options(tmp_path)) as engine:
        result = await engine.execute(ExecutionRequest(code=code, metadata={"userId": "alice", "job": "7"}))
    [record] = _records(tmp_path)
    assert record["executionId"] == result.execution_id
    assert record["userId"] == "alice" and record["metadata"] == {"userId": "alice", "job": "7"}
    assert record["codeHash"] == hashlib.sha256(code.encode()).hexdigest()
    assert record["runtime"] == "python" and record["containerId"] == result.container_id
    assert record["exitCode"] == 0 and record["durationMs"] == result.duration_ms
    assert record["timestamp"].endswith("Z") and record["timestamp"] <= result.timestamp
    assert not record["timedOut"] and not record["oomKilled"] and "resourceUsage" in record
    assert not {"code", "stdout", "stderr", "tenantId", "keyId", "error"} & set(record)


async def test_a_streaming_execution_is_recorded(docker_client: object, tmp_path: Path) -> None:
    async with DockerIsol8(_options(tmp_path, include_output=True)) as engine:
        events = [
            event async for event in engine.execute_stream(ExecutionRequest(cmd="echo out; echo err >&2; exit 3"))
        ]
    assert events[-1].type == "exit"
    [record] = _records(tmp_path)
    assert record["exitCode"] == 3 and record["stdout"] == "out\n" and record["stderr"] == "err\n"
    assert record["codeHash"] == hashlib.sha256(b"echo out; echo err >&2; exit 3").hexdigest()


async def test_a_failing_setup_script_is_recorded(docker_client: object, tmp_path: Path) -> None:
    async with DockerIsol8(_options(tmp_path)) as engine:
        with pytest.raises(SetupFailed):
            await engine.execute(ExecutionRequest(code="print(1)", setup_script="echo no >&2; exit 1"))
    [record] = _records(tmp_path)
    assert record["exitCode"] == 1 and record["phase"] == "setup"
    assert record["error"] == "Setup script failed (exit code 1)"


async def test_a_timed_out_execution_is_recorded(docker_client: object, tmp_path: Path) -> None:
    async with DockerIsol8(_options(tmp_path)) as engine:
        result = await engine.execute(ExecutionRequest(cmd="sleep 30", timeout_ms=1000))
    [record] = _records(tmp_path)
    assert result.timed_out and record["timedOut"] is True and record["exitCode"] == result.exit_code


async def test_an_abandoned_stream_and_a_refused_request_are_recorded(docker_client: object, tmp_path: Path) -> None:
    async with DockerIsol8(_options(tmp_path)) as engine:
        stream = engine.execute_stream(ExecutionRequest(cmd="echo started; sleep 30"))
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                assert event.data == "started\n"
                break
        with pytest.raises(Exception, match="Installing packages needs network access"):
            await engine.execute(ExecutionRequest(code="1", install_packages=["requests"]))
    abandoned, refused = _records(tmp_path)
    assert abandoned["error"] == ABANDONED and "exitCode" not in abandoned
    assert "Installing packages needs network access" in refused["error"] and "containerId" not in refused


async def test_secrets_are_masked_in_recorded_code_and_output(docker_client: object, tmp_path: Path) -> None:
    options = _options(tmp_path, include_code=True, include_output=True).model_copy(
        update={"secrets": {"ENGINE_TOKEN": "engine-s3cret"}}
    )
    code = "import os; print('req-s3cret', os.environ['ENGINE_TOKEN'])"
    async with DockerIsol8(options) as engine:
        await engine.execute(ExecutionRequest(code=code, secrets={"REQ": "req-s3cret"}, setup_script="echo req-s3cret"))
    text = (tmp_path / "executions.log").read_text()
    assert "s3cret" not in text
    [record] = _records(tmp_path)
    assert record["code"] == "import os; print('***', os.environ['ENGINE_TOKEN'])"
    assert record["setupScript"] == "echo ***" and record["stdout"] == "***\n*** ***\n"  # setup output first


async def test_twenty_concurrent_executions_give_twenty_whole_lines(docker_client: object, tmp_path: Path) -> None:
    options = _options(tmp_path, include_output=True).model_copy(update={"max_concurrent": 20})
    code = "print('{n}' * 100000)"
    async with DockerIsol8(options) as engine:
        results = await asyncio.gather(
            *(engine.execute(ExecutionRequest(code=code.format(n=n % 10))) for n in range(20))
        )
    records = {record["executionId"]: record for record in _records(tmp_path)}
    assert set(records) == {result.execution_id for result in results}
    for result in results:
        assert records[result.execution_id]["stdout"] == result.stdout and len(result.stdout) == 100_001


async def test_the_caller_is_recorded_for_the_call_it_started(docker_client: object, tmp_path: Path) -> None:
    async with DockerIsol8(_options(tmp_path)) as engine:
        with acting_for("acme", "key-1"):
            stream = engine.execute_stream(ExecutionRequest(cmd="true"))
        [_ async for _ in stream]  # run outside the block: the caller was taken when the call was made
        await engine.execute(ExecutionRequest(cmd="true"))
    tenant, anonymous = _records(tmp_path)
    assert (tenant["tenantId"], tenant["keyId"]) == ("acme", "key-1")
    assert "tenantId" not in anonymous and "keyId" not in anonymous


async def test_server_records_carry_tenant_and_key_on_every_route(docker_client: object, tmp_path: Path) -> None:
    log_dir = tmp_path / "audit"
    # A client's options.audit is accepted and ignored: the operator's config decides.
    options = {"audit": {"enabled": False, "logDir": str(tmp_path / "elsewhere")}}
    config = {"audit": {"enabled": True, "logDir": str(log_dir)}}
    with serve(tmp_path / "srv", config, "--auth-db", str(tmp_path / "keys.db")) as srv, srv.client() as master:
        created = master.post("/auth/keys", json={"name": "user", "tenantId": "acme"}).json()
        with srv.client(created["key"]) as user:
            body = {"request": {"code": "print(1)", "metadata": {"userId": "bob"}}, "options": options}
            result = user.post("/execute", json=body).json()
            with user.stream("POST", "/execute/stream", json={"request": {"cmd": "echo sse"}}) as reply:
                assert '"exit"' in "".join(reply.iter_text())

        async with connect(srv.ws_url, additional_headers=srv.headers) as ws:
            await ws.send(json.dumps({"type": "execute", "request": {"cmd": "echo ws"}}))
            async for _ in ws:
                pass
        with contextlib.suppress(httpx.HTTPError):
            master.post("/execute", json={"request": {"cmd": "true"}, "sessionId": "s1"})
    records = _records(log_dir)
    assert not (tmp_path / "elsewhere").exists()
    by_hash = {record["codeHash"]: record for record in records}
    plain = by_hash[hashlib.sha256(b"print(1)").hexdigest()]
    assert plain["executionId"] == result["executionId"] and plain["userId"] == "bob"
    assert (plain["tenantId"], plain["keyId"]) == ("acme", created["id"])
    sse = by_hash[hashlib.sha256(b"echo sse").hexdigest()]
    assert (sse["tenantId"], sse["keyId"]) == ("acme", created["id"])
    socket = by_hash[hashlib.sha256(b"echo ws").hexdigest()]
    session = by_hash[hashlib.sha256(b"true").hexdigest()]
    assert (socket["tenantId"], socket["keyId"]) == (session["tenantId"], session["keyId"]) == ("default", "master")
    assert len(records) == 4
