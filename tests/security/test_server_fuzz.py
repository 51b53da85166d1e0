"""Schemathesis against the real server's own `/openapi.json`: every route, a bounded number of examples.

A 5xx is a crash the fuzzer found; every reply must have the documented status, content type, headers
and body; data the schema calls invalid must be refused with 4xx; routes that need a key must refuse
requests without one; undeclared methods get 405 with a correct `Allow`. The server's config keeps
each example cheap (2 s timeouts, three sessions at most, fast pool), so the file takes about a
minute on two cores. Generation is derandomized and keeps no example database, so a failure
reproduces on the next run and a run does not depend on the ones before it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_server_support import MASTER_KEY, ServerProcess, serve, wait_until

from engine.docker import DockerClient

pytestmark = pytest.mark.docker

EXAMPLES = 100
"""Per route and generation phase, on top of schemathesis' coverage cases (boundaries, wrong types)."""
PIDS_MARK = 57
"""This server's default pids limit: no other suite uses it, so its containers can be told apart."""
CONFIG = {
    "defaults": {"timeoutMs": 2000, "pidsLimit": PIDS_MARK},
    "poolStrategy": "fast",
    "server": {"maxTimeoutMs": 2000, "maxSessions": 3},
}
UPLOADS, READS = "fuzz-uploads", "fuzz-reads"
"""The file routes need a session, which the fuzzer cannot make: uploads go to one, reads to another.
Reads never meet a directory that uploads created: reading a directory kills the session's agent
(engine/agent/agent.py `send_file`, reported; see test_server_faults.py)."""
READABLE = ("/sandbox/0", "/tmp/0", "/sandbox/A")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


def marked_containers(docker: DockerClient) -> set[str]:
    """This file's server's containers, told from other suites' on the same daemon by their pids limit
    (containers of requests that set their own limit are covered by conftest.py's session check)."""
    found = set()
    for container in docker.managed_containers():
        with contextlib.suppress(Exception):
            if docker.api.inspect_container(container["Id"])["HostConfig"]["PidsLimit"] == PIDS_MARK:
                found.add(container["Id"])
    return found


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, docker_client: DockerClient) -> Iterator[ServerProcess]:
    """A server of its own, with a key store so the `/auth` routes run for real."""
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    with serve(workdir, CONFIG, "--auth-db", str(workdir / "keys.db")) as server:
        with server.client() as client:
            for session, command in ((UPLOADS, "true"), (READS, " ".join(f"echo x > {p};" for p in READABLE))):
                reply = client.post("/execute", json={"request": {"cmd": command}, "sessionId": session})
                assert reply.status_code == 200, reply.text
        yield server
        log = server.stderr()
    assert "Traceback" not in log and "[ERR]" not in log, log
    wait_until(lambda: not marked_containers(docker_client), what="the fuzzed server's containers to go")


@pytest.fixture
def api(fuzz_server: ServerProcess) -> Any:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json", timeout=30)
    schema.config.update(base_url=fuzz_server.url, headers=AUTH, request_timeout=60)
    return schema


schema = schemathesis.pytest.from_fixture("api")


def _into_a_session(case: Any) -> None:
    """Positive `/file` cases go to an existing session; otherwise every one would be a 404."""
    if case.operation.path != "/file" or case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return
    if case.method.upper() == "GET" and isinstance(case.query, dict):
        case.query["sessionId"] = READS
    elif isinstance(case.body, dict):
        case.body["sessionId"] = UPLOADS


@schema.parametrize()
@settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
def test_every_route_keeps_its_contract(case: Any) -> None:
    _into_a_session(case)
    case.call_and_validate(checks=CHECKS)


def test_the_document_states_what_the_server_enforces(fuzz_server: ServerProcess) -> None:
    """What the fuzzer reads: no 422 (never sent), the errors that are, and the validators' rules."""
    document = httpx.get(f"{fuzz_server.url}/openapi.json").json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], (method, path)
    assert {"400", "401", "403", "413", "429", "500", "503"} <= set(document["paths"]["/execute"]["post"]["responses"])
    request = document["components"]["schemas"]["ExecutionRequest"]
    assert request["properties"]["runtime"]["enum"] == ["python", "node", "bun", "deno", "bash"]
    assert [branch["required"] for branch in request["oneOf"]] == [["code"], ["cmd"]]
    upload = document["components"]["schemas"]["FileUpload"]["properties"]["content"]
    assert (upload["format"], upload["contentEncoding"]) == ("byte", "base64")
    get_file = {p["name"]: p["required"] for p in document["paths"]["/file"]["get"]["parameters"]}
    assert get_file == {"sessionId": True, "path": True}
