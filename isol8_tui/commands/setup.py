"""`isol8 setup`: build the runtime images (a no-op when they are up to date)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click
from rich.console import Console

from engine import readiness
from engine.config import load_config
from engine.docker import DockerClient, Progress
from engine.images import ensure_images
from engine.images.custom import build_custom
from isol8_tui.output import ok, user_errors


@contextlib.contextmanager
def build_progress() -> Iterator[Progress]:
    """A progress callback for image builds: a live status line on stderr (a first build takes a
    minute or two), with each image's start printed as a line of its own."""
    console = Console(stderr=True)
    with console.status("[..] Building isol8 images", spinner="dots") as status:

        def progress(line: str) -> None:
            status.update(f"[..] {line[:100]}")
            if line.startswith(("building ", "isol8 images")):
                console.print(f"[..] {line[0].upper()}{line[1:]}", highlight=False)

        yield progress


@click.command("setup")
@click.option("--force", is_flag=True, help="Rebuild even if the images are up to date.")
@click.option(
    "--ca-bundle",
    metavar="PATH",
    help="Extra CA certificates (PEM) for TLS-intercepting networks; default $ISOL8_CA_BUNDLE.",
)
def command(force: bool, ca_bundle: str | None) -> None:
    """Build the isol8 images (base, python, node, bun, deno, bash)."""
    with user_errors():
        prebuilt = load_config().config.prebuilt_images
        docker = DockerClient()
        docker.ping()
        ok("Docker is running")
        with build_progress() as progress:
            statuses = ensure_images(
                docker, None, force=force, ca_bundle=readiness.ca_bundle(ca_bundle), progress=progress
            )
        for status in statuses:
            ok(f"{status.image}" if status.built else f"{status.image}: Up to date")
        for image in prebuilt:
            what = f"{image.tag} ({image.runtime}: {', '.join(image.install_packages) or 'setup only'})"
            built = build_custom(
                docker, image.runtime, image.install_packages, image.setup_script, image.tag, force=force
            )
            ok(what if built else f"{what}: Up to date")
    click.echo("\n[DONE] Setup complete!")
