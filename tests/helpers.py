"""Helpers shared by tests (imported as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ISOL8 = str(Path(sys.executable).with_name("isol8"))


def run_cli(
    *args: str, input: str | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real `isol8` command (the one installed next to this interpreter)."""
    return subprocess.run(
        [ISOL8, *args],
        input=input,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=timeout,
        check=False,
    )
