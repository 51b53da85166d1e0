"""Parsing of size limits (memory, tmpfs sizes, output caps).

One parser serves every size so that `512m` means the same thing for memory, `/sandbox` and `/tmp`.
"""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: str | int) -> int:
    """Bytes in `value` (`512m`, `1g`, `256k`, `1.5g` or plain bytes; binary multipliers)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f'Invalid memory limit format: "{value}". Use e.g. "512m", "1g".')
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f'Invalid memory limit format: "{value}". Use e.g. "512m", "1g".')
    number, unit = match.groups()
    size = int(float(number) * _UNITS[unit.lower()])
    if size <= 0:
        raise ValueError(f'Invalid memory limit format: "{value}". Use e.g. "512m", "1g".')
    return size
