"""`isol8 build` and `isol8 list-custom`: images with packages (and a setup script) baked in."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from engine import readiness
from engine.docker import DockerClient
from engine.images.custom import build_custom, list_custom
from engine.packages import validate_packages
from engine.runtimes import RUNTIMES, get_runtime
from isol8_tui.commands.run import _setup_script
from isol8_tui.commands.setup import build_progress
from isol8_tui.output import ok, user_errors


@click.command("build")
@click.option(
    "--base",
    "runtime",
    required=True,
    metavar="RUNTIME",
    help=f"One of: {', '.join(n for n, s in RUNTIMES.items() if s.image_install)}.",
)
@click.option("--install", "packages", multiple=True, metavar="PKG", help="Package to bake in (repeatable, a,b ok).")
@click.option("--setup", "setup", multiple=True, metavar="CMD|FILE", help="Setup script run before each execution.")
@click.option("--tag", required=True, metavar="TAG", help="Tag of the new image, e.g. my-python-ml.")
@click.option("--force", is_flag=True, help="Rebuild even if an identical image exists.")
def command(runtime: str, packages: tuple[str, ...], setup: tuple[str, ...], tag: str, force: bool) -> None:
    """Build a custom image on isol8:<runtime> with packages baked in."""
    names = [name for value in packages for name in value.split(",")]
    with user_errors():
        get_runtime(runtime)
        script = _setup_script(setup)
        with build_progress() as progress:
            readiness.prepare([runtime], progress)
        docker = DockerClient()
        ok(f"Base image ready: {runtime}")
        console = Console(stderr=True)
        with console.status(f"[..] Building {tag}") as status:
            built = build_custom(
                docker,
                runtime,
                names,
                script,
                tag,
                force=force,
                progress=lambda line: status.update(f"[..] {line[:100]}"),
            )
    ok(f"Built image: {tag}" if built else f"{tag}: Up to date")
    _summary(runtime, validate_packages(names), script, tag)


def _summary(runtime: str, packages: list[str], setup_script: str | None, tag: str) -> None:
    """The reference's closing lines: what the image holds."""
    click.echo("\n[DONE] Custom image build complete!")
    click.echo(f"       Runtime: {runtime}")
    click.echo(f"       Packages: {', '.join(packages) or '(none)'}")
    if setup_script:
        lines = setup_script.strip().splitlines() or [""]
        click.echo(f"       Setup: {lines[0]}{' ...' if len(lines) > 1 else ''}")
    click.echo(f"       Image: {tag}")


@click.command("list-custom")
def list_command() -> None:
    """List the custom images (whatever their tag)."""
    with user_errors():
        docker = DockerClient()
        docker.ping()
        images = list_custom(docker)
    if not images:
        click.echo("No custom isol8 images found.")
        return
    table = Table("Image", "Runtime", "Dependencies", "Setup")
    for image in images:
        setup = (image.setup_script or "").splitlines()
        table.add_row(image.tag, image.runtime, ", ".join(image.dependencies) or "(none)", setup[0] if setup else "")
    Console().print(table)
