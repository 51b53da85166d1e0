"""`isol8 setup`: build the runtime images (a no-op when they are up to date)."""

from __future__ import annotations

import os
from pathlib import Path

import click
from rich.console import Console

from engine.config import load_config
from engine.docker import DockerClient
from engine.images import ImageStatus, ensure_images
from engine.images.custom import build_custom
from isol8_tui.output import ok, user_errors


def build_images(
    runtimes: list[str] | None,
    *,
    force: bool = False,
    refresh_base: bool = True,
    ca_bundle: Path | None = None,
) -> list[ImageStatus]:
    """Build with a live status line on stderr (a first build takes a minute or two)."""
    console = Console(stderr=True)
    with console.status("[..] Building isol8 images", spinner="dots") as status:

        def progress(line: str) -> None:
            status.update(f"[..] {line[:100]}")
            if line.startswith("building "):
                console.print(f"[..] {line[0].upper()}{line[1:]}", highlight=False)

        return ensure_images(
            DockerClient(),
            runtimes,
            force=force,
            refresh_base=refresh_base,
            ca_bundle=ca_bundle,
            progress=progress,
        )


def ca_bundle_option(value: str | None) -> Path | None:
    chosen = value or os.environ.get("ISOL8_CA_BUNDLE")
    return Path(chosen) if chosen else None


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
        for status in build_images(None, force=force, ca_bundle=ca_bundle_option(ca_bundle)):
            ok(f"{status.image}" if status.built else f"{status.image}: Up to date")
        for image in prebuilt:
            what = f"{image.tag} ({image.runtime}: {', '.join(image.install_packages) or 'setup only'})"
            built = build_custom(
                docker, image.runtime, image.install_packages, image.setup_script, image.tag, force=force
            )
            ok(what if built else f"{what}: Up to date")
    click.echo("\n[DONE] Setup complete!")
