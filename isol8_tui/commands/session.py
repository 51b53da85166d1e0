"""`isol8 session list|delete|stop|reset`: the sessions an isol8 server keeps for this API key's tenant."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

import click

from engine.remote import RemoteIsol8, RemoteSession
from isol8_tui.credentials import api_key
from isol8_tui.output import info, ok, user_errors


def _local_time(iso: str | None) -> str:
    if not iso:
        return "unknown"
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M:%S")


async def _list(host: str, key: str) -> list[RemoteSession]:
    async with RemoteIsol8(host, key) as remote:
        return await remote.list_sessions()


async def _delete(host: str, key: str, session_id: str) -> None:
    async with RemoteIsol8(host, key) as remote:
        await remote.delete_session(session_id)


async def _reset(host: str, key: str, session_id: str) -> None:
    async with RemoteIsol8(host, key, session_id, keep_session=True) as remote:
        await remote.reset()


host_option = click.option("--host", required=True, metavar="URL", help="The server, e.g. http://127.0.0.1:3000.")
key_option = click.option(
    "-k", "--key", metavar="KEY", help="API key (default: $ISOL8_API_KEY, else the key `isol8 login` stored)."
)


@click.group("session")
def command() -> None:
    """Sessions on an isol8 server (`isol8 serve`): list, delete (stop) or reset them."""


@command.command("list")
@host_option
@key_option
@click.option("--json", "as_json", is_flag=True, help="Print the sessions as JSON.")
def list_command(host: str, key: str | None, as_json: bool) -> None:
    """List the sessions of this key's tenant."""
    with user_errors():
        secret = api_key(key, host)
        sessions = asyncio.run(_list(host, secret))
    if as_json:
        click.echo(json.dumps([s.model_dump(mode="json", by_alias=True) for s in sessions], indent=2))
        return
    if not sessions:
        info("No active sessions.")
        return
    click.echo(f"\n  {len(sessions)} active session(s):\n")
    for session in sessions:
        state = "running" if session.is_active else "idle"
        runtime = f"  {session.runtime}" if session.runtime else ""
        kind = "  stateful" if session.stateful else ""
        click.echo(f"  {session.id}  [{state}]{runtime}{kind}  last accessed: {_local_time(session.last_accessed_at)}")


@click.command("delete")
@click.argument("session_id")
@host_option
@key_option
def delete_command(session_id: str, host: str, key: str | None) -> None:
    """Stop a session and remove its container (no error if it is already gone)."""
    with user_errors():
        secret = api_key(key, host)
        asyncio.run(_delete(host, secret, session_id))
    ok(f'Session "{session_id}" destroyed.')


@click.command("reset")
@click.argument("session_id")
@host_option
@key_option
def reset_command(session_id: str, host: str, key: str | None) -> None:
    """End a stateful session's interpreter: its variables go, its files stay."""
    with user_errors():
        secret = api_key(key, host)
        asyncio.run(_reset(host, secret, session_id))
    ok(f'Session "{session_id}" reset: the next run starts a fresh interpreter.')


command.add_command(reset_command, "reset")
command.add_command(delete_command, "delete")
command.add_command(delete_command, "stop")
