"""At 80x24, 120x35, 160x45 and 200x50 every view fits and says what it means."""

from __future__ import annotations

import pytest
from scenes import FETCHING, FILTERED, SIZES
from textual.widgets import Checkbox
from textual.widgets._footer import FooterKey
from tui_helpers import main_screen, run_and_wait, wait_for

from isol8_tui.widgets.network import NetworkTable


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
async def test_every_label_fits_and_says_what_it_means(fake_app, size: tuple[int, int]) -> None:
    width, _ = size
    app = fake_app(FETCHING)
    async with app.run_test(size=size) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started)
        session = screen.create_session(FILTERED)
        assert session is not None
        await run_and_wait(pilot)
        screen.action_focus_pane("network")
        await pilot.pause()
        # the top bar names the selected session and its network, whole
        target = screen.topbar.query_one("#target")
        assert f"{session.name} net filtered" in str(target.render())
        assert target.region.right <= width and target.region.width >= len(f"▸ {session.name} net filtered")
        # the run bar's network picker says it is for new sessions; keep output shows no mark when off
        assert "new: net" in str(screen.runbar.query_one("#network-policy").query_one("SelectCurrent Static").render())
        keep = screen.runbar.query_one("#keep-output", Checkbox)
        assert not keep.value and "X" not in str(keep.render())
        # every footer key is on screen, none cut (the footer recomposes after the focus moved: wait for it)
        await wait_for(pilot, lambda: "Run" in {key.description for key in screen.query(FooterKey)})
        footer_keys = list(screen.query(FooterKey))
        assert footer_keys and all(key.region.right <= width for key in footer_keys if key.display)
        assert {key.description for key in footer_keys} >= {"Run", "Help", "Jump"}
        # the inspector's verdict, status, size and duration are on screen
        table = screen.query_one(NetworkTable)
        for column in ("action", "status", "bytes", "ms"):
            index = [c.key.value for c in table.ordered_columns].index(column)
            left = sum(c.get_render_width(table) for c in table.ordered_columns[:index])
            assert table.region.x + left + table.ordered_columns[index].get_render_width(table) <= table.region.right
        # the elapsed time of a run ticks faster than once a second
        from isol8_tui.screens.main import STATUS_TICK_SECONDS

        assert STATUS_TICK_SECONDS < 1
