"""SVG snapshots of the main views on the fake engine (the same scenes as `python tests/tui/scenes.py`).

Update after a deliberate UI change: `.venv/bin/pytest tests/tui/test_snapshots.py --snapshot-update`,
then look at the SVGs under tests/tui/__snapshots__/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scenes import SCENES, Scene, build_app


@pytest.mark.parametrize("scene", SCENES, ids=[scene.name for scene in SCENES])
def test_view(scene: Scene, snap_compare, workdir: Path) -> None:
    app = build_app(scene, workdir)
    assert snap_compare(app, run_before=scene.drive, terminal_size=scene.size)
