"""`isol8 doctor`: walk the troubleshooting guide's triage flow and print one line per check.

The checks live in engine/doctor.py; this renders them (rich) or prints the report as JSON. Exit
status: 0 all ok, 1 any failure, 2 warnings only.
"""

from __future__ import annotations

import asyncio
import json

import click
from rich.console import Console
from rich.text import Text

from engine.doctor import Check, run_checks
from engine.errors import Isol8Error
from isol8_tui import credentials
from isol8_tui.commands.serve import resolve_port

STYLES = {"ok": ("ok", "green"), "warning": ("warn", "yellow"), "failure": ("FAIL", "red"), "skipped": ("skip", "dim")}


def _render(console: Console, check: Check) -> None:
    tag, style = STYLES[check.status]
    line = Text.assemble((f"[{tag:>4}] ", style), (f"{check.name}: ", "bold"), check.detail)
    console.print(line, soft_wrap=True)
    if check.values:
        for value in check.values:
            if value.source == "file":
                console.print(Text(f"         {value.key} = {json.dumps(value.value)} (file)"), soft_wrap=True)
        console.print(Text("         every other value is its default: `isol8 config` lists them all", style="dim"))
    if check.remedy:
        console.print(Text(f"         fix: {check.remedy}", style=style), soft_wrap=True)


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--host", metavar="URL", help="Also check an isol8 server: reachable, and accepts the key.")
@click.option("-k", "--key", metavar="KEY", help="The key for --host (default: $ISOL8_API_KEY, then `isol8 login`'s).")
@click.option("-p", "--port", "port_flag", metavar="PORT", help="The port `isol8 serve` would use (default as serve).")
def command(as_json: bool, host: str | None, key: str | None, port_flag: str | None) -> None:
    """Check Docker, images, config, seccomp, filtered networking, gVisor, a server and the port."""
    console = Console(stderr=False)
    api_key = None
    if host:
        try:
            api_key = credentials.api_key(key, host)
        except Isol8Error:
            api_key = None  # the server check then reports the 401 and how to pass a key
    report = asyncio.run(
        run_checks(
            resolve_port(port_flag), host, api_key, progress=lambda check: None if as_json else _render(console, check)
        )
    )
    if as_json:
        click.echo(json.dumps(report.model_dump(by_alias=True, mode="json", exclude_none=True), indent=2))
    raise SystemExit(report.exit_code)
