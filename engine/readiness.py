"""Is this machine ready to run sandboxes: the Docker daemon answers and the runtimes' images are
current. `isol8 run`, `isol8 serve` and the workbench all go through `prepare`, so the sequence
(ping, check, build what is missing with progress) is written once."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from engine.docker import DockerClient, Progress
from engine.images import ensure_images, image_ready

CA_BUNDLE_ENV = "ISOL8_CA_BUNDLE"


def ca_bundle(value: str | None = None) -> Path | None:
    """Extra CA certificates for image builds: `value`, else $ISOL8_CA_BUNDLE, else none."""
    chosen = value or os.environ.get(CA_BUNDLE_ENV)
    return Path(chosen) if chosen else None


def stale_images(runtimes: Sequence[str], docker: DockerClient | None = None) -> list[str]:
    """The runtimes whose image is missing or outdated; DockerUnavailable when the daemon is down."""
    docker = docker or DockerClient()
    docker.ping()
    return [runtime for runtime in runtimes if not image_ready(docker, runtime)]


def prepare(runtimes: Sequence[str], progress: Progress = lambda _: None) -> list[str]:
    """Ping Docker and build the images of `runtimes` that are missing or outdated (a first build
    takes a minute or two; `progress` hears each step). Returns the runtimes that were built."""
    docker = DockerClient()
    stale = stale_images(runtimes, docker)
    if stale:
        progress(f"isol8 images missing or outdated for {', '.join(stale)}: building")
        build(stale, progress, docker)
    return stale


def build(runtimes: Sequence[str], progress: Progress, docker: DockerClient | None = None) -> None:
    """Build `runtimes`' images on the current base (a base built with other options is kept)."""
    ensure_images(
        docker or DockerClient(), list(runtimes), refresh_base=False, ca_bundle=ca_bundle(), progress=progress
    )
