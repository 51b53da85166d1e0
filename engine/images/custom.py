"""Custom images: packages (and a setup script) baked onto `isol8:<runtime>`, found again by label.

A run that asks for packages an image already has (an exact match or a subset of its
dependencies) uses that image and installs nothing. Images carry our `isol8.*` labels and the
reference's `org.isol8.*` ones; images the reference's `isol8 build` made (only `org.isol8.*`) are
found and used too.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from dataclasses import dataclass

from engine.docker import DockerClient, Progress
from engine.errors import Isol8Error
from engine.packages import validate_packages
from engine.runtimes import RUNTIMES, get_runtime

CUSTOM_LABEL = "isol8.custom"
REFERENCE_RUNTIME_LABEL = "org.isol8.runtime"
_LABELS = ("runtime", "dependencies", "deps.hash", "setup")
"""The recipe labels, written as `isol8.<name>` and as the reference's `org.isol8.<name>`."""
_TAG = re.compile(r"^[a-z0-9][a-z0-9._/-]{0,127}(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?$")
_RESERVED = re.compile(rf"^isol8(:(base|rootfs|{'|'.join(RUNTIMES)}))?$")


@dataclass(frozen=True)
class CustomImage:
    tag: str
    runtime: str
    dependencies: tuple[str, ...]
    setup_script: str | None


def validate_tag(tag: str) -> str:
    if not _TAG.match(tag) or ".." in tag:
        raise Isol8Error(f'Invalid image tag: "{tag}". Use lowercase letters, digits and . _ / -, then :version.')
    if _RESERVED.match(tag):
        raise Isol8Error(f'The tag "{tag}" is reserved for isol8\'s own images; choose another one.')
    return tag


def deps_hash(runtime: str, packages: list[str], setup_script: str | None) -> str:
    recipe = json.dumps({"runtime": runtime, "packages": packages, "setup": setup_script}, sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()


def build_custom(
    docker: DockerClient,
    runtime: str,
    packages: list[str],
    setup_script: str | None,
    tag: str,
    *,
    force: bool = False,
    progress: Progress = lambda _: None,
) -> bool:
    """Build `tag`; False when an identical image already exists (and not `force`)."""
    get_runtime(runtime)
    validate_tag(tag)
    packages = validate_packages(packages)
    if not packages and not setup_script:
        raise Isol8Error("No packages or setup script specified. Use --install <package> or --setup <command>.")
    digest = deps_hash(runtime, packages, setup_script)
    existing = docker.image_labels(tag)
    if existing and label(existing, "deps.hash") == digest and not force:
        return False
    lines = [f"FROM isol8:{runtime}", "USER root"]
    if packages:
        lines.append(f"RUN {json.dumps(get_runtime(runtime).image_install_argv(packages))}")
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as archive:
        dockerfile = ("\n".join(lines) + "\n").encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        archive.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    recipe = dict(zip(_LABELS, (runtime, ",".join(packages), digest, setup_script or ""), strict=True))
    labels = {CUSTOM_LABEL: "true"}
    for prefix in ("isol8", "org.isol8"):
        labels.update({f"{prefix}.{name}": value for name, value in recipe.items()})
    docker.build(context, tag, progress, labels=labels)
    return True


def label(labels: dict[str, str], name: str) -> str:
    """A recipe label (`runtime`, `dependencies`, `deps.hash`, `setup`): ours, else the reference's."""
    return labels.get(f"isol8.{name}") or labels.get(f"org.isol8.{name}") or ""


def list_custom(docker: DockerClient) -> list[CustomImage]:
    """Every custom image, ours (`isol8.custom`) and the reference's (`org.isol8.runtime`), by tag."""
    found = {image["Id"]: image for image in docker.images(f"{CUSTOM_LABEL}=true")}
    found.update({image["Id"]: image for image in docker.images(REFERENCE_RUNTIME_LABEL)})
    images = []
    for image in found.values():
        labels = image.get("Labels") or {}
        for tag in image.get("RepoTags") or []:
            if _RESERVED.match(tag.removesuffix(":latest")) or not label(labels, "runtime"):
                continue
            deps = tuple(d for d in label(labels, "dependencies").split(",") if d)
            images.append(CustomImage(tag, label(labels, "runtime"), deps, label(labels, "setup") or None))
    return sorted(images, key=lambda image: image.tag)


def find_custom(docker: DockerClient, runtime: str, packages: list[str]) -> CustomImage | None:
    """The best image with all of `packages`: an exact match, else the one with the fewest extras."""
    wanted = set(packages)
    matches = [
        image
        for image in list_custom(docker)
        if image.runtime == runtime and wanted <= set(image.dependencies) and not image.setup_script
    ]
    return min(matches, key=lambda image: (len(image.dependencies), image.tag), default=None)
