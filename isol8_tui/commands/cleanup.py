"""`isol8 cleanup`: remove every container isol8 manages (and its images with --images)."""

from __future__ import annotations

import click

from engine.engine import cleanup
from isol8_tui.output import err, user_errors


@click.command("cleanup")
@click.option("--images", is_flag=True, help="Also remove the isol8 images.")
def command(images: bool) -> None:
    """Remove all containers labelled isol8.managed=true."""
    with user_errors():
        report = cleanup(images=images)
    line = f"Removed {report.containers_removed} container(s)"
    if report.containers_failed:
        line += f", {report.containers_failed} failed"
    click.echo(line)
    if images:
        line = f"Removed {report.images_removed} image(s)"
        if report.images_failed:
            line += f", {report.images_failed} failed"
        click.echo(line)
    for error in report.errors:
        err(error)
    if report.errors:
        raise SystemExit(1)
