"""The doctor's checks that need no daemon: given Docker's own answers, or none at all."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import ISOL8

from engine import doctor
from engine.config import load_config


def test_unreachable_docker_fails_and_skips_what_needs_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    done = subprocess.run(
        [ISOL8, "doctor", "--json"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60, check=False
    )
    assert done.returncode == 1
    checks = {check["name"]: check for check in json.loads(done.stdout)["checks"]}
    assert (checks["docker"]["status"], checks["docker"]["remedy"]) == ("failure", doctor.DOCKER_REMEDY)
    assert checks["docker socket"]["status"] == "failure"
    assert "no-docker.sock does not exist" in checks["docker socket"]["detail"]
    for name in ("docker version", "cgroups", "disk", "images", "filtered network", "gvisor"):
        assert checks[name]["status"] == "skipped", name
    assert checks["config"]["status"] == "ok"  # what needs no daemon is still checked


def test_socket_without_access_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = tmp_path / "docker.sock"
    sock.touch(mode=0o000)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root passes every access check
    check = doctor.check_socket()
    assert (check.status, check.remedy) == ("failure", doctor.SOCKET_REMEDY)


def test_old_daemon_fails_the_version_check() -> None:
    assert doctor.check_version({}, {"Version": "19.03.1", "ApiVersion": "1.40"}).status == "failure"
    assert doctor.check_version({}, {"Version": "27.1.0", "ApiVersion": "1.46"}).status == "ok"


def test_cgroups_without_memory_or_pids_limits_fail() -> None:
    info = {"CgroupVersion": "2", "CgroupDriver": "systemd", "MemoryLimit": True, "PidsLimit": False}
    check = doctor.check_cgroups(info)
    assert check.status == "failure" and "pids" in check.detail
    assert doctor.check_cgroups({**info, "PidsLimit": True}).status == "ok"


def test_disk_that_cannot_be_measured_is_a_warning(tmp_path: Path) -> None:
    assert doctor.check_disk({"DockerRootDir": str(tmp_path / "missing")}).status == "warning"
    assert doctor.check_disk({"DockerRootDir": str(tmp_path)}).status in ("ok", "warning", "failure")


def test_configured_gvisor_that_docker_lacks_fails(tmp_path: Path) -> None:
    (tmp_path / "isol8.config.json").write_text(json.dumps({"security": {"runtime": "runsc"}}))
    loaded = load_config(tmp_path)
    check = asyncio.run(doctor.check_gvisor(doctor.DockerClient(), {"Runtimes": {"runc": {}}}, loaded))
    assert (check.status, check.remedy) == ("failure", doctor.GVISOR_REMEDY)
    optional = asyncio.run(doctor.check_gvisor(doctor.DockerClient(), {"Runtimes": {"runc": {}}}, None))
    assert optional.status == "skipped"


def test_unreachable_server_fails_the_health_check() -> None:
    check = doctor.check_server("http://127.0.0.1:9", None)  # the discard port: nothing listens
    assert (check.status, check.remedy) == ("failure", doctor.HEALTH_REMEDY)
    assert check.detail.startswith("Remote server health check failed")


def test_exit_code_is_1_for_failures_2_for_warnings_only() -> None:
    def report(*statuses: doctor.Status) -> doctor.DoctorReport:
        return doctor.DoctorReport(
            checks=[doctor.Check(name=str(i), status=s, detail="") for i, s in enumerate(statuses)]
        )

    assert report("ok", "skipped").exit_code == 0
    assert report("ok", "warning").exit_code == 2
    assert report("warning", "failure").exit_code == 1
