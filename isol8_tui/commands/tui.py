"""`isol8 tui`: the workbench, an editor with live output over persistent sessions."""

from __future__ import annotations

from pathlib import Path

import click

from engine.config import load_config
from engine.errors import Isol8Error
from engine.runtimes import RUNTIME_NAMES, detect_runtime
from isol8_tui.output import info, setup_logging, user_errors

DEBUG_LOG = Path("isol8-debug.log")


@click.command("tui")
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--no-watch", is_flag=True, help="Do not re-run when the file changes on disk.")
@click.option("-r", "--runtime", type=click.Choice(RUNTIME_NAMES), help="Runtime (default: from the extension).")
@click.option("--debug", is_flag=True, help=f"Log what the engine does into ./{DEBUG_LOG} (appended).")
def command(path: Path | None, no_watch: bool, runtime: str | None, debug: bool) -> None:
    """Open the workbench on PATH (created on first save if it does not exist).

    Edit, run and watch the output live; saving re-runs the file. The help screen (F1 unless
    `tui.keymap` rebinds it) lists the keys in force, the command palette every action.
    """
    with user_errors():
        loaded = load_config()
        setup_logging(debug, DEBUG_LOG)
        from isol8_tui.app import make_app, theme_names

        settings = loaded.config.tui
        if settings.theme not in theme_names():
            where = loaded.source or "the config"
            raise Isol8Error(
                f'Invalid config {where}: tui.theme: unknown theme "{settings.theme}". '
                f"Use one of: {', '.join(theme_names())}."
            )
        if path is not None:
            if path.is_dir():
                raise Isol8Error(f"{path} is a folder: pass a file.")
            if not path.parent.resolve().is_dir():
                raise Isol8Error(f"Folder not found: {path.parent}")
            if runtime is None:
                detect_runtime(str(path))  # an unknown extension: the registry's error, with its list
        app = make_app(path, runtime=runtime, watch=not no_watch, config=loaded.config)
    app.run()
    if debug:
        info(f"Debug log: {DEBUG_LOG.resolve()}")
