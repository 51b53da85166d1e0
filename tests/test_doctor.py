"""`isol8 doctor` on the real daemon: every check ok on this machine, and each failure provoked.

The doctor runs as the real command in a fresh folder (its own config file, an empty HOME, no
$ISOL8_API_KEY), so no user config or saved login applies.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import ISOL8
from test_server_support import MASTER_KEY, free_port, serve

from engine import doctor

pytestmark = pytest.mark.docker

ORDER = [
    "docker",
    "docker socket",
    "docker version",
    "cgroups",
    "disk",
    "images",
    "config",
    "seccomp",
    "filtered network",
    "gvisor",
    "server",
    "port",
]


def run_doctor(tmp_path: Path, config: dict[str, Any] | None, *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    if config is not None:
        (tmp_path / "isol8.config.json").write_text(json.dumps(config))
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key not in ("ISOL8_API_KEY", "ISOL8_PORT", "PORT")}
    done = subprocess.run(
        [ISOL8, "doctor", "--json", "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "HOME": str(home)},
        timeout=300,
        check=False,
    )
    report = json.loads(done.stdout)
    names = [check["name"] for check in report["checks"]]
    assert names == ORDER, done.stderr
    return done.returncode, {check["name"]: check for check in report["checks"]}


def test_every_check_passes_on_a_good_machine(tmp_path: Path) -> None:
    code, checks = run_doctor(tmp_path, {"defaults": {"timeoutMs": 20000}})
    assert code == 0, checks
    assert {name: check["status"] for name, check in checks.items()} == {
        **dict.fromkeys(ORDER, "ok"),
        "gvisor": checks["gvisor"]["status"],  # optional: ok where runsc is registered, else skipped
        "server": "skipped",
    }
    assert checks["gvisor"]["status"] in ("ok", "skipped")
    assert not any("remedy" in check for check in checks.values() if check["status"] == "ok")
    values = {value["key"]: value for value in checks["config"]["values"]}
    assert values["defaults.timeoutMs"] == {"key": "defaults.timeoutMs", "value": 20000, "source": "file"}
    assert values["defaults.memoryLimit"]["source"] == "default"
    assert "server.metricsPublic" in values


def test_text_report_is_one_line_per_check_and_exits_0(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(
        [ISOL8, "doctor", "--port", str(free_port())],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HOME": str(home)},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert [line.split("] ", 1)[1].split(":", 1)[0] for line in lines] == ORDER


def test_broken_config_fails_with_the_guides_remedy(tmp_path: Path) -> None:
    code, checks = run_doctor(tmp_path, {"defaults": {"timeoutMs": "soon"}})
    assert code == 1
    assert checks["config"]["status"] == "failure"
    assert "defaults.timeoutMs" in checks["config"]["detail"]
    assert checks["config"]["remedy"] == doctor.CONFIG_REMEDY
    assert checks["seccomp"]["status"] == "skipped"
    assert checks["filtered network"]["status"] == "skipped"


def test_missing_prebuilt_image_tag_fails_the_images_check(tmp_path: Path) -> None:
    config = {"prebuiltImages": [{"tag": "isol8-doctor-missing:nope", "runtime": "python"}]}
    code, checks = run_doctor(tmp_path, config)
    assert code == 1
    assert checks["images"]["status"] == "failure"
    assert "isol8-doctor-missing:nope" in checks["images"]["detail"]
    assert checks["images"]["remedy"] == doctor.IMAGES_REMEDY


@pytest.mark.parametrize("kind", ["missing", "not-json", "no-syscalls"])
def test_custom_seccomp_profile_that_does_not_load_fails(tmp_path: Path, kind: str) -> None:
    profile = tmp_path / "profile.json"
    if kind == "not-json":
        profile.write_text("{ nope")
    elif kind == "no-syscalls":
        profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO"}))
    code, checks = run_doctor(tmp_path, {"security": {"seccomp": "custom", "customProfilePath": str(profile)}})
    assert code == 1
    assert checks["seccomp"]["status"] == "failure"
    assert str(profile) in checks["seccomp"]["detail"]
    assert checks["seccomp"]["remedy"] == doctor.SECCOMP_REMEDY
    assert checks["filtered network"]["status"] == "skipped"  # a sandbox could not start under it


def test_unconfined_seccomp_is_a_warning(tmp_path: Path) -> None:
    code, checks = run_doctor(tmp_path, {"security": {"seccomp": "unconfined"}})
    assert checks["seccomp"]["status"] == "warning"
    assert code == (1 if any(c["status"] == "failure" for c in checks.values()) else 2)


def test_busy_port_is_a_warning_with_the_port_remedy(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, checks = run_doctor(tmp_path, {}, "--port", str(port))
    assert checks["port"]["status"] == "warning"
    assert f"127.0.0.1:{port} is in use" in checks["port"]["detail"]
    assert checks["port"]["remedy"] == doctor.PORT_REMEDY
    assert code == 2


@pytest.mark.parametrize(
    ("config", "symptom"),
    [
        # Too few processes for the proxy and the firewall setup: the guide's own symptom.
        ({"defaults": {"pidsLimit": 3}}, "Failed to set up iptables rules"),
        ({"security": {"runtime": "no-such-runtime"}}, "Unknown runtime specified no-such-runtime"),
    ],
)
def test_filtered_network_failure_is_reported(tmp_path: Path, config: dict[str, Any], symptom: str) -> None:
    """The end-to-end sandbox runs under the config in force, so what breaks a run breaks the check."""
    code, checks = run_doctor(tmp_path, config)
    assert code == 1
    assert checks["filtered network"]["status"] == "failure"
    assert symptom in checks["filtered network"]["detail"]
    assert checks["filtered network"]["remedy"] == doctor.NETWORK_REMEDY


def test_server_check_tells_401_from_403_against_a_real_server(tmp_path: Path) -> None:
    with serve(tmp_path / "server") as server:
        (tmp_path / "a").mkdir()
        _, right = run_doctor(tmp_path / "a", None, "--host", server.url, "--key", MASTER_KEY)
        assert right["server"]["status"] == "ok", right["server"]
        (tmp_path / "b").mkdir()
        code, wrong = run_doctor(tmp_path / "b", None, "--host", server.url, "--key", "not-the-key")
        assert code == 1
        assert (wrong["server"]["status"], wrong["server"]["remedy"]) == ("failure", doctor.AUTH_403_REMEDY)
        (tmp_path / "c").mkdir()
        _, none = run_doctor(tmp_path / "c", None, "--host", server.url)
        assert (none["server"]["status"], none["server"]["remedy"]) == ("failure", doctor.AUTH_401_REMEDY)
    (tmp_path / "d").mkdir()
    _, gone = run_doctor(tmp_path / "d", None, "--host", server.url, "--key", MASTER_KEY)
    assert (gone["server"]["status"], gone["server"]["remedy"]) == ("failure", doctor.HEALTH_REMEDY)
    assert gone["server"]["detail"].startswith("Remote server health check failed")
