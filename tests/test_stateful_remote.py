"""Stateful sessions through `isol8 serve`: the REST routes, SSE and the WebSocket, RemoteIsol8 and the
`isol8 run --stateful` / `isol8 session` commands, on the real Docker daemon.

A stateful session's code runs on one python interpreter that keeps its variables; results come back
as MIME bundles (`results`, `result` events) and the interpreter's `state` with each run. The
statefulness of a session is fixed when it is created, and a session is its tenant's only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import run_cli
from test_server_support import PNG, PNG_CELL, ServerProcess, serve, sse_events
from websockets.asyncio.client import connect

from engine import ExecutionRequest, Isol8Options
from engine.errors import Isol8Error, NotStateful, SessionNotFound
from engine.models import ExecutionResult
from engine.remote import RemoteIsol8

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_client")]

STATEFUL = {"stateful": True}
OPTIONS = Isol8Options(mode="persistent", stateful=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("stateful")
    with serve(folder, {}, "--auth-db", str(folder / "keys.db")) as running:
        yield running


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def execute(http: httpx.Client, code: str, **body: Any) -> dict[str, Any]:
    reply = http.post("/execute", json={"request": {"code": code}, **body})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def main_text(result: dict[str, Any]) -> str:
    [main] = [item for item in result["results"] if item["isMainResult"]]
    return str(main["data"]["text/plain"])


def other_tenants_key(server: ServerProcess) -> str:
    reply = httpx.post(f"{server.url}/auth/keys", json={"name": "other", "tenantId": "other"}, headers=server.headers)
    assert reply.status_code == 201, reply.text
    return str(reply.json()["key"])


# --- REST -------------------------------------------------------------------------------------------------
def test_variables_persist_across_executes_and_come_back_as_results(http: httpx.Client) -> None:
    sid = "kernel-http"
    first = execute(http, "x = 41", options=STATEFUL, sessionId=sid)
    assert (first["exitCode"], first["state"], first.get("results") or []) == (0, "fresh", [])
    second = execute(http, "x + 1", sessionId=sid)  # stateful left out: the session is used as it is
    assert (second["state"], main_text(second)) == ("kept", "42")
    assert second["stdout"] == ""  # the value is a result, not output
    listed = {s["id"]: s for s in http.get("/sessions").json()["sessions"]}
    assert listed[sid]["stateful"] is True
    http.delete(f"/session/{sid}")


def test_reset_over_http_ends_the_variables_and_keeps_the_files(http: httpx.Client) -> None:
    sid = "kernel-reset"
    execute(http, "x = 1\nopen('/sandbox/kept.txt', 'w').write('file')", options=STATEFUL, sessionId=sid)
    assert http.post(f"/session/{sid}/reset").json() == {"ok": True}
    after = execute(http, "print(open('/sandbox/kept.txt').read())\nx", sessionId=sid)
    assert after["stdout"] == "file\n"
    assert "NameError" in after["stderr"] and after["state"] == "fresh"
    http.delete(f"/session/{sid}")


def test_reset_of_an_unknown_or_plain_session_is_refused(http: httpx.Client) -> None:
    unknown = http.post("/session/nobody-here/reset")
    assert (unknown.status_code, unknown.json()) == (404, {"error": "Session not found"})
    sid = "kernel-plain"
    plain = execute(http, "x = 1", sessionId=sid)
    assert "state" not in plain and "results" not in plain  # not a stateful session: neither is there
    refused = http.post(f"/session/{sid}/reset")
    assert (refused.status_code, refused.headers["Isol8-Error"]) == (400, "not_stateful")
    assert refused.json()["error"].startswith("This session is not stateful")
    http.delete(f"/session/{sid}")


def test_stateful_without_a_session_is_refused_on_every_route(http: httpx.Client, server: ServerProcess) -> None:
    body = {"request": {"code": "1"}, "options": STATEFUL}
    for route in ("/execute", "/execute/stream"):
        reply = http.post(route, json=body)
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error.startswith("stateful needs a sessionId") and "\n" not in error
    empty = http.post("/execute", json={**body, "sessionId": ""})  # "" is "no session" for reference clients
    assert empty.status_code == 400 and "sessionId" in empty.json()["error"]
    not_a_flag = http.post("/execute", json={**body, "options": {"stateful": 1}, "sessionId": "kernel-flag"})
    assert not_a_flag.status_code == 400 and "stateful" in not_a_flag.json()["error"]

    async def over_ws() -> list[dict[str, Any]]:
        async with connect(server.ws_url, additional_headers=server.headers) as ws:
            await ws.send(json.dumps({"type": "execute", **body}))
            return [json.loads(m) async for m in ws]

    [event] = asyncio.run(over_ws())
    assert event["type"] == "error" and event["data"].startswith("stateful needs a sessionId")


def test_statefulness_is_fixed_when_the_session_is_created(http: httpx.Client) -> None:
    execute(http, "y = 1", sessionId="kernel-made-plain")
    became = http.post(
        "/execute", json={"request": {"code": "y"}, "options": STATEFUL, "sessionId": "kernel-made-plain"}
    )
    assert (became.status_code, became.headers["Isol8-Error"]) == (400, "not_stateful")
    assert became.json()["error"].startswith("This session was created without stateful")
    execute(http, "y = 2", options=STATEFUL, sessionId="kernel-made-stateful")
    dropped = http.post(
        "/execute",
        json={"request": {"code": "y"}, "options": {"stateful": False}, "sessionId": "kernel-made-stateful"},
    )
    assert dropped.status_code == 400 and dropped.json()["error"].startswith("This session is stateful")
    assert main_text(execute(http, "y", sessionId="kernel-made-stateful")) == "2"  # both still work as made
    assert execute(http, "print(1)", sessionId="kernel-made-plain")["stdout"] == "1\n"
    for sid in ("kernel-made-plain", "kernel-made-stateful"):
        http.delete(f"/session/{sid}")


def test_sse_and_websocket_carry_result_events_and_the_state(http: httpx.Client, server: ServerProcess) -> None:
    sid = "kernel-stream"
    code = "display('shown')\nprint('out')\n6 * 7"
    body = {"request": {"code": code}, "options": STATEFUL, "sessionId": sid}
    sse = sse_events(http.post("/execute/stream", json=body).text)

    async def over_ws() -> list[dict[str, Any]]:
        async with connect(server.ws_url, additional_headers=server.headers) as ws:
            await ws.send(json.dumps({"type": "execute", **body}))
            return [json.loads(m) async for m in ws]

    ws = asyncio.run(over_ws())
    for events, state in ((sse, "fresh"), (ws, "kept")):
        results = [e for e in events if e["type"] == "result"]
        assert [(e["result"]["data"]["text/plain"], e["result"]["isMainResult"]) for e in results] == [
            ("'shown'", False),
            ("42", True),
        ]
        assert [e["data"] for e in results] == ["'shown'", "42"]  # `data` is the result's text
        assert "".join(e["data"] for e in events if e["type"] == "stdout") == "out\n"
        assert events[-1]["type"] == "exit" and events[-1]["state"] == state
    http.delete(f"/session/{sid}")


# --- RemoteIsol8 ----------------------------------------------------------------------------------------------
async def test_remote_keeps_state_streams_an_image_and_resets(server: ServerProcess) -> None:
    async with RemoteIsol8(server.url, server.key, "kernel-remote", OPTIONS) as remote:
        await remote.execute(ExecutionRequest(code="x = 41"))
        result = await remote.execute(ExecutionRequest(code="x + 1"))
        assert result.state == "kept"
        assert [(r.text(), r.is_main_result) for r in result.results or []] == [("42", True)]
        events = [e async for e in remote.execute_stream(ExecutionRequest(code=PNG_CELL + "\ndisplay(Dot())\nx"))]
        images = [e.result for e in events if e.result is not None and "image/png" in e.result.data]
        assert [(image.binary("image/png"), image.is_main_result) for image in images] == [(PNG, False)]
        assert events[-1].type == "exit" and events[-1].state == "kept"
        [listed] = [s for s in await remote.list_sessions() if s.id == "kernel-remote"]
        assert listed.stateful is True
        await remote.reset()
        after = await remote.execute(ExecutionRequest(code="x"))
        assert "NameError" in after.stderr and after.state == "fresh"


async def test_remote_reset_needs_a_stateful_session(server: ServerProcess) -> None:
    async with RemoteIsol8(server.url, server.key) as stateless:
        with pytest.raises(Isol8Error, match="requires a sessionId"):
            await stateless.reset()
    async with RemoteIsol8(server.url, server.key, "kernel-remote-plain") as plain:
        await plain.execute(ExecutionRequest(code="1"))
        with pytest.raises(NotStateful, match="This session is not stateful"):
            await plain.reset()
    async with RemoteIsol8(server.url, server.key, "kernel-remote-none") as missing:
        with pytest.raises(SessionNotFound):
            await missing.reset()


async def test_another_tenant_can_neither_reset_nor_use_a_stateful_session(server: ServerProcess) -> None:
    async with RemoteIsol8(server.url, server.key, "kernel-owned", OPTIONS) as owner:
        await owner.execute(ExecutionRequest(code="secret = 'mine'"))
        async with RemoteIsol8(server.url, other_tenants_key(server), "kernel-owned", OPTIONS) as intruder:
            with pytest.raises(SessionNotFound):
                await intruder.reset()
            with pytest.raises(SessionNotFound):
                await intruder.get_file("/sandbox/anything")
            theirs = await intruder.execute(ExecutionRequest(code="secret"))  # the same id: its own new session
            assert "NameError" in theirs.stderr and theirs.state == "fresh"
        mine = await owner.execute(ExecutionRequest(code="secret"))
        assert (mine.state, [r.text() for r in mine.results or []]) == ("kept", ["'mine'"])


# --- the CLI --------------------------------------------------------------------------------------------------
def test_cli_stateful_run_writes_images_to_new_files_and_prints_the_main_result(
    server: ServerProcess, tmp_path: Path
) -> None:
    remote = ("--host", server.url, "--key", server.key)
    sid = "kernel-cli"
    results = tmp_path / "results"
    results.mkdir()
    (results / "result-1.png").write_bytes(b"not to be overwritten")
    first = run_cli("run", *remote, "--session-id", sid, "--stateful", "-e", "x = 41")
    assert (first.returncode, first.stdout) == (0, ""), first.stderr
    code = PNG_CELL + "\ndisplay(Dot())\nprint('out')\nx + 1"
    second = run_cli("run", *remote, "--session-id", sid, "--stateful", "--results-dir", str(results), "-e", code)
    assert (second.returncode, second.stdout) == (0, "out\n42\n"), second.stderr
    assert (results / "result-1.png").read_bytes() == b"not to be overwritten"
    assert (results / "result-2.png").read_bytes() == PNG
    assert f"Result image/png written to {results / 'result-2.png'}" in second.stderr
    batch = run_cli("run", *remote, "--session-id", sid, "--no-stream", "--results-dir", str(results), "-e", code)
    assert (batch.stdout, (results / "result-3.png").read_bytes()) == ("out\n42\n", PNG), batch.stderr

    as_json = run_cli("run", *remote, "--session-id", sid, "--json", "-e", "x")
    result = ExecutionResult.model_validate_json(as_json.stdout)
    assert result.state == "kept"
    assert [(r.text(), r.is_main_result) for r in result.results or []] == [("41", True)]

    listed = run_cli("session", "list", "--host", server.url, "--key", server.key)
    [line] = [line for line in listed.stdout.splitlines() if sid in line]
    assert "stateful" in line
    reset = run_cli("session", "reset", sid, "--host", server.url, "--key", server.key)
    assert reset.returncode == 0 and "reset" in reset.stdout, reset.stderr
    gone = run_cli("run", *remote, "--session-id", sid, "-e", "x")
    assert gone.returncode == 1 and "NameError" in gone.stderr
    run_cli("session", "delete", sid, "--host", server.url, "--key", server.key)


def test_cli_stateful_needs_a_session(server: ServerProcess) -> None:
    refused = run_cli("run", "--host", server.url, "--key", server.key, "--stateful", "-e", "1")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "[ERR] --stateful needs a session: add --persistent, or run on a server with --host URL --session-id ID."
    )
    temporary = run_cli("run", "--host", server.url, "--key", server.key, "--persistent", "--stateful", "-e", "6 * 7")
    assert (temporary.returncode, temporary.stdout) == (0, "42\n"), temporary.stderr


def test_reset_of_a_plain_session_from_the_cli_says_why(server: ServerProcess) -> None:
    sid = "kernel-cli-plain"
    run_cli("run", "--host", server.url, "--key", server.key, "--session-id", sid, "-e", "1")
    refused = run_cli("session", "reset", sid, "--host", server.url, "--key", server.key)
    assert refused.returncode == 1 and "This session is not stateful" in refused.stderr
    run_cli("session", "delete", sid, "--host", server.url, "--key", server.key)


async def test_a_lost_interpreter_is_said_over_the_wire(server: ServerProcess) -> None:
    async with RemoteIsol8(server.url, server.key, "kernel-lost", OPTIONS) as remote:
        await remote.execute(ExecutionRequest(code="x = 1"))
        lost = await remote.execute(ExecutionRequest(code="import os\nos._exit(3)"))
        assert lost.state == "lost" and "INTERPRETER STATE LOST" in lost.stderr.splitlines()[-1]
        fresh = await remote.execute(ExecutionRequest(code="x"))
        assert "NameError" in fresh.stderr and fresh.state == "fresh"
        events = [e async for e in remote.execute_stream(ExecutionRequest(code="import os\nos._exit(3)"))]
        errors = [e.data for e in events if e.type == "error"]
        assert len(errors) == 1 and "INTERPRETER STATE LOST" in errors[0]
        assert events[-1].type == "exit" and events[-1].state == "lost"


def test_a_timeout_interrupts_the_cell_and_the_reply_says_the_state_was_kept(http: httpx.Client) -> None:
    sid = "kernel-timeout"
    execute(http, "x = 5", options=STATEFUL, sessionId=sid)
    reply = http.post(
        "/execute", json={"request": {"code": "import time\ntime.sleep(60)", "timeoutMs": 1500}, "sessionId": sid}
    )
    slow = reply.json()
    assert (slow["timedOut"], slow["state"]) == (True, "kept"), slow
    assert main_text(execute(http, "x", sessionId=sid)) == "5"
    http.delete(f"/session/{sid}")


@pytest.mark.parametrize(
    ("runtime", "first", "second"),
    [("node", "let y = 2", "console.log(y * 21)"), ("bash", "Y=42; cd /tmp", 'echo "$Y $PWD"')],
)
def test_node_and_bash_sessions_keep_state_through_the_server(
    http: httpx.Client, runtime: str, first: str, second: str
) -> None:
    sid = f"kernel-{runtime}"
    made = http.post(
        "/execute", json={"request": {"code": first, "runtime": runtime}, "options": STATEFUL, "sessionId": sid}
    )
    assert made.status_code == 200 and made.json()["state"] == "fresh", made.text
    again = http.post("/execute", json={"request": {"code": second, "runtime": runtime}, "sessionId": sid}).json()
    assert (again["stdout"], again["state"]) == ("42\n" if runtime == "node" else "42 /tmp\n", "kept"), again
    http.delete(f"/session/{sid}")


async def test_racing_first_requests_make_one_kind_of_session(server: ServerProcess) -> None:
    sid = "kernel-race"

    async def first(client: httpx.AsyncClient, stateful: bool) -> int:
        body = {"request": {"code": "1"}, "options": {"stateful": stateful}, "sessionId": sid}
        return (await client.post("/execute", json=body)).status_code

    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=120) as client:
        statuses = await asyncio.gather(*(first(client, n % 2 == 0) for n in range(6)))
        listed = {s["id"]: s for s in (await client.get("/sessions")).json()["sessions"]}
        await client.delete(f"/session/{sid}")
    made = listed[sid]["stateful"]
    assert statuses == [200 if (n % 2 == 0) == made else 400 for n in range(6)], statuses
