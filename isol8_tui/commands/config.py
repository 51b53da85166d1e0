"""`isol8 config`: show the effective configuration and where each value came from.

Knowing whether a limit came from a file or from the built-in default is what answers "why did my
run get 512m?", so the text report has a From column and the JSON form is a valid config file.
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from engine.config import LoadedConfig, load_config
from engine.errors import ConfigError

_SECTIONS: tuple[tuple[str, str | None], ...] = (
    ("General", None),
    ("Defaults", "defaults"),
    ("Network filter", "network"),
    ("Cleanup", "cleanup"),
    ("Security", "security"),
    ("Remote code (codeUrl)", "remoteCode"),
    ("Audit log", "audit"),
    ("Server (isol8 serve)", "server"),
    ("Workbench (isol8 tui)", "tui"),
    ("MCP server (isol8 mcp, /mcp)", "mcp"),
)
"""Report sections: title and the nested key they show (None = top-level scalars and lists)."""

_MS_KEYS = frozenset({"defaults.timeoutMs", "cleanup.maxContainerAgeMs"})


@click.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print the effective config as JSON.")
def command(as_json: bool) -> None:
    """Show the effective configuration and where each value came from."""
    try:
        loaded = load_config()
    except ConfigError as exc:
        click.echo(f"[ERR] {exc}", err=True)
        raise SystemExit(1) from None
    if as_json:
        click.echo(json.dumps(loaded.config.model_dump(by_alias=True, mode="json"), indent=2))
        return
    _print_report(loaded, Console())


def _print_report(loaded: LoadedConfig, console: Console) -> None:
    console.print(Text("Isol8 Configuration", style="bold"))
    source = str(loaded.source) if loaded.source else "defaults (no config file found)"
    # soft_wrap keeps a long path on one line so it can be copied and grepped.
    console.print(Text(f"Source: {source}"), soft_wrap=True)
    dump = loaded.config.model_dump(by_alias=True, mode="json")
    for title, section in _SECTIONS:
        table = Table(title=title, title_justify="left", title_style="bold")
        table.add_column("Key", no_wrap=True)
        table.add_column("Value")
        table.add_column("From", no_wrap=True)
        values = dump[section] if section else {k: v for k, v in dump.items() if k not in _nested(dump)}
        for key, value in values.items():
            dotted = f"{section}.{key}" if section else key
            origin = loaded.origin(dotted)
            table.add_row(
                Text(dotted),
                Text(_format(dotted, value)),
                Text(origin, style="cyan" if origin == "file" else "dim"),
            )
        console.print()
        console.print(table)


def _nested(dump: dict[str, Any]) -> set[str]:
    return {key for key, value in dump.items() if isinstance(value, dict)}


def _format(key: str, value: Any) -> str:
    """Human rendering; units are spelled out where a bare number would be ambiguous."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in _MS_KEYS and isinstance(value, int):
        return f"{value} ms ({value / 60000:g} min)" if value >= 60000 else f"{value} ms"
    if key == "defaults.maxOutputSize" and isinstance(value, int):
        return f"{value} bytes"
    # One item per line: regexes may themselves contain commas.
    if key == "prebuiltImages" and isinstance(value, list):
        return "\n".join(_format_image(image) for image in value) or "(none)"
    if isinstance(value, list):
        return "\n".join(str(item) for item in value) or "(none)"
    return str(value)


def _format_image(image: dict[str, Any]) -> str:
    packages = image.get("installPackages") or []
    details = [image["runtime"], *packages]
    if image.get("setupScript"):
        details.append("+setup script")
    return f"{image['tag']} ({' '.join(details)})"
