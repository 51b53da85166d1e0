"""How isol8 speaks: `[ERR]`, `[WARN]`, `[OK]` lines, turning engine errors into exit 1, and any
error as the one line the CLI and the workbench show."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from engine.errors import Isol8Error, one_line


def err(message: str) -> None:
    click.echo(f"[ERR] {message}", err=True)


def warn(message: str) -> None:
    click.echo(f"[WARN] {message}", err=True)


def info(message: str) -> None:
    click.echo(f"[INFO] {message}", err=True)


def ok(message: str) -> None:
    click.echo(f"[OK] {message}")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Engine errors end the command with one `[ERR]` line and exit 1, never a traceback."""
    try:
        yield
    except Isol8Error as exc:
        err(str(exc))
        raise SystemExit(1) from None
    except ValueError as exc:  # pydantic validation of flags, e.g. an invalid size
        err(one_line(exc))
        raise SystemExit(1) from None


def setup_logging(debug: bool, path: Path | None = None) -> None:
    """With `debug`, one `[DEBUG] isol8.<part>: <step>` line per engine step, on stderr or into `path`."""
    if debug:
        handler = logging.FileHandler(path, encoding="utf-8") if path else logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[DEBUG] %(name)s: %(message)s"))
        logger = logging.getLogger("isol8")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
