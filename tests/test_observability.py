"""Operating `isol8 serve`: `/metrics` after a mix of executions, its auth, JSON logs, and spans.

The server runs as the real command (one per module, `--log-format json`); the spans are captured
in-process with the OpenTelemetry SDK's in-memory exporter around the real app and engine.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import ISOL8
from prometheus_client.parser import text_string_to_metric_families
from test_server_support import ServerProcess, serve

from engine import doctor, metrics
from engine.docker import DockerClient
from engine.engine import DockerIsol8
from engine.models import ExecutionRequest, NetworkFilter

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_client")]

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serve(tmp_path_factory.mktemp("observed"), {}, "--log-format", "json") as running:
        yield running


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


MIX = [
    ({"code": "print('ok')"}, "ok"),
    ({"code": "print('ok again')"}, "ok"),
    ({"code": "raise SystemExit(3)"}, "error"),
    ({"cmd": "sleep 30", "runtime": "bash", "timeoutMs": 500}, "timeout"),
    ({"code": "x = bytearray(400 * 1024 * 1024)", "memoryLimit": "128m", "timeoutMs": 20000}, "oom"),
]


def test_metrics_add_up_after_a_mix_of_executions(server: ServerProcess) -> None:
    with server.client() as http:
        for request, _ in MIX:
            reply = http.post("/execute", json={"request": {"runtime": "python", **request}})
            assert reply.status_code == 200, reply.text
        assert http.get("/nope/0f7e2c1a-1111-4222-8333-444455556666").status_code == 404
        text = http.get("/metrics").text
    assert httpx.get(f"{server.url}/execute").status_code == 401  # counted from here on
    scrape = samples(text)
    expected = {"ok": 2, "error": 1, "timeout": 1, "oom": 1}
    for outcome, count in expected.items():
        runtime = "bash" if outcome == "timeout" else "python"
        assert value(scrape, "isol8_executions_total", runtime=runtime, outcome=outcome) == count, outcome
    total = sum(v for (name, _), v in scrape.items() if name == "isol8_executions_total")
    assert total == len(MIX)
    durations = sum(v for (name, _), v in scrape.items() if name == "isol8_execution_duration_seconds_count")
    queued = sum(v for (name, _), v in scrape.items() if name == "isol8_queue_wait_seconds_count")
    assert durations == queued == len(MIX)
    starts = sum(v for (name, labels), v in scrape.items() if name == "isol8_container_starts_total")
    assert starts >= len(MIX)  # one container per execution at least (the pool starts spares)
    assert value(scrape, "isol8_http_requests_total", method="POST", route="/execute", status="200") == len(MIX)
    assert value(scrape, "isol8_http_requests_total", method="GET", route="(unmatched)", status="404") == 1
    states = {dict(labels)["state"] for (name, labels), _ in scrape.items() if name == "isol8_pool_containers"}
    assert states == {"ready", "busy", "starting"}
    assert value(scrape, "isol8_sessions_open") == 0
    # Bounded labels: no execution, session or key id, no raw path.
    for (_, labels), _ in scrape.items():
        for _, label in labels:
            assert not UUID.search(label), label


def test_auth_failures_are_counted_and_metrics_need_a_key(server: ServerProcess) -> None:
    before = samples(httpx.get(f"{server.url}/metrics", headers=server.headers).text)
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert httpx.post(f"{server.url}/execute", json={}).status_code == 401
    after = samples(httpx.get(f"{server.url}/metrics", headers=server.headers).text)
    for status, more in (("401", 2), ("403", 1)):
        grew = value(after, "isol8_auth_failures_total", status=status) - value(
            before, "isol8_auth_failures_total", status=status
        )
        assert grew == more, status
    route = value(after, "isol8_http_requests_total", method="GET", route="/metrics", status="401")
    assert route - value(before, "isol8_http_requests_total", method="GET", route="/metrics", status="401") == 1


def test_a_tenants_key_cannot_read_the_servers_metrics(tmp_path: Path) -> None:
    with serve(tmp_path, {}, "--auth-db", str(tmp_path / "keys.db")) as srv, srv.client() as master:
        tenant_key = master.post("/auth/keys", json={"name": "t", "tenantId": "acme"}).json()["key"]
        refused = httpx.get(f"{srv.url}/metrics", headers={"Authorization": f"Bearer {tenant_key}"})
        assert (refused.status_code, refused.json()) == (403, {"error": "Master key required for this operation"})
        assert master.get("/metrics").status_code == 200


def test_metrics_public_serves_them_without_a_key(tmp_path: Path) -> None:
    with serve(tmp_path, {"server": {"metricsPublic": True}}) as public:
        reply = httpx.get(f"{public.url}/metrics")
        assert reply.status_code == 200
        assert "isol8_executions_total" in reply.text or "isol8_executions" in reply.text
        assert httpx.get(f"{public.url}/sessions").status_code == 401  # only /metrics opened


def test_metrics_public_must_be_a_boolean(tmp_path: Path) -> None:
    (tmp_path / "isol8.config.json").write_text(json.dumps({"server": {"metricsPublic": "yes"}}))
    done = subprocess.run(
        [sys.executable, "-m", "isol8_tui", "config"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 1 and "server.metricsPublic" in done.stderr


def test_json_logs_have_one_object_per_line_with_the_execution_fields(server: ServerProcess) -> None:
    with server.client() as http:
        reply = http.post("/execute", json={"request": {"code": "print(1)"}, "sessionId": "logged"})
        assert reply.status_code == 200
        execution_id = reply.json()["executionId"]
        # A stream outlives the request's context: its execution is still logged in its session.
        stream = http.post("/execute/stream", json={"request": {"code": "print(2)"}, "sessionId": "streamed"})
        assert stream.status_code == 200 and '"exit"' in stream.text
        http.delete("/session/logged")
        http.delete("/session/streamed")
    lines = [line for line in server.stderr().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert all({"time", "level", "event", "message"} <= record.keys() for record in records)
    assert any(record["event"] == "listening" for record in records)
    ours = [record for record in records if record.get("execution_id") == execution_id]
    assert len(ours) == 1
    assert ours[0]["event"] == "execution"
    assert (ours[0]["tenant"], ours[0]["session"], ours[0]["runtime"], ours[0]["outcome"]) == (
        "default",  # the master key's tenant
        "logged",
        "python",
        "ok",
    )
    assert isinstance(ours[0]["duration_ms"], int)
    streamed = [record for record in records if record.get("session") == "streamed"]
    assert [(r["event"], r["outcome"]) for r in streamed] == [("execution", "ok")]


async def test_network_requests_and_bytes_are_counted() -> None:
    docker = DockerClient()
    probe = doctor.start_probe(docker)
    try:
        before = samples(_engine_scrape())
        engine = DockerIsol8(
            network="filtered",
            docker_network=probe.network,
            network_filter=NetworkFilter(whitelist=[f"^{probe.name}$"]),
        )
        allowed = f"http://{probe.name}:{doctor.PROBE_PORT}/"
        code = f"import sys\nsys.argv[1:] = {[allowed, 'http://a.invalid/']!r}\n{doctor.PROBE_CLIENT}"
        async with engine:
            result = await engine.execute(ExecutionRequest(code=code))
        assert result.stdout.split() == ["200", "403"], result.stderr
        after = samples(_engine_scrape())
    finally:
        doctor.stop_probe(docker, probe)
    grew = {key: after[key] - before.get(key, 0.0) for key in after}
    assert grew[("isol8_network_requests_total", (("action", "allow"),))] == 1
    assert grew[("isol8_network_requests_total", (("action", "block"),))] == 1
    assert grew[("isol8_network_bytes_total", (("direction", "in"),))] >= len("isol8 doctor")
    assert grew[("isol8_network_bytes_total", (("direction", "out"),))] > 0


def _engine_scrape() -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.ENGINE_REGISTRY).decode()


NO_OTEL = """
import asyncio, sys
sys.modules["opentelemetry"] = None  # as if the `otel` extra were not installed
from engine import tracing
from engine.engine import DockerIsol8
from engine.models import ExecutionRequest
assert not tracing.ENABLED
async def main():
    async with DockerIsol8() as engine:
        print((await engine.execute(ExecutionRequest(code="print(6 * 7)"))).stdout, end="")
