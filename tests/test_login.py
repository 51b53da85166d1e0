"""`isol8 login` / `logout` against a real `isol8 serve`, and the stored key used by `run --host` and
`session` (HOME is tmp_path, so the user's own credentials are never touched)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from helpers import run_cli
from test_server_support import MASTER_KEY, serve

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ISOL8_API_KEY", raising=False)
    return tmp_path / "home"


def test_login_stores_a_key_that_run_and_session_use_then_logout_forgets_it(tmp_path: Path, home: Path) -> None:
    with serve(tmp_path / "srv", {}, "--auth-db", str(tmp_path / "keys.db")) as srv:
        login = run_cli("login", "--host", srv.url + "/", "--key", MASTER_KEY, "--name", "laptop", "--ttl", "600000")
        assert login.returncode == 0, login.stderr
        assert login.stdout.splitlines()[0] == "Authenticated successfully"
        assert f"  Host:    {srv.url}\n" in login.stdout
        assert "  Stored:  ~/.isol8/credentials.json" in login.stdout

        path = home / ".isol8" / "credentials.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        stored = json.loads(path.read_text())
        assert set(stored) == {"host", "token", "expiresAt", "keyId"}
        assert stored["host"] == srv.url
        assert stored["token"] not in login.stdout + login.stderr  # never printed
        with srv.client() as master:
            keys = master.get("/auth/keys").json()["keys"]
        assert [k["name"] for k in keys if k["id"] == stored["keyId"]] == ["laptop"]

        run = run_cli("run", "--host", srv.url, "--session-id", "s-login", "-e", "print(6 * 7)")
        assert (run.returncode, run.stdout) == (0, "42\n"), run.stderr
        listed = run_cli("session", "list", "--host", srv.url)
        assert listed.returncode == 0, listed.stderr
        assert "s-login  [" in listed.stdout
        stopped = run_cli("session", "stop", "s-login", "--host", srv.url)
        assert (stopped.returncode, stopped.stdout) == (0, '[OK] Session "s-login" destroyed.\n'), stopped.stderr
        assert "s-login" not in run_cli("session", "list", "--host", srv.url).stdout

        elsewhere = run_cli("session", "list", "--host", "http://127.0.0.1:9")
        assert elsewhere.returncode == 1
        assert elsewhere.stderr == (
            f"[ERR] The stored login is for {srv.url}, not http://127.0.0.1:9. "
            "Use --key, or run `isol8 login --host http://127.0.0.1:9`.\n"
        )

        logout = run_cli("logout")
        assert (logout.returncode, logout.stdout) == (0, "[OK] Credentials removed from ~/.isol8/credentials.json\n")
        assert not path.exists()
        again = run_cli("logout")
        assert (again.returncode, again.stderr) == (0, "[INFO] No stored credentials found.\n")
        keyless = run_cli("run", "--host", srv.url, "-e", "print(1)")
        assert keyless.returncode == 1
        assert keyless.stderr == (
            "[ERR] API key required. Use --key, set ISOL8_API_KEY, or run `isol8 login --host URL --key MASTER`.\n"
        )


def test_login_without_an_auth_db_says_how_to_enable_it(tmp_path: Path, home: Path) -> None:
    with serve(tmp_path / "srv", {}) as srv:
        login = run_cli("login", "--host", srv.url, "--key", MASTER_KEY)
    assert login.returncode == 1
    assert login.stderr.splitlines() == [
        "[ERR] Authentication failed: DB-backed auth is not enabled (HTTP 400)",
        "[WARN] DB-backed auth may not be enabled on the server.",
        "[WARN] Start the server with --auth-db <path> to enable it.",
    ]
    assert not (home / ".isol8").exists()


def test_login_with_a_wrong_master_key_fails_and_stores_nothing(tmp_path: Path, home: Path) -> None:
    with serve(tmp_path / "srv", {}, "--auth-db", str(tmp_path / "keys.db")) as srv:
        login = run_cli("login", "--host", srv.url, "--key", "not-the-master-key")
    assert login.returncode == 1
    assert login.stderr.startswith("[ERR] Authentication failed: ")
    assert "(HTTP 401)" in login.stderr or "(HTTP 403)" in login.stderr
    assert not (home / ".isol8" / "credentials.json").exists()
