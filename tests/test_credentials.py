"""The credentials file `isol8 login` writes: its modes, and which key a remote command uses."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import run_cli

from engine.errors import Isol8Error
from isol8_tui import credentials
from isol8_tui.credentials import Credentials


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("ISOL8_API_KEY", raising=False)
    return tmp_path


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    yield
    os.umask(previous)


def test_the_file_is_0600_and_its_folder_0700_even_with_an_open_umask(home: Path, open_umask: None) -> None:
    (home / ".isol8").mkdir(mode=0o755)
    path = credentials.save(Credentials(host="http://h:3000", token="isol8_secret", key_id="k1"))
    assert path == home / ".isol8" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["credentials.json"]  # no temporary file left
    assert credentials.load() == Credentials(host="http://h:3000", token="isol8_secret", key_id="k1")


def test_flag_then_environment_then_stored_key_for_the_same_host(monkeypatch: pytest.MonkeyPatch) -> None:
    credentials.save(Credentials(host="http://h:3000", token="stored"))
    assert credentials.api_key(None, "http://H:3000/") == "stored"
    monkeypatch.setenv("ISOL8_API_KEY", "from-env")
    assert credentials.api_key(None, "http://h:3000") == "from-env"
    assert credentials.api_key("flag", "http://h:3000") == "flag"


def test_an_expired_stored_key_says_to_log_in_again() -> None:
    credentials.save(Credentials(host="http://h:3000", token="old", expires_at="2020-01-01T00:00:00Z"))
    with pytest.raises(Isol8Error, match=r"^The stored login for http://h:3000 expired at 2020-01-01T00:00:00Z\. Run"):
        credentials.api_key(None, "http://h:3000")


def test_a_corrupt_file_says_to_log_out(home: Path) -> None:
    (home / ".isol8").mkdir()
    (home / ".isol8" / "credentials.json").write_text("{not json")
    with pytest.raises(Isol8Error, match=r"is not valid credentials\. Run `isol8 logout`"):
        credentials.api_key(None, "http://h:3000")


@pytest.mark.parametrize("host", ["http://127.0.0.1:9", "localhost:3000", "http://[bad"])
def test_login_to_an_unreachable_or_invalid_host_fails_in_one_line(host: str, home: Path) -> None:
    result = run_cli("login", "--host", host, "--key", "master")
    assert result.returncode == 1
    assert result.stderr.startswith("[ERR] Authentication failed: ") and result.stderr.count("\n") == 1, result.stderr
    assert not (home / ".isol8").exists()


def test_login_to_something_that_is_not_an_isol8_server(home: Path) -> None:
    class Answer(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args: object) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Answer) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = run_cli("login", "--host", url, "--key", "master")
        server.shutdown()
    assert (result.returncode, result.stderr) == (
        1,
        f"[ERR] Authentication failed: {url} did not answer as an isol8 server does. Check --host.\n",
    )
    assert not (home / ".isol8").exists()
