"""Who may call the server: the master key, and optionally keys kept in a database.

Only SHA-256 hashes of keys are stored (a stolen database holds no usable key) and the plaintext is
returned once, when a key is created. Every comparison against a secret goes through
`hmac.compare_digest` so timing does not leak how much of a key matched. The store is SQLite (stdlib)
for a file path, or Postgres for a `postgres://` URL through psycopg (the `postgres` extra).
Stores are blocking; the app calls them in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from engine.errors import AuthError, Forbidden, Isol8Error
from engine.models import Model

KEY_PREFIX = "isol8_"
KEY_LENGTH = len(KEY_PREFIX) + 64  # 32 random bytes in hex
DEFAULT_TENANT = "default"
LAST_USED_EVERY_MS = 60_000  # lastUsedAt is refreshed at most this often: no write per request

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  key_hash TEXT NOT NULL UNIQUE,
  key_prefix TEXT NOT NULL,
  tenant_id TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  expires_at BIGINT,
  last_used_at BIGINT,
  revoked INTEGER NOT NULL DEFAULT 0
)
"""
_COLUMNS = "id, name, key_prefix, tenant_id, created_at, expires_at, last_used_at, revoked"


@dataclass(frozen=True)
class Principal:
    """The caller: the master key (admin, tenant `default`) or a database key of one tenant."""

    kind: Literal["master", "apikey"]
    tenant_id: str = DEFAULT_TENANT
    key_id: str | None = None

    @property
    def is_master(self) -> bool:
        return self.kind == "master"


class ApiKeyInfo(Model):
    """A key as listed: never its plaintext nor its hash."""

    id: str
    name: str
    key_prefix: str
    tenant_id: str
    created_at: str
    expires_at: str | None = None
    last_used_at: str | None = None
    revoked: bool = False


class CreatedKey(Model):
    """The reply to a key creation: the only time `key` is ever shown."""

    id: str
    key: str
    name: str
    key_prefix: str
    tenant_id: str
    expires_at: str | None = None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now_ms() -> int:
    return int(time.time() * 1000)


