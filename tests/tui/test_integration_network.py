"""A filtered session's requests to a test HTTP server (on a Docker network the test creates) appear in
the network inspector, allowed and blocked, and export as HAR."""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from tui_helpers import main_screen, run_and_wait, wait_for

from engine.config import TuiSettings
from engine.docker import DockerClient
from isol8_tui.app import WorkbenchApp, make_app
from isol8_tui.bridge import SessionSpec
from isol8_tui.screens.dialogs import PathScreen
from isol8_tui.widgets.network import NetworkTable

pytestmark = pytest.mark.docker

SERVER = """
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello {self.path}".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""


@pytest.fixture
def web(docker_client: DockerClient) -> Iterator[tuple[str, str]]:
    """(docker network, server host name): a tiny HTTP server on a network of the test's own."""
    client = docker.from_env()
    suffix = uuid.uuid4().hex[:8]
    network = client.networks.create(f"isol8-tui-test-{suffix}", driver="bridge")
    name = f"tui-web-{suffix}"
    try:
        container = client.containers.run(
            "isol8:python", entrypoint=["python3", "-c", SERVER], name=name, network=network.name, detach=True
        )
        for _ in range(100):
            container.reload()
            probe = ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 8080), 1)"]
            if container.status == "running" and container.exec_run(probe).exit_code == 0:
                break
            time.sleep(0.1)
        yield network.name, name
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(name).remove(force=True)
        network.remove()


def workbench(workdir: Path, code: str, network_name: str) -> WorkbenchApp:
    """The workbench on the real engine, `code` open as fetch.py, sessions on the test's network."""
    path = workdir / "fetch.py"
    path.write_text(code)
    return make_app(
        path,
        watch=False,
        cursor_blink=False,
        animations=False,
        settings=TuiSettings(),
        session_overrides={"docker_network": network_name},
    )


async def test_filtered_requests_appear_in_the_inspector(
    docker_client: DockerClient, web: tuple[str, str], workdir: Path
) -> None:
    network_name, host = web
    code = (
        "import urllib.request, urllib.error\n"
        f'print(urllib.request.urlopen("http://{host}:8080/allowed", timeout=10).read().decode())\n'
        "try:\n"
        '    urllib.request.urlopen("http://blocked.example.test/secret", timeout=10)\n'
        "except urllib.error.HTTPError as e:\n"
        '    print("blocked", e.code)\n'
    )
    app = workbench(workdir, code, network_name)
    async with app.run_test(size=(150, 40)) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started, timeout=10)
        session = screen.create_session(SessionSpec("python", "filtered", (host,), (r".*\.example\.test",)))
        assert session is not None and session.logs_network
        await run_and_wait(pilot, timeout=90)
        assert list(screen.outputs.stdout.lines)[:2] == ["hello /allowed", "blocked 403"]
        inspector = screen.network
        assert not inspector.has_class("-off")
        rows = [(e.host, e.action, e.path) for e in inspector.entries]
        assert (host, "ALLOW", "/allowed") in rows
        assert ("blocked.example.test", "BLOCK", "/secret") in rows
        table = inspector.query_one(NetworkTable)
        assert table.row_count == len(inspector.entries)
        inspector.set_filters(action="BLOCK")
        await pilot.pause()
        assert [e.host for e in inspector.entries if e.action == "BLOCK"] == ["blocked.example.test"]
        assert inspector.visible_rows == 1
        # the run's requests as HAR: what the proxy logged, one entry each, the blocked one with its 403
        inspector.set_filters(action="all")
        inspector.query_one(NetworkTable).focus()
        await pilot.press("h")
        await wait_for(pilot, lambda: isinstance(app.screen, PathScreen))
        await pilot.press("enter")
        exported = workdir / f"{session.name}-requests.har"
        await wait_for(pilot, exported.exists)
        entries = json.loads(exported.read_text())["log"]["entries"]
        assert len(entries) == len(inspector.entries)
        urls = {(e["request"]["method"], e["request"]["url"], e["response"]["status"]) for e in entries}
        assert ("GET", f"http://{host}:8080/allowed", 200) in urls
        assert ("GET", "http://blocked.example.test/secret", 403) in urls
        allowed = next(e for e in entries if e["request"]["url"].endswith("/allowed"))
        assert "User-Agent" in {h["name"] for h in allowed["request"]["headers"]}  # as the proxy logged them


async def test_allow_host_opens_a_blocked_host_in_the_live_session(
    docker_client: DockerClient, web: tuple[str, str], workdir: Path
) -> None:
    network_name, host = web
    code = (
        "import urllib.request, urllib.error\n"
        "try:\n"
        f'    print(urllib.request.urlopen("http://{host}:8080/x", timeout=10).read().decode())\n'
        "except urllib.error.HTTPError as e:\n"
        '    print("blocked", e.code)\n'
    )
    app = workbench(workdir, code, network_name)
    async with app.run_test(size=(150, 40)) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started, timeout=10)
        session = screen.create_session(SessionSpec("python", "filtered", (r"^nothing\.test$",), ()))
        assert session is not None
        await run_and_wait(pilot, timeout=90)
        assert list(screen.outputs.stdout.lines)[:1] == ["blocked 403"]
        await pilot.press("f8")
        screen.network.query_one(NetworkTable).focus()
        await pilot.press("w")
        await wait_for(pilot, lambda: any(re.fullmatch(p, host) for p in session.whitelist), timeout=10)
        await run_and_wait(pilot, timeout=90)  # the same container: its proxy took the new list
        assert "hello /x" in list(screen.outputs.stdout.lines)
        assert [e.action for e in screen.network.entries] == ["ALLOW"]
