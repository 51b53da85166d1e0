"""Errors a user can hit. Each message says what happened and what to do, in one line."""

from __future__ import annotations


class Isol8Error(Exception):
    """Base of every error the engine raises on purpose."""


class DockerUnavailable(Isol8Error):
    def __init__(self, host: str) -> None:
        super().__init__(
            "Docker is not running or not installed. Start the Docker daemon (e.g. `sudo systemctl start "
            f"docker` or `sudo dockerd &`) and check that your user can access {host}."
        )


class ImageMissing(Isol8Error):
    def __init__(self, image: str) -> None:
        super().__init__(f"Image {image} is missing or outdated. Run `isol8 setup` to build the images.")


class SandboxError(Isol8Error):
    """The sandbox container or its agent failed (not the user's code)."""


class FileError(Isol8Error):
    """A file the engine was asked to move in or out of a sandbox cannot be moved."""


class FileNotFound(FileError):
    """The file does not exist in the sandbox (HTTP 404)."""


class NotARegularFile(FileError):
    """The path names a directory, FIFO, socket or device: only regular files move (HTTP 400)."""


class FileTooLarge(FileError):
    """A file read back is over `maxFileSize` (HTTP 413)."""
