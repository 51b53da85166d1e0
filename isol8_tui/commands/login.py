"""`isol8 login` and `isol8 logout`: a key from an isol8 server (`POST /auth/login`), kept for later
`run --host` and `session` commands in `~/.isol8/credentials.json`."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from engine.errors import Isol8Error
from isol8_tui import credentials
from isol8_tui.credentials import SHOWN_PATH, Credentials
from isol8_tui.output import err, info, ok, user_errors, warn

CONNECT_TIMEOUT_S = 10.0


def _login(host: str, master: str, name: str | None, ttl_ms: int | None) -> Credentials:
    import httpx

    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body: dict[str, object] = {"name": name or f"cli-login-{stamp}"}
    if ttl_ms is not None:
        body["ttlMs"] = ttl_ms
    try:
        response = httpx.post(
            f"{host.rstrip('/')}/auth/login",
            json=body,
            headers={"Authorization": f"Bearer {master}"},
            timeout=CONNECT_TIMEOUT_S,
        )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise Isol8Error(f"Authentication failed: {str(exc) or type(exc).__name__}") from None
    if response.status_code != 200:
        try:
            detail = response.json().get("error") or response.reason_phrase
        except ValueError:
            detail = response.reason_phrase
        err(f"Authentication failed: {detail} (HTTP {response.status_code})")
        if response.status_code == 400:
            warn("DB-backed auth may not be enabled on the server.")
            warn("Start the server with --auth-db <path> to enable it.")
        raise SystemExit(1)
    try:
        reply = response.json()
        return Credentials(
            host=host.rstrip("/"), token=reply["token"], expires_at=reply.get("expiresAt"), key_id=reply["keyId"]
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        raise Isol8Error(
            f"Authentication failed: {host} did not answer as an isol8 server does. Check --host."
        ) from None


@click.command("login")
@click.option("--host", required=True, metavar="URL", help="The server, e.g. http://127.0.0.1:3000.")
@click.option("-k", "--key", "master", required=True, metavar="MASTER", help="The server's master key.")
@click.option("--name", metavar="NAME", help="Name of the new key (default: cli-login-<time>).")
@click.option(
    "--ttl", "ttl_ms", type=click.IntRange(min=1), metavar="MS", help="Key lifetime in ms (default: the server's)."
)
def command(host: str, master: str, name: str | None, ttl_ms: int | None) -> None:
    """Create an API key on an isol8 server and store it for `run --host` and `session`."""
    with user_errors():
        stored = _login(host, master, name, ttl_ms)
        credentials.save(stored)
    click.echo("Authenticated successfully")
    click.echo(f"  Host:    {stored.host}")
    click.echo(f"  Expires: {stored.expires_at or 'never'}")
    click.echo(f"  Stored:  {SHOWN_PATH}")


@click.command("logout")
def logout_command() -> None:
    """Forget the key `isol8 login` stored (it stays valid on the server until it expires)."""
    with user_errors():
        removed = credentials.remove()
    if removed:
        ok(f"Credentials removed from {SHOWN_PATH}")
    else:
        info("No stored credentials found.")
