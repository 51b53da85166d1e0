"""`isol8 serve --update`, which the reference's CLI uses to re-download its standalone server binary:
accepted, it says there is nothing to update, and the server starts as usual."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from test_server_support import serve

pytestmark = pytest.mark.docker


def test_update_says_there_is_nothing_to_update_and_serves(tmp_path: Path) -> None:
    with serve(tmp_path / "srv", {}, "--update") as srv:
        assert httpx.get(f"{srv.url}/health", timeout=5).json()["status"] == "ok"
    assert srv.stderr().startswith(
        "[INFO] This server runs in-process (no standalone binary to download): there is nothing to update.\n"
    )
