"""The `isol8` command line: one click group, one module per subcommand under `commands/`."""

from __future__ import annotations

import click

from engine import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.version_option(__version__, "-V", "--version", message="%(version)s")
@click.pass_context
def main(ctx: click.Context) -> None:
    """isol8: run untrusted code in hardened Docker containers."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _register() -> None:
    from isol8_tui.commands import (
        build,
        cleanup,
        cluster,
        config,
        doctor,
        login,
        mcp,
        run,
        serve,
        session,
        setup,
        tui,
    )

    for module in (setup, build, run, config, cleanup, serve, login, session, tui, mcp, doctor, cluster):
        main.add_command(module.command)
    main.add_command(build.list_command)
    main.add_command(login.logout_command)


_register()
