"""The workbench on the real engine: a stateful python session keeps its variables between runs, and
an object's `_repr_html_` table comes back as a result the workbench shows as a table."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable
from tui_helpers import main_screen, run_and_wait, wait_for

from engine.config import TuiSettings
from engine.docker import DockerClient
from isol8_tui.app import make_app
from isol8_tui.sessions import SessionSpec
from isol8_tui.widgets.results import ResultView

pytestmark = pytest.mark.docker

DEFINE = '''\
x = 41
class Scores:
    """A DataFrame's display protocol, without pandas."""

    def _repr_html_(self):
        return "<table><thead><tr><th>name</th><th>score</th></tr></thead>" \\
            "<tbody><tr><td>ada</td><td>36</td></tr><tr><td>alan</td><td>41</td></tr></tbody></table>"

    def __repr__(self):
        return "Scores(2 rows)"
'''

USE = "print(x + 1)\nScores()\n"


async def test_variables_survive_two_runs_and_an_html_table_is_shown_as_a_table(
    docker_client: DockerClient, workdir: Path
) -> None:
    path = workdir / "analysis.py"
    path.write_text(DEFINE)
    app = make_app(path, watch=False, cursor_blink=False, animations=False, settings=TuiSettings(images=False))
    async with app.run_test(size=(120, 36)) as pilot:
        screen = main_screen(app)
        await wait_for(pilot, lambda: screen.started, timeout=60)
        session = screen.create_session(SessionSpec("python", stateful=True))
        assert session is not None
        await wait_for(pilot, lambda: session.state == "idle", timeout=90)

        await run_and_wait(pilot, timeout=90)
        status = str(screen.runbar.query_one("#status").render())
        assert "✓ exit 0" in status and "state fresh" in status, status

        screen.editor_pane.editor.text = USE
        await run_and_wait(pilot, timeout=90)
        status = str(screen.runbar.query_one("#status").render())
        assert "✓ exit 0" in status and "state kept" in status, (status, screen.outputs.stderr.lines)
        assert screen.outputs.stdout.lines == ["42", ""]
        [view] = screen.outputs.results.query(ResultView)
        assert view.result.is_main_result and view.result.text() == "Scores(2 rows)"
        assert view.shown.kind == "table"
        table = view.query_one(DataTable)
        assert [str(column.label).strip() for column in table.columns.values()] == ["name", "score"]
        assert [[str(cell).strip() for cell in table.get_row_at(i)] for i in range(table.row_count)] == [
            ["ada", "36"],
            ["alan", "41"],
        ]
