"""The `isol8` command, run as a user would run it (a subprocess, the real daemon)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from helpers import run_cli

from engine.docker import DockerClient
from engine.hardening import container_config
from engine.models import Isol8Options

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_client")]

SCRIPTS = {
    "hello.py": ("import sys\nprint('py', sys.argv[0])\n", "py /sandbox/main.py\n"),
    "hello.js": ("console.log('js', typeof require)\n", "js function\n"),
    "hello.mjs": ("import os from 'node:os'\nconsole.log('mjs', typeof os.cpus)\n", "mjs function\n"),
    "hello.ts": ("const x: string = 'ts'\nconsole.log(x, typeof Bun)\n", "ts object\n"),
    "hello.mts": ("const x: string = 'mts'\nconsole.log(x, typeof Deno)\n", "mts object\n"),
    "hello.sh": ("echo sh $BASH_VERSION | cut -c1-4\n", "sh 5\n"),
}


def test_eval_prints_and_exits_zero() -> None:
    result = run_cli("run", "-e", "print(1)")
    assert (result.stdout, result.returncode) == ("1\n", 0), result.stderr


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_files_run_through_extension_detection(tmp_path: Path, name: str) -> None:
    source, expected = SCRIPTS[name]
    (tmp_path / name).write_text(source)
    result = run_cli("run", str(tmp_path / name))
    assert (result.stdout, result.returncode) == (expected, 0), result.stderr


def test_exit_code_is_the_programs() -> None:
    assert run_cli("run", "-e", "import sys; sys.exit(42)").returncode == 42
    assert run_cli("run", "--cmd", "exit 7").returncode == 7


def test_reads_code_from_stdin() -> None:
    result = run_cli("run", "-r", "node", input="console.log(6 * 7)")
    assert (result.stdout, result.returncode) == ("42\n", 0), result.stderr


def test_no_stream_mode_and_stdin_data() -> None:
    result = run_cli("run", "--no-stream", "--stdin", "abc", "-e", "import sys; print(sys.stdin.read()[::-1])")
    assert (result.stdout, result.returncode) == ("cba\n", 0), result.stderr


def test_timeout_flag() -> None:
    started = time.monotonic()
    result = run_cli("run", "--timeout", "1000", "-e", "import time; time.sleep(30)")
    assert result.returncode == 137
    assert "EXECUTION TIMED OUT" in result.stderr
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "missing.py"), "[ERR] File not found: missing.py\n"),
        (
            ("run", "-r", "cobol", "-e", "1"),
            '[ERR] Unknown runtime: "cobol". Available: python, node, bun, deno, bash\n',
        ),
        (
            ("run", "--memory", "lots", "-e", "1"),
            '[ERR] Invalid memory limit format: "lots". Use e.g. "512m", "1g".\n',
        ),
        (("run", "--cmd", "ls", "-e", "1"), "[ERR] --cmd cannot be combined with file input, --eval or --url.\n"),
        (("run", "--env", "NOEQUALS", "-e", "1"), "[ERR] --env expects NAME=VALUE, got 'NOEQUALS'.\n"),
        (("run", "--url", "https://x/a.py", "-e", "1"), "[ERR] --url cannot be used with file input or --eval.\n"),
        (("run", "--hash", "ab", "-e", "1"), "[ERR] --hash and --allow-insecure-code-url go with --url URL.\n"),
        (
            ("run", "--url", "https://x/notes.txt"),
            "[ERR] Cannot detect runtime from URL path. Use --runtime to specify.\n",
        ),
    ],
)
def test_input_errors(args: tuple[str, ...], message: str) -> None:
    result = run_cli(*args)
    assert (result.stderr, result.returncode) == (message, 1)


def test_unknown_extension(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    result = run_cli("run", str(tmp_path / "notes.txt"))
    assert result.returncode == 1
    assert result.stderr.startswith(
        f'[ERR] Cannot detect runtime for "{tmp_path / "notes.txt"}". Known extensions: .py'
    )


def test_docker_unreachable_is_one_clear_error() -> None:
    env_host = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"
    try:
        for args in (("run", "-e", "print(1)"), ("setup",), ("cleanup",)):
            result = run_cli(*args)
            assert result.returncode == 1
            assert result.stderr.startswith("[ERR] Docker is not running or not installed.")
            assert result.stderr.count("\n") == 1
    finally:
        if env_host is None:
            del os.environ["DOCKER_HOST"]
        else:
            os.environ["DOCKER_HOST"] = env_host


def test_config_file_defaults_apply_and_flags_win(tmp_path: Path) -> None:
    config = {
        "defaults": {
            "timeoutMs": 800,
            "memoryLimit": "256m",
            "cpuLimit": 0.5,
            "pidsLimit": 32,
            "sandboxSize": "64m",
            "tmpSize": "32m",
            "maxOutputSize": 4096,
        }
    }
    (tmp_path / "isol8.config.json").write_text(json.dumps(config))
    probe = (
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us"
        " /sys/fs/cgroup/pids/pids.max; df -k /sandbox /tmp | tail -2 | awk '{print $2}'"
    )
    result = run_cli("run", "--cmd", probe, cwd=tmp_path)
    assert result.stdout.split() == [str(256 << 20), "50000", "32", str(64 * 1024), str(32 * 1024)], result.stderr
    slow = run_cli("run", "-e", "import time; time.sleep(5)", cwd=tmp_path)
    assert slow.returncode == 137  # the file's 800 ms timeout applied
    big = run_cli("run", "-e", "print('x' * 10000)", cwd=tmp_path)
    assert big.stdout.startswith("x" * 4096 + "\n--- OUTPUT TRUNCATED (10001 bytes, limit: 4096) ---")
    flags = run_cli(
        "run",
        "--memory",
        "128m",
        "--timeout",
        "5000",
        "--cmd",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
        cwd=tmp_path,
    )
    assert flags.stdout == f"{128 << 20}\n"


def test_invalid_config_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "isol8.config.json").write_text('{"defaults": {"timeoutMs": -1}}')
    result = run_cli("run", "-e", "print(1)", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"[ERR] Invalid config {tmp_path / 'isol8.config.json'}: defaults.timeoutMs")


def test_config_command_shows_source(tmp_path: Path) -> None:
    (tmp_path / "isol8.config.json").write_text('{"defaults": {"timeoutMs": 1234}}')
    shown = json.loads(run_cli("config", "--json", cwd=tmp_path).stdout)
    assert shown["defaults"]["timeoutMs"] == 1234 and shown["defaults"]["memoryLimit"] == "512m"
    text = run_cli("config", cwd=tmp_path).stdout
    assert str(tmp_path / "isol8.config.json") in text


def test_cleanup_removes_managed_containers() -> None:
    docker = DockerClient()
    for _ in range(2):
        docker.create_container(container_config(Isol8Options(), "isol8:bash", "bash"))
    result = run_cli("cleanup")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Removed 2 container(s)\n"
    assert docker.managed_containers() == []


def test_no_arguments_prints_help() -> None:
    result = run_cli()
    assert result.returncode == 0 and "Commands:" in result.stdout
    assert run_cli("--version").stdout.strip() == "0.1.0"


def test_secret_flag_masks_output() -> None:
    result = run_cli("run", "--secret", "TOKEN=hunter2hunter2", "--cmd", "echo $TOKEN; echo ${TOKEN:0:4}")
    assert result.stdout == "***\nhunt\n"


@pytest.mark.parametrize("mode", [(), ("--no-stream",)])
def test_truncation_warning_in_both_modes(mode: tuple[str, ...]) -> None:
    result = run_cli("run", *mode, "--max-output", "10", "-e", "print('y' * 100)")
    assert result.returncode == 0
    assert result.stdout.startswith("y" * 10 + "\n--- OUTPUT TRUNCATED (101 bytes, limit: 10) ---")
    assert "[WARN] Output was truncated" in result.stderr


@pytest.mark.parametrize("mode", [(), ("--no-stream",)])
def test_out_writes_stdout_to_a_file(tmp_path: Path, mode: tuple[str, ...]) -> None:
    target = tmp_path / "out.txt"
    result = run_cli(
        "run", *mode, "--out", str(target), "-e", "print('saved'); import sys; print('e', file=sys.stderr)"
    )
    assert (result.stdout, result.stderr, target.read_text()) == ("", "e\n", "saved\n")


def test_file_and_files_copy_host_files_in(tmp_path: Path) -> None:
    tree = tmp_path / "project"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "mod.py").write_text("VALUE = 41\n")
    (tree / "node_modules").mkdir()
    (tree / "node_modules" / "skip.js").write_text("")
    (tmp_path / "data.bin").write_bytes(b"\x00\x01\x02")
    code = "import os, pkg.mod as m\nprint(m.VALUE + 1, os.path.getsize('/tmp/d.bin'), os.path.exists('node_modules'))"
    result = run_cli("run", "--files", str(tree), "--file", f"{tmp_path / 'data.bin'}:/tmp/d.bin", "-e", code)
    assert result.stdout == "42 3 False\n", result.stderr


def test_file_flag_errors(tmp_path: Path) -> None:
    assert run_cli("run", "--file", "nocolon", "-e", "1").stderr == (
        "[ERR] --file expects HOST_PATH:SANDBOX_PATH, got 'nocolon'.\n"
    )
    assert run_cli("run", "--files", str(tmp_path / "none"), "-e", "1").stderr == (
        f"[ERR] --files path is not a directory: {tmp_path / 'none'}\n"
    )
    (tmp_path / "a").write_text("x")
    outside = run_cli("run", "--file", f"{tmp_path / 'a'}:/etc/a", "-e", "1")
    assert outside.returncode == 1
    assert outside.stderr.startswith('[ERR] File path must be a file inside /sandbox or /tmp, without "..": "/etc/a"')


def test_persistent_stateful_files_share_variables_and_results_go_to_files(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("class Pdf:\n    def _repr_pdf_(self):\n        return b'%PDF-1.4 x'\nx = 41\n")
    (tmp_path / "b.py").write_text("display(Pdf())\nx + 1\n")
    result = run_cli("run", "--persistent", "--stateful", "a.py", "b.py", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "42\n"), result.stderr
    assert (tmp_path / "result-1.pdf").read_bytes() == b"%PDF-1.4 x"
    assert "Result application/pdf written to result-1.pdf" in result.stderr
    alone = run_cli("run", "--stateful", "-e", "1", cwd=tmp_path)
    assert alone.returncode == 1 and "--stateful needs a session" in alone.stderr