class KeyStore:
    """The SQL shared by both backends; subclasses open the connection and name the placeholder."""

    placeholder = "?"

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one connection, used from worker threads

    def _connection(self) -> Any:
        raise NotImplementedError

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        sql = sql.replace("?", self.placeholder)
        with self._lock:
            connection = self._connection()
            cursor = connection.execute(sql, params)
            rows = cursor.fetchall() if cursor.description else []
            connection.commit()
            return [tuple(row) for row in rows]

    def migrate(self) -> None:
        self._run(_SCHEMA)

    def create_key(self, name: str, tenant_id: str, ttl_ms: int | None) -> CreatedKey:
        key = KEY_PREFIX + secrets.token_hex(32)
        key_id = str(uuid.uuid4())
        now = _now_ms()
        expires = now + ttl_ms if ttl_ms else None
        prefix = key[:10] + "..."
        self._run(
            "INSERT INTO api_keys (id, name, key_hash, key_prefix, tenant_id, created_at, expires_at, revoked) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
            (key_id, name, digest(key), prefix, tenant_id, now, expires),
        )
        return CreatedKey(
            id=key_id, key=key, name=name, key_prefix=prefix, tenant_id=tenant_id, expires_at=_iso(expires)
        )

    def list_keys(self, tenant_id: str | None = None) -> list[ApiKeyInfo]:
        """Newest first (the reference store's order was undefined)."""
        where, params = ("WHERE tenant_id = ? ", (tenant_id,)) if tenant_id else ("", ())
        rows = self._run(f"SELECT {_COLUMNS} FROM api_keys {where}ORDER BY created_at DESC, id", params)
        return [_info(row) for row in rows]

    def revoke_key(self, key_id: str) -> bool:
        found = self._run("SELECT id FROM api_keys WHERE id = ?", (key_id,))
        if found:
            self._run("UPDATE api_keys SET revoked = 1 WHERE id = ?", (key_id,))
        return bool(found)

    def validate(self, token: str) -> ApiKeyInfo | None:
        """The key's info if it exists, is not revoked and has not expired."""
        if len(token) != KEY_LENGTH or not token.startswith(KEY_PREFIX):
            return None
        hashed = digest(token)
        rows = self._run(f"SELECT {_COLUMNS}, key_hash FROM api_keys WHERE key_hash = ?", (hashed,))
        if not rows or not hmac.compare_digest(rows[0][-1], hashed):
            return None
        info = _info(rows[0][:-1])
        now = _now_ms()
        expires, last_used = rows[0][5], rows[0][6]
        if info.revoked or (expires is not None and expires <= now):
            return None
        if last_used is None or now - last_used > LAST_USED_EVERY_MS:
            self._run("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, info.id))
        return info

    def purge(self) -> int:
        """Delete revoked and expired keys; they can never authenticate again."""
        rows = self._run(
            "SELECT id FROM api_keys WHERE revoked = 1 OR (expires_at IS NOT NULL AND expires_at <= ?)",
            (_now_ms(),),
        )
        for (key_id,) in rows:
            self._run("DELETE FROM api_keys WHERE id = ?", (key_id,))
        return len(rows)

    def close(self) -> None:
        raise NotImplementedError


def _info(row: tuple[Any, ...]) -> ApiKeyInfo:
    key_id, name, prefix, tenant, created, expires, last_used, revoked = row
    return ApiKeyInfo(
        id=key_id,
        name=name,
        key_prefix=prefix,
        tenant_id=tenant,
        created_at=_iso(created) or "",
        expires_at=_iso(expires),
        last_used_at=_iso(last_used),
        revoked=bool(revoked),
    )


class SqliteKeyStore(KeyStore):
    def __init__(self, path: Path) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists()
        self._db = sqlite3.connect(path, check_same_thread=False)
        if fresh:
            os.chmod(path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self.migrate()

    def _connection(self) -> sqlite3.Connection:
        return self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresKeyStore(KeyStore):
    placeholder = "%s"

    def __init__(self, url: str) -> None:
        super().__init__()
        try:
            import psycopg
        except ImportError:
            raise Isol8Error(
                "A Postgres auth DB needs psycopg: install it with `pip install 'isol8[postgres]'`."
            ) from None
        try:
            self._db = psycopg.connect(url)
        except psycopg.Error as exc:
            raise Isol8Error(f"Cannot connect to the auth DB {redact(url)}: {str(exc).strip()}") from None
        self.migrate()

    def _connection(self) -> Any:
        return self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_store(connection: str) -> KeyStore:
    """SQLite for a path (or `sqlite:///path`), Postgres for a `postgres://`/`postgresql://` URL."""
    scheme = connection.split("://", 1)[0].lower() if "://" in connection else ""
    if scheme in ("postgres", "postgresql"):
        return PostgresKeyStore(connection)
    if scheme == "sqlite":
        connection = connection.split("://", 1)[1]
    elif scheme:
        raise Isol8Error(f'Unsupported auth DB "{scheme}://": use a SQLite file path or a postgresql:// URL.')
    try:
        return SqliteKeyStore(Path(connection).expanduser())
    except (OSError, sqlite3.Error) as exc:
        raise Isol8Error(f"Cannot open the auth DB {connection}: {exc}") from None


def redact(connection: str) -> str:
    """The connection string without its password, for logs and banners."""
    parts = urlsplit(connection)
    if not parts.password:
        return connection
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Authenticator:
    """Turns an Authorization header into a Principal, or raises AuthError (401 or 403)."""

    def __init__(self, master_key: str, store: KeyStore | None = None) -> None:
        self._master = digest(master_key)
        self.store = store

    async def authenticate(self, header: str | None) -> Principal:
        if header is None or not header.strip():
            raise AuthError("Missing Authorization header")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        # A bare token is refused: it is easy to leak in logs that redact "Bearer ..." values.
        if scheme.lower() != "bearer" or not token:
            raise AuthError('Authorization header must be "Bearer <key>"')
        if hmac.compare_digest(digest(token), self._master):
            return Principal("master")
        if self.store is not None:
            info = await asyncio.to_thread(self.store.validate, token)
            if info is not None:
                return Principal("apikey", info.tenant_id, info.id)
        raise Forbidden("Invalid API key")
