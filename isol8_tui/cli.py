"""The `isol8` command line: one click group, one module per subcommand under `commands/`."""

from __future__ import annotations

import click

from engine import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", message="%(version)s")
def main() -> None:
    """isol8: run untrusted code in hardened Docker containers."""


def _register() -> None:
    from isol8_tui.commands import cleanup, config, run, setup

    for module in (setup, run, config, cleanup):
        main.add_command(module.command)


_register()
