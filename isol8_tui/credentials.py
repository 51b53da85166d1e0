"""The key `isol8 login` stored: `~/.isol8/credentials.json` (`{host, token, expiresAt, keyId}`, as the
reference writes it), mode 0600 from its creation, in a 0700 folder.

A stored key is only ever sent to the host it was issued by: `run --host` and `session` use it when
neither `--key` nor `$ISOL8_API_KEY` gives one and their `--host` is that host.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from engine.errors import Isol8Error
from engine.models import Model

SHOWN_PATH = "~/.isol8/credentials.json"
KEY_REQUIRED = "API key required. Use --key, set ISOL8_API_KEY, or run `isol8 login --host URL --key MASTER`."


class Credentials(Model):
    host: str
    token: str
    expires_at: str | None = None
    key_id: str | None = None


def credentials_path() -> Path:
    return Path.home() / ".isol8" / "credentials.json"


def same_host(a: str, b: str) -> bool:
    return a.rstrip("/").lower() == b.rstrip("/").lower()


def load() -> Credentials | None:
    """The stored credentials, or None if there are none."""
    path = credentials_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Isol8Error(
            f"Cannot read {path}: {exc.strerror or exc}. Fix its permissions or run `isol8 logout`."
        ) from None
    try:
        return Credentials.model_validate(json.loads(text))
    except ValueError:
        raise Isol8Error(f"{path} is not valid credentials. Run `isol8 logout`, then `isol8 login` again.") from None


def save(credentials: Credentials) -> Path:
    """Write the file atomically: a 0600 temporary file in the 0700 folder, renamed over the old one."""
    path = credentials_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".credentials-", suffix=".json")  # mode 0600
    except OSError as exc:
        raise Isol8Error(f"Cannot write {path}: {exc.strerror or exc}. Check your home folder's permissions.") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(credentials.model_dump(mode="json", by_alias=True), file, indent=2)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(exc, OSError):
            raise Isol8Error(
                f"Cannot write {path}: {exc.strerror or exc}. Free some space or check permissions."
            ) from None
        raise
    return path


def remove() -> bool:
    """Delete the stored credentials; False if there were none."""
    path = credentials_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise Isol8Error(f"Cannot remove {path}: {exc.strerror or exc}. Delete it yourself.") from None
    return True


def api_key(flag: str | None, host: str) -> str:
    """`--key`, else `$ISOL8_API_KEY`, else the key `isol8 login` stored for `host`."""
    key = flag or os.environ.get("ISOL8_API_KEY")
    if key:
        return key
    stored = load()
    if stored is None:
        raise Isol8Error(KEY_REQUIRED)
    if not same_host(stored.host, host):
        raise Isol8Error(
            f"The stored login is for {stored.host}, not {host}. Use --key, or run `isol8 login --host {host}`."
        )
    if stored.expires_at and datetime.fromisoformat(stored.expires_at.replace("Z", "+00:00")) <= datetime.now(UTC):
        raise Isol8Error(f"The stored login for {stored.host} expired at {stored.expires_at}. Run `isol8 login` again.")
    return stored.token
