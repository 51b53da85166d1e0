"""`--debug`: one `[DEBUG]` line per engine step (run, serve, tui), and the server's line per request."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from helpers import run_cli
from test_server_support import serve

from isol8_tui.output import setup_logging

pytestmark = pytest.mark.docker

CONTAINER = r"[0-9a-f]{12}"


def test_run_debug_logs_every_step_and_nothing_without_it(tmp_path: Path) -> None:
    result = run_cli("run", "--debug", "--setup", "echo set up", "-e", "print(1)", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "1\n"), result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("[DEBUG] ")]
    expected = [
        r"isol8\.engine: run: runtime python, mode ephemeral, image isol8:python",
        r"isol8\.pool: no pool sandbox ready: starting one",
        rf"isol8\.sandbox: container {CONTAINER} started from isol8:python, network none",
        rf"isol8\.engine: setup job to {CONTAINER}: bash, files \['/sandbox/\.isol8-setup\.sh'\]",
        r"isol8\.engine: setup job exited 0 in \d+ ms",
        rf"isol8\.engine: code job to {CONTAINER}: python3, files \['/sandbox/main\.py'\]",
        r"isol8\.engine: code job exited 0 in \d+ ms",
        rf"isol8\.engine: sandbox {CONTAINER} released \(persist: False, pooled: True\)",
        r"isol8\.engine: execution [0-9a-f-]{36} python: ok in \d+ ms",  # the `execution` event
        rf"isol8\.sandbox: container {CONTAINER} removed",
    ]
    assert len(lines) == len(expected), result.stderr
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(rf"\[DEBUG\] {pattern}", line), (line, pattern)
    assert "set up\n" in result.stderr  # the setup script's own output

    quiet = run_cli("run", "--setup", "echo set up", "-e", "print(1)", cwd=tmp_path)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "1\n", "set up\n")


def test_filtered_network_setup_is_logged(tmp_path: Path) -> None:
    result = run_cli("run", "--debug", "--net", "filtered", "-e", "print(1)", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(
        rf"^\[DEBUG\] isol8\.sandbox: container {CONTAINER} started from isol8:python, "
        "network filtered: proxy and iptables rules in place$",
        result.stderr,
        re.MULTILINE,
    ), result.stderr


def test_serve_debug_logs_each_request_with_its_tenant_and_session(tmp_path: Path) -> None:
    with serve(tmp_path / "srv", {}, "--debug") as srv, srv.client() as client:
        body = {"request": {"code": "print(1)", "runtime": "python"}, "sessionId": "dbg-1"}
        assert client.post("/execute", json=body).status_code == 200
        assert client.delete("/session/dbg-1").status_code == 200
    log = srv.stderr()
    assert "[DEBUG] [Server] POST /execute tenant=default\n" in log
    assert "[DEBUG] [Server] execute runtime=python tenant=default sessionId=dbg-1\n" in log
    assert "[DEBUG] [Server] DELETE /session/dbg-1 tenant=default\n" in log
    assert re.search(rf"^\[DEBUG\] isol8\.engine: code job to {CONTAINER}: python3", log, re.MULTILINE), log


def test_serve_without_debug_logs_no_debug_lines(tmp_path: Path) -> None:
    with serve(tmp_path / "srv", {}) as srv, srv.client() as client:
        assert client.post("/execute", json={"request": {"code": "print(1)", "runtime": "python"}}).status_code == 200
    assert "[DEBUG]" not in srv.stderr()


def test_the_workbench_logs_into_a_file(tmp_path: Path) -> None:
    """`isol8 tui --debug` writes its lines into ./isol8-debug.log: the terminal is the workbench's."""
    logger = logging.getLogger("isol8")
    before = list(logger.handlers)
    try:
        setup_logging(True, tmp_path / "isol8-debug.log")
        logging.getLogger("isol8.engine").debug("run: runtime python")
    finally:
        for handler in set(logger.handlers) - set(before):
            handler.close()
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert (tmp_path / "isol8-debug.log").read_text() == "[DEBUG] isol8.engine: run: runtime python\n"
