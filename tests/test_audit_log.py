"""The audit logger on its own (no Docker): appends, stdout, retention, postLogScript, masking."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from engine.audit import STDOUT_PREFIX, AuditLogger, AuditRecord, acting_for, current_caller, new_record
from engine.errors import ConfigError
from engine.models import AuditOptions, ExecutionRequest, ResourceUsage


def _record(execution_id: str = "id-1", **fields: object) -> AuditRecord:
    request = ExecutionRequest(code="print(1)", metadata={"userId": "u1"})
    return new_record(request, execution_id, None).model_copy(update=fields)


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_disabled_logger_writes_nothing_and_creates_no_directory(tmp_path: Path) -> None:
    logger = AuditLogger(AuditOptions(log_dir=str(tmp_path / "audit")))
    logger.record(_record(), [])
    assert not (tmp_path / "audit").exists()


def test_record_is_one_json_line_without_code_or_output_by_default(tmp_path: Path) -> None:
    logger = AuditLogger(AuditOptions(enabled=True, log_dir=str(tmp_path)))
    logger.record(_record(stdout="out", stderr="err"), [])
    [line] = _lines(tmp_path / "executions.log")
    assert line["executionId"] == "id-1" and line["userId"] == "u1" and line["metadata"] == {"userId": "u1"}
    assert "code" not in line and "stdout" not in line and "stderr" not in line
    assert (tmp_path / "executions.log").stat().st_mode & 0o777 == 0o600


def test_code_hash_is_the_sha256_of_the_code_or_the_command() -> None:
    by_code = new_record(ExecutionRequest(code="print(1)"), "a", None)
    by_cmd = new_record(ExecutionRequest(cmd="echo hi"), "b", None)
    assert by_code.code_hash == hashlib.sha256(b"print(1)").hexdigest()
    assert by_cmd.code_hash == hashlib.sha256(b"echo hi").hexdigest()


def test_a_code_url_is_recorded_with_the_hash_it_had_to_match() -> None:
    digest = hashlib.sha256(b"print(1)").hexdigest()
    with_hash = new_record(ExecutionRequest(code_url="https://x.test/a.py", code_hash=f" {digest.upper()} "), "a", None)
    without = new_record(ExecutionRequest(code_url="https://x.test/a.py"), "b", None)
    assert (with_hash.code_url, with_hash.code_hash) == ("https://x.test/a.py", digest)
    assert without.code_hash is None


def test_included_code_output_error_and_metadata_are_masked(tmp_path: Path) -> None:
    options = AuditOptions(enabled=True, log_dir=str(tmp_path), include_code=True, include_output=True)
    record = _record(
        code="print('hunter2')",
        setup_script="echo hunter2",
        stdout="hunter2\n",
        error="bad hunter2",
        metadata={"k": "hunter2"},
    )
    AuditLogger(options).record(record, ["hunter2"])
    text = (tmp_path / "executions.log").read_text()
    assert "hunter2" not in text
    [line] = _lines(tmp_path / "executions.log")
    assert line["code"] == "print('***')" and line["setupScript"] == "echo ***" and line["stdout"] == "***\n"
    assert line["error"] == "bad ***" and line["metadata"] == {"k": "***"}


def test_resources_are_left_out_unless_tracked(tmp_path: Path) -> None:
    usage = ResourceUsage(cpu_time_ms=5.0)
    AuditLogger(AuditOptions(enabled=True, log_dir=str(tmp_path), track_resources=False)).record(
        _record(resource_usage=usage), []
    )
    assert "resourceUsage" not in _lines(tmp_path / "executions.log")[0]


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    """Records far larger than a pipe's atomic size, from many threads and two loggers at once."""
    options = AuditOptions(enabled=True, log_dir=str(tmp_path), include_output=True)
    loggers = [AuditLogger(options), AuditLogger(options)]
    big = "x" * 200_000

    def write(n: int) -> None:
        loggers[n % 2].record(_record(f"id-{n}", stdout=big + str(n)), [])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = _lines(tmp_path / "executions.log")
    assert sorted(str(line["executionId"]) for line in lines) == sorted(f"id-{n}" for n in range(20))
    assert all(line["stdout"] == big + str(line["executionId"]).removeprefix("id-") for line in lines)


def test_stdout_destination_prints_strict_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    AuditLogger(AuditOptions(enabled=True, destination="stdout", log_dir=str(tmp_path / "unused"))).record(
        _record(), []
    )
    out = capsys.readouterr().out
    assert out.startswith(STDOUT_PREFIX) and out.endswith("\n")
    assert json.loads(out.removeprefix(STDOUT_PREFIX))["executionId"] == "id-1"
    assert not (tmp_path / "unused").exists()


def test_log_dir_defaults_to_the_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOL8_AUDIT_DIR", str(tmp_path / "env"))
    assert AuditLogger(AuditOptions(enabled=True)).path == tmp_path / "env" / "executions.log"
    monkeypatch.delenv("ISOL8_AUDIT_DIR")
    assert AuditLogger(AuditOptions()).path == Path(".isol8_audit/executions.log")


def test_retention_removes_old_logs_only(tmp_path: Path) -> None:
    old = time.time() - 11 * 86_400
    for name in ("old.log", "old.jsonl", "old.txt", "new.log"):
        (tmp_path / name).write_text("x")
    for name in ("old.log", "old.jsonl", "old.txt"):
        os.utime(tmp_path / name, (old, old))
    AuditLogger(AuditOptions(enabled=True, log_dir=str(tmp_path), retention_days=10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.log", "old.txt"]


def test_retention_zero_keeps_everything(tmp_path: Path) -> None:
    (tmp_path / "old.log").write_text("x")
    os.utime(tmp_path / "old.log", (0, 0))
    AuditLogger(AuditOptions(enabled=True, log_dir=str(tmp_path), retention_days=0))
    assert (tmp_path / "old.log").exists()


def test_post_log_script_gets_the_path_without_a_shell(tmp_path: Path) -> None:
    # A shell would split this name at the space and run `touch pwned` after the `;`.
    script = tmp_path / "post log;touch pwned"
    seen = tmp_path / "seen"
    script.write_text(f'#!/bin/sh\nprintf "%s" "$1" > "{seen}"\n')
    script.chmod(0o755)
    logger = AuditLogger(AuditOptions(enabled=True, log_dir=str(tmp_path / "audit"), post_log_script=str(script)))
    logger.record(_record(), [])
    deadline = time.monotonic() + 10
    while not seen.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen.read_text() == str(tmp_path / "audit" / "executions.log")
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_a_failing_post_log_script_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    logger = AuditLogger(AuditOptions(enabled=True, log_dir=str(tmp_path), post_log_script=str(tmp_path / "missing")))
    logger.record(_record(), [])
    assert len(_lines(tmp_path / "executions.log")) == 1
    assert "could not start" in caplog.text


def test_an_unusable_log_dir_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"Cannot create the audit log directory .* Set audit.logDir"):
        AuditLogger(AuditOptions(enabled=True, log_dir=str(tmp_path / "file" / "sub")))


def test_the_caller_is_set_for_the_block_only() -> None:
    assert current_caller() is None
    with acting_for("acme", "key-1"):
        caller = current_caller()
        assert caller is not None and (caller.tenant_id, caller.key_id) == ("acme", "key-1")
        record = new_record(ExecutionRequest(code="1"), "x", caller)
        assert (record.tenant_id, record.key_id) == ("acme", "key-1")
    assert current_caller() is None
