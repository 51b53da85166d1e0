"""Package installs: name validation (on every path) and each runtime's install command.

Commands are argv lists, never shell strings, and names are validated anyway: a name may not
start with `-` (no option injection) nor hold anything but the characters package names and
version specifiers use. Installs land in /sandbox, because /tmp is noexec.
"""

from __future__ import annotations

import re

from engine.errors import Isol8Error

_NAME = re.compile(r"^[A-Za-z0-9@][A-Za-z0-9@._/:=<>!~^+-]{0,199}$")

# Hosts each runtime's installer talks to (the filtered network's allow list for `--install`).
REGISTRY_HOSTS = {
    "python": [r"pypi\.org", r"files\.pythonhosted\.org"],
    "node": [r"registry\.npmjs\.org"],
    "bun": [r"registry\.npmjs\.org"],
    "deno": [r"registry\.npmjs\.org", r"jsr\.io", r"(.*\.)?jsr\.io"],
    "bash": [r"deb\.debian\.org"],
}


def validate_packages(packages: list[str]) -> list[str]:
    """Trimmed, de-duplicated, sorted names; an invalid one is refused before anything runs."""
    names = sorted({name.strip() for name in packages if name.strip()})
    for name in names:
        if not _NAME.match(name):
            raise Isol8Error(
                f'Invalid package name: "{name}". Use a registry name with an optional version '
                "(letters, digits and @ . _ / : = < > ! ~ ^ + -, not starting with -)."
            )
    return names


def install_argv(runtime: str, packages: list[str]) -> list[str]:
    """The command that installs `packages` for `runtime` as the sandbox user, into /sandbox."""
    if runtime == "python":
        return [
            "python3",
            "-m",
            "pip",
            "install",
            "--user",
            "--no-cache-dir",
            "--break-system-packages",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
            *packages,
        ]
    if runtime == "node":
        return ["npm", "install", "--prefix", "/sandbox", "--no-audit", "--no-fund", *packages]
    if runtime == "bun":
        return ["bun", "add", *packages]
    if runtime == "deno":
        return ["deno", "cache", *(p if p.startswith(("npm:", "jsr:")) else f"npm:{p}" for p in packages)]
    if runtime == "bash":
        raise Isol8Error(
            "Installing Debian packages at run time needs a writable root filesystem, and sandboxes' is "
            "read-only. Bake them into an image: `isol8 build --base bash --install PKG --tag TAG`."
        )
    raise Isol8Error(f"Unknown runtime for package install: {runtime}")
