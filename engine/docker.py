"""The only module that talks to docker-py. Blocking calls; the engine runs them in threads."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
from docker import errors as docker_errors
from docker.utils import kwargs_from_env

from engine.errors import DockerUnavailable, ImageMissing, Isol8Error
from engine.hardening import MANAGED_LABEL

Progress = Callable[[str], None]


class DockerClient:
    """A thin, typed face over docker-py's low-level API (lazily connected)."""

    def __init__(self) -> None:
        self._api: docker.APIClient | None = None

    @property
    def api(self) -> docker.APIClient:
        if self._api is None:
            try:
                self._api = docker.APIClient(**kwargs_from_env(), version="auto", timeout=120, max_pool_size=64)
            except docker_errors.DockerException:
                raise DockerUnavailable.at(_docker_host()) from None
        return self._api

    def ping(self) -> None:
        try:
            self.api.ping()
        except (docker_errors.DockerException, OSError):
            raise DockerUnavailable.at(_docker_host()) from None

    # --- containers -------------------------------------------------------------------------------
    def create_container(self, config: dict[str, Any]) -> str:
        """Create from `hardening.container_config` output; `keep` leaves stdin open after detach."""
        config = dict(config)
        keep = config.pop("keep", False)
        host_config = self.api.create_host_config(**config.pop("host_config"))
        # No command: the image's entrypoint (the agent) alone; types-docker omits None, docker-py takes it.
        image = config.pop("image")
        body = self.api.create_container_config(image, None, host_config=host_config, **config)  # type: ignore[arg-type]
        if keep:
            body["StdinOnce"] = False
        try:
            created: dict[str, str] = self.api.create_container_from_config(body)
            return created["Id"]
        except docker_errors.ImageNotFound:
            raise ImageMissing.of(image) from None
        except docker_errors.APIError as exc:
            raise Isol8Error(f"Cannot create the sandbox container: {_short(exc)}") from None

    def attach(self, container_id: str) -> socket.socket:
        """A raw socket on the container's stdin/stdout (attach before start loses nothing)."""
        # stderr too: the agent's own (a traceback, the proxy's) is kept for the report if it dies.
        raw = self.api.attach_socket(container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        sock: socket.socket = getattr(raw, "_sock", raw)
        # Take the descriptor over (not a duplicate): the connection must end the moment the engine
        # closes its end. A duplicate left docker-py's copy open until a garbage collection, and a
        # daemon still writing into it made the container's removal hang for the API timeout.
        owned = socket.socket(fileno=sock.detach())
        raw.close()
        return owned

    def start(self, container_id: str) -> None:
        try:
            self.api.start(container_id)
        except docker_errors.APIError as exc:
            raise Isol8Error(f"Cannot start the sandbox container: {_short(exc)}") from None

    def remove(self, container_id: str) -> None:
        try:
            self.api.remove_container(container_id, force=True)
        except docker_errors.NotFound:
            pass
        except docker_errors.APIError as exc:
            if exc.status_code != 409:  # removal already in progress (auto-remove)
                raise

    # --- the doctor's probe (engine/doctor.py): a network and a server container on it -----------
    def create_network(self, name: str) -> None:
        self.api.create_network(name, driver="bridge", labels={MANAGED_LABEL: "true"})

    def remove_network(self, name: str) -> None:
        """Remove `name`, waiting up to 10 s for containers still leaving it."""
        for _ in range(50):
            try:
                self.api.remove_network(name)
                return
            except docker_errors.NotFound:
                return
            except docker_errors.APIError:
                time.sleep(0.2)
        self.api.remove_network(name)

    def run_service(self, image: str, entrypoint: list[str], name: str, network: str) -> str:
        """Start a labelled helper container (not a sandbox) named `name` on `network`; its id."""
        host_config = self.api.create_host_config(network_mode=network)
        labels = {MANAGED_LABEL: "true"}
        container = self.api.create_container(
            image, entrypoint=entrypoint, name=name, labels=labels, host_config=host_config
        )
        self.api.start(container["Id"])
        return str(container["Id"])

    def state(self, container_id: str) -> dict[str, Any]:
        try:
            state: dict[str, Any] = self.api.inspect_container(container_id)["State"]
            return state
        except docker_errors.NotFound:
            return {}

    def managed_containers(self) -> list[dict[str, Any]]:
        containers: list[dict[str, Any]] = self.api.containers(all=True, filters={"label": f"{MANAGED_LABEL}=true"})
        return containers

    # --- images -----------------------------------------------------------------------------------
    def image_labels(self, ref: str) -> dict[str, str] | None:
        """The labels of image `ref`, or None when it does not exist."""
        try:
            labels: dict[str, str] = self.api.inspect_image(ref)["Config"].get("Labels") or {}
            return labels
        except docker_errors.ImageNotFound:
            return None

    def image_id(self, ref: str) -> str | None:
        try:
            image_id: str = self.api.inspect_image(ref)["Id"]
            return image_id
        except docker_errors.ImageNotFound:
            return None

    def images(self, label: str) -> list[dict[str, Any]]:
        images: list[dict[str, Any]] = self.api.images(filters={"label": label})
        return images

    def remove_image(self, ref: str) -> bool:
        """Remove `ref`; False when it is gone already or still in use by a container."""
        try:
            self.api.remove_image(ref, force=True)
            return True
        except docker_errors.NotFound:
            return False
        except docker_errors.APIError as exc:
            if exc.status_code == 409:
                return False
            raise

    def try_pull(self, repository: str, tag: str) -> bool:
        try:
            self.api.pull(repository, tag=tag)
            return True
        except docker_errors.APIError:
            return False

    def import_rootfs(self, tar_path: Path, repository: str, tag: str) -> None:
        self.api.import_image_from_file(str(tar_path), repository=repository, tag=tag)

    def build(self, context: Any, tag: str, progress: Progress, labels: dict[str, str] | None = None) -> None:
        """Build from a tar context (file object); streams the build log to `progress`."""
        stream: Iterator[dict[str, Any]] = self.api.build(
            fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True, decode=True, labels=labels
        )
        for chunk in stream:
            if "error" in chunk:
                raise Isol8Error(f"Image build for {tag} failed: {chunk['error'].strip()}")
            line = chunk.get("stream", "").strip()
            if line:
                progress(line)


def _docker_host() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
