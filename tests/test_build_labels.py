"""`isol8 build`'s closing summary, and custom images' labels: ours and the reference's
`org.isol8.*`, both written, both read (so images the reference's `isol8 build` made are used)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator

import pytest
from helpers import run_cli

from engine.docker import DockerClient
from engine.images.custom import CustomImage, find_custom, list_custom

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_client")]

TAG = "isol8-test-summary"
REFERENCE_TAG = "isol8-test-reference-built"


@pytest.fixture
def cleanup(docker_client: DockerClient) -> Iterator[None]:
    yield
    for tag in (TAG, REFERENCE_TAG):
        docker_client.remove_image(tag)


def _reference_image(docker: DockerClient, labels: dict[str, str]) -> None:
    """An image as the reference's `isol8 build` labels it: `org.isol8.*` only."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as archive:
        dockerfile = b"FROM isol8:python\n"
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        archive.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    docker.build(context, REFERENCE_TAG, lambda _: None, labels=labels)


@pytest.mark.usefixtures("cleanup")
def test_build_ends_with_the_summary_and_writes_both_label_sets(docker_client: DockerClient) -> None:
    built = run_cli("build", "--base", "python", "--setup", "echo first", "--setup", "echo second", "--tag", TAG)
    assert built.returncode == 0, built.stderr
    assert built.stdout.endswith(
        f"[OK] Built image: {TAG}\n"
        "\n[DONE] Custom image build complete!\n"
        "       Runtime: python\n"
        "       Packages: (none)\n"
        "       Setup: echo first ...\n"
        f"       Image: {TAG}\n"
    ), built.stdout
    labels = docker_client.image_labels(TAG) or {}
    for prefix in ("isol8", "org.isol8"):
        assert labels[f"{prefix}.runtime"] == "python"
        assert labels[f"{prefix}.dependencies"] == ""
        assert labels[f"{prefix}.setup"] == "echo first\necho second"
    assert labels["isol8.deps.hash"] == labels["org.isol8.deps.hash"]
    assert len(labels["org.isol8.deps.hash"]) == 64

    again = run_cli("build", "--base", "python", "--setup", "echo first", "--setup", "echo second", "--tag", TAG)
    assert f"[OK] {TAG}: Up to date\n\n[DONE] Custom image build complete!\n" in again.stdout


@pytest.mark.usefixtures("cleanup")
def test_images_with_only_the_reference_labels_are_listed_found_and_run(docker_client: DockerClient) -> None:
    _reference_image(docker_client, {"org.isol8.runtime": "python", "org.isol8.dependencies": "colorama,six"})
    image = CustomImage(f"{REFERENCE_TAG}:latest", "python", ("colorama", "six"), None)
    assert image in list_custom(docker_client)
    assert find_custom(docker_client, "python", ["six"]) == image
    listed = run_cli("list-custom")
    assert REFERENCE_TAG in listed.stdout and "colorama, six" in listed.stdout

    docker_client.remove_image(REFERENCE_TAG)
    _reference_image(docker_client, {"org.isol8.runtime": "python", "org.isol8.setup": "echo ready > /sandbox/r"})
    used = run_cli("run", "--image", REFERENCE_TAG, "-e", "print(open('/sandbox/r').read().strip())")
    assert (used.returncode, used.stdout) == (0, "ready\n"), used.stderr
