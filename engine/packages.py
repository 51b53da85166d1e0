"""Package names, validated on every path before any install (each runtime's install command is in
engine/runtimes.py).

Commands are argv lists, never shell strings, and names are validated anyway: a name may not
start with `-` (no option injection) nor hold anything but the characters package names and
version specifiers use. Installs land in /sandbox, because /tmp is noexec.
"""

from __future__ import annotations

import re

from engine.errors import Isol8Error

_NAME = re.compile(r"^[A-Za-z0-9@][A-Za-z0-9@._/:=<>!~^+-]{0,199}$")


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
