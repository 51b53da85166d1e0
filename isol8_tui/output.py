"""How the CLI speaks: `[ERR]`, `[WARN]`, `[OK]` lines, and turning engine errors into exit 1."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

import click

from engine.errors import Isol8Error


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
        err(_first_line(exc))
        raise SystemExit(1) from None


def _first_line(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        message = str(first.get("msg", exc))
        if message.startswith("Value error, "):  # our own validators' messages stand alone
            return message.removeprefix("Value error, ")
        where = ".".join(str(part) for part in first.get("loc", ()))
        return f"{where}: {message}" if where else message
    return str(exc).splitlines()[0]


def setup_logging(debug: bool) -> None:
    if debug:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[DEBUG] %(name)s: %(message)s"))
        logger = logging.getLogger("isol8")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