asyncio.run(main())
"""


def test_engine_runs_without_the_otel_extra() -> None:
    done = subprocess.run([sys.executable, "-c", NO_OTEL], capture_output=True, text=True, timeout=120, check=False)
    assert (done.returncode, done.stdout) == (0, "42\n"), done.stderr


def test_spans_per_request_execution_and_phase(tmp_path: Path) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from starlette.testclient import TestClient

    from engine.config import Isol8Config
    from engine.server.app import ServerSettings, create_app

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    app = create_app(ServerSettings(Isol8Config(), "span-key"))
    headers = {"Authorization": "Bearer span-key"}
    with TestClient(app) as client:
        body = {"request": {"code": "print(1)", "setupScript": "echo setting up"}, "sessionId": "traced"}
        reply = client.post("/execute", json=body, headers=headers)
        assert reply.status_code == 200, reply.text
        file = {"sessionId": "traced", "path": "/sandbox/a.txt", "content": "aGk="}
        assert client.post("/file", json=file, headers=headers).status_code == 200
        client.delete("/session/traced", headers=headers)
    spans = exporter.get_finished_spans()
    by_name: dict[str, list[Any]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    ids = {span.context.span_id: span for span in spans}

    def request_of(span: Any) -> Any:
        """The ancestor that is Observe's request span (FastAPI may add spans of its own around it)."""
        while span.parent is not None:
            span = ids[span.parent.span_id]
            if "isol8.route" in span.attributes:
                return span
        raise AssertionError("no request span above it")

    execution = by_name["isol8.execution"][0]
    request = request_of(execution)
    assert (request.name, request.attributes["isol8.route"], request.attributes["isol8.status"]) == (
        "POST /execute",
        "/execute",
        200,
    )
    assert execution.attributes["isol8.session"] == "traced"
    assert execution.attributes["isol8.outcome"] == "ok"
    children = {span.name for span in spans if span.parent and span.parent.span_id == execution.context.span_id}
    assert {"isol8.queue", "isol8.sandbox", "isol8.setup", "isol8.code"} <= children
    files = by_name["isol8.files"][0]
    assert (request_of(files).name, files.attributes["isol8.op"]) == ("POST /file", "put")
    assert all(span.end_time is not None for span in spans)


def test_json_logs_stay_json_when_the_port_is_taken(tmp_path: Path) -> None:
    """The port fallback's warning (and any image-build progress) is a JSON object like every line."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "isol8.config.json").write_text("{}")
        proc = subprocess.Popen(
            [ISOL8, "serve", "--port", str(port), "--key", "k" * 24, "--log-format", "json"],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stderr is not None
            lines = []
            for line in proc.stderr:
                lines.append(line)
                if '"listening"' in line:
                    break
        finally:
            proc.terminate()
            proc.wait(30)
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    (fallback,) = [r for r in records if r.get("event") == "port"]
    assert fallback["level"] == "warning" and f"Port {port} is in use" in fallback["message"]
