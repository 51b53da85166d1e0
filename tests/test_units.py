"""Pure logic: runtimes, request validation, sizes, the agent's frame codec, hardening settings."""

from __future__ import annotations

import json
import random

import pytest
from pydantic import ValidationError

from engine.agent import protocol as P
from engine.engine import resolve_workdir
from engine.errors import Isol8Error
from engine.hardening import CAPABILITIES, SANDBOX_UID, container_config
from engine.limits import parse_size
from engine.models import ExecutionRequest, ExecutionResult, Isol8Options
from engine.runtimes import code_file, detect_runtime, get_runtime


@pytest.mark.parametrize(
    ("filename", "runtime"),
    [
        ("a.py", "python"),
        ("a.js", "node"),
        ("a.mjs", "node"),
        ("a.cjs", "node"),
        ("a.ts", "bun"),
        ("a.mts", "deno"),
        ("a.sh", "bash"),
        ("dir.v1/A.PY", "python"),
    ],
)
def test_detect_runtime(filename: str, runtime: str) -> None:
    assert detect_runtime(filename).name == runtime


def test_detect_runtime_unknown_extension() -> None:
    with pytest.raises(Isol8Error, match=r'^Cannot detect runtime for "notes.txt"\. Known extensions: \.py'):
        detect_runtime("notes.txt")


def test_unknown_runtime_message() -> None:
    with pytest.raises(Isol8Error) as info:
        get_runtime("ruby")
    assert str(info.value) == 'Unknown runtime: "ruby". Available: python, node, bun, deno, bash'


def test_code_file_uses_runtime_default_or_given_extension() -> None:
    assert code_file(get_runtime("node"), None) == "/sandbox/main.mjs"
    assert code_file(get_runtime("node"), ".cjs") == "/sandbox/main.cjs"
    assert code_file(get_runtime("deno"), None) == "/sandbox/main.mts"


def test_request_needs_exactly_one_source() -> None:
    with pytest.raises(ValidationError, match="exactly one of: code, codeUrl, or cmd"):
        ExecutionRequest(runtime="python")
    with pytest.raises(ValidationError, match="mutually exclusive"):
        ExecutionRequest(code="1", cmd="true")


def test_request_rejects_bad_env_names() -> None:
    with pytest.raises(ValidationError, match="Invalid environment variable"):
        ExecutionRequest(code="1", env={"A=B": "x"})


def test_wire_format_is_camel_case() -> None:
    request = ExecutionRequest.model_validate({"code": "1", "timeoutMs": 500, "fileExtension": "cjs"})
    assert request.timeout_ms == 500 and request.file_extension == ".cjs"
    result = ExecutionResult(stdout="1\n", stderr="", exit_code=0, duration_ms=3, runtime="python")
    body = json.loads(result.to_json())
    assert body["exitCode"] == 0 and body["durationMs"] == 3 and body["timedOut"] is False
    assert body["stdout"] == "1\n"
    assert body["timestamp"].endswith("Z") and len(body["executionId"]) == 36


@pytest.mark.parametrize(
    ("workdir", "resolved"),
    [(None, "/sandbox"), (".", "/sandbox"), ("a/b", "/sandbox/a/b"), ("/sandbox/a/../b", "/sandbox/b")],
)
def test_workdir_resolution(workdir: str | None, resolved: str) -> None:
    assert resolve_workdir(workdir) == resolved


@pytest.mark.parametrize("workdir", ["/", "/etc", "..", "/sandbox/../etc", "/sandboxx"])
def test_workdir_escape_refused(workdir: str) -> None:
    with pytest.raises(Isol8Error, match=r"^Working directory must be inside /sandbox$"):
        resolve_workdir(workdir)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512m", 512 << 20), ("1g", 1 << 30), ("256k", 256 << 10), ("1024", 1024), ("512mb", 512 << 20)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["invalid", "12x", "", "-1m", "0"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r'^Invalid memory limit format: ".*"\. Use e\.g\. "512m", "1g"\.$'):
        parse_size(text)


def test_frame_decoder_survives_any_chunking() -> None:
    rng = random.Random(7)
    frames = [(rng.choice([P.EVENT, P.STDOUT, P.STDERR]), rng.randbytes(rng.randint(0, 5000))) for _ in range(200)]
    stream = b"".join(P.frame(kind, payload) for kind, payload in frames)
    decoder = P.FrameDecoder()
    decoded = []
    offset = 0
    while offset < len(stream):
        step = rng.randint(1, 3000)
        decoded += decoder.feed(stream[offset : offset + step])
        offset += step
    assert decoded == frames


def test_data_frames_split_large_content() -> None:
    content = bytes(range(256)) * 10_000  # 2.5 MB: three DATA frames, then END
    frames = P.FrameDecoder().feed(b"".join(P.data_frames(content)))
    assert [kind for kind, _ in frames] == [P.DATA, P.DATA, P.DATA, P.END]
    assert b"".join(payload for _, payload in frames) == content


def test_container_config_is_hardened_by_default() -> None:
    config = container_config(Isol8Options(), "isol8:python", "python")
    host = config["host_config"]
    assert host["read_only"] is True
    assert host["cap_drop"] == ["ALL"] and host["cap_add"] == list(CAPABILITIES)
    assert "no-new-privileges" in host["security_opt"]
    assert any(opt.startswith("seccomp={") for opt in host["security_opt"])
    assert host["pids_limit"] == 64
    assert host["mem_limit"] == host["memswap_limit"] == 512 << 20
    assert host["nano_cpus"] == 1_000_000_000
    assert host["network_mode"] == "none" and config["network_disabled"] is True
    assert f"uid={SANDBOX_UID}" in host["tmpfs"]["/sandbox"] and "exec" in host["tmpfs"]["/sandbox"]
    assert "noexec" in host["tmpfs"]["/tmp"]
    assert config["labels"]["isol8.managed"] == "true"
    assert config["labels"]["isol8.runtime"] == "python"


def test_invalid_options_are_refused() -> None:
    with pytest.raises(ValidationError, match="Invalid memory limit format"):
        Isol8Options(memory_limit="lots")
    with pytest.raises(ValidationError):
        Isol8Options(cpu_limit=0)


def test_the_agents_json_codec_is_jsons() -> None:
    """protocol.py speaks JSON through `_json` (no `re` at the agent's start): the same bytes as json."""
    values = [
        {"op": "run", "argv": ["node", "/sandbox/main.mjs"], "env": {"K": 'välue \u2028 \ud800 "q" \\ \n'}},
        [1, -2, 3.5, 1e300, 2**70, True, False, None, "", {}, []],
        {"nested": {"deeper": [{"x": [None]}]}, "unicode": "日本語 🐍"},
    ]
    for value in values:
        assert P.dumps(value) == json.dumps(value, separators=(",", ":")).encode()
        assert P.loads(P.dumps(value)) == value
        assert P.loads(bytearray(json.dumps(value, indent=2).encode())) == value
    for bad in ("", "{bad", "[1,", "1 2", '{"a" 1}', "nul"):
        with pytest.raises(ValueError):
            P.loads(bad)


@pytest.mark.parametrize("field", ["cmd", "workdir"])
def test_a_nul_byte_in_a_command_or_a_path_is_a_bad_request(field: str) -> None:
    source = {"code": "print(1)"} if field == "workdir" else {}
    with pytest.raises(ValidationError, match=f"{field} cannot contain a NUL byte"):
        ExecutionRequest(**{**source, field: "a\0b"})
