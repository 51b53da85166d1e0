"""The reference's own clients, byte for byte: its TypeScript client and CLI send every field of
`ExecutionRequest` and every key of its options with their default values (upstream-isol8.md §2.3,
§2.4, §2.8, §6, §7.2). Each body must get a result, never a 400."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server_support import ServerProcess, serve, sse_events
from websockets.asyncio.client import connect

from engine.models import DEFAULT_BLOCKED_CODE_HOSTS

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_client")]

# `isol8 run --host` builds these from the reference's config defaults (§7.2) on every request.
REFERENCE_OPTIONS: dict[str, Any] = {
    "mode": "ephemeral",
    "network": "none",
    "networkFilter": {"whitelist": [], "blacklist": []},
    "cpuLimit": 1.0,
    "memoryLimit": "512m",
    "pidsLimit": 64,
    "readonlyRootFs": True,
    "maxOutputSize": 1048576,
    "secrets": {},
    "timeoutMs": 30000,
    "sandboxSize": "512m",
    "tmpSize": "256m",
    "debug": False,
    "persist": False,
    "logNetwork": False,
    "security": {"seccomp": "strict"},
    "poolStrategy": "fast",
    "poolSize": {"clean": 1, "dirty": 1},
    "audit": {
        "enabled": False,
        "destination": "filesystem",
        "logDir": "./.isol8_audit",
        "trackResources": True,
        "retentionDays": 90,
        "includeCode": False,
        "includeOutput": False,
    },
    "remoteCode": {
        "enabled": False,
        "allowedSchemes": ["https"],
        "allowedHosts": [],
        "blockedHosts": list(DEFAULT_BLOCKED_CODE_HOSTS),
        "maxCodeSize": 10485760,
        "fetchTimeoutMs": 30000,
        "requireHash": False,
        "enableCache": True,
        "cacheTtl": 3600,
    },
}

# Every ExecutionRequest field the reference knows (one source: `code`), as its CLI fills them.
REFERENCE_REQUEST: dict[str, Any] = {
    "code": "import sys; print('ran', sys.argv[0].endswith('.py')); print(open('/sandbox/in.txt').read())",
    "runtime": "python",
    "timeoutMs": 10000,
    "env": {"GREETING": "hi"},
    "fileExtension": ".py",
    "stdin": "",
    "files": {"/sandbox/in.txt": "from files"},
    "outputPaths": [],
    "installPackages": [],
    "metadata": {"userId": "u-1", "source": "reference-cli"},
    "setupScript": "true",
    "workdir": "/sandbox",
    "allowInsecureCodeUrl": False,
    "agentFlags": "",
}
EXPECTED_STDOUT = "ran True\nfrom files\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[ServerProcess]:
    with serve(Path(tmp_path_factory.mktemp("reference-wire"))) as running:
        yield running


def test_execute_takes_the_reference_clients_whole_body(server: ServerProcess) -> None:
    with server.client() as http:
        reply = http.post("/execute", json={"request": REFERENCE_REQUEST, "options": REFERENCE_OPTIONS})
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert (result["exitCode"], result["stdout"]) == (0, EXPECTED_STDOUT)


def test_a_session_takes_it_too(server: ServerProcess) -> None:
    body = {"request": REFERENCE_REQUEST, "options": {**REFERENCE_OPTIONS, "mode": "persistent"}, "sessionId": "ref-s"}
    with server.client() as http:
        first = http.post("/execute", json=body)
        assert first.status_code == 200, first.text
        assert first.json()["stdout"] == EXPECTED_STDOUT
        assert http.delete("/session/ref-s").status_code == 200


def test_sse_takes_the_reference_clients_whole_body(server: ServerProcess) -> None:
    with server.client() as http:
        reply = http.post("/execute/stream", json={"request": REFERENCE_REQUEST, "options": REFERENCE_OPTIONS})
    assert reply.status_code == 200, reply.text
    events = sse_events(reply.text)
    assert "".join(e["data"] for e in events if e["type"] == "stdout") == EXPECTED_STDOUT
    assert (events[-1]["type"], events[-1]["data"]) == ("exit", "0")


async def test_websocket_takes_the_reference_clients_first_frame(server: ServerProcess) -> None:
    frame = {"type": "execute", "request": REFERENCE_REQUEST, "options": REFERENCE_OPTIONS}
    async with connect(server.ws_url, additional_headers=server.headers) as ws:
        await ws.send(json.dumps(frame))
        events = [json.loads(message) async for message in ws]
    assert "".join(e["data"] for e in events if e["type"] == "stdout") == EXPECTED_STDOUT
    assert (events[-1]["type"], events[-1]["data"]) == ("exit", "0")


def test_code_url_with_remote_code_off_is_the_references_refusal(server: ServerProcess) -> None:
    request = {**{k: v for k, v in REFERENCE_REQUEST.items() if k != "code"}, "codeUrl": "https://example.com/x.py"}
    with server.client() as http:
        reply = http.post("/execute", json={"request": request, "options": REFERENCE_OPTIONS})
    assert (reply.status_code, reply.json()) == (
        403,
        {"error": "Remote code fetching is disabled. Set remoteCode.enabled=true to allow it."},
    )
    assert reply.headers["Isol8-Error"] == "policy_refused"


def test_health_answers_the_reference_clients_start(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200
