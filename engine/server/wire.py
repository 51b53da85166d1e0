"""The server's request and response bodies, as pydantic models.

One module, so the wire format (camelCase JSON, read strictly) is written down in one place and the
OpenAPI document is generated from it. Request bodies derive from TextBody, which refuses what the
schema does not promise to take: lone surrogates, and the values pydantic's lax mode would coerce.
"""

from __future__ import annotations

import base64
import re
from typing import Annotated, Any, Literal, Self

from pydantic import (
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from engine import ExecutionRequest, PoolState
from engine.config import MAX_KEY_TTL_MS
from engine.models import FileBytes, Model, TerminalSize
from engine.server.auth import DEFAULT_TENANT, ApiKeyInfo
from engine.server.errors import describe_validation
from engine.server.policy import ClientOptions
from engine.server.sessions import SessionInfo

NAME = r"^[A-Za-z0-9_.:@+=~-]{1,128}$"
"""Session ids and tenant ids: free-form like the reference's, but safe in a URL path and a log line."""
SURROGATE = re.compile("[\ud800-\udfff]")


def _not_unicode(value: object, where: str = "") -> str | None:
    """The JSON path of the first string (or key) in `value` that cannot be encoded as UTF-8, if any.

    JSON may spell lone surrogates (`"\\ud800"`); Python decodes them into strings that every later
    step (the agent's framing, files, the reply) fails to encode.
    """
    if isinstance(value, str):
        if SURROGATE.search(value):  # a search, not an encode: no copy of a 64 MiB stdin
            return where or "body"
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            found = _not_unicode(key, path) or _not_unicode(item, path)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _not_unicode(item, f"{where}[{index}]")
            if found:
                return found
    return None


class TextBody(Model):
    """A JSON body read exactly as its schema says.

    Strings must be valid Unicode. Types are strict: pydantic's lax mode would take `true` for 1, `0`
    for false and `"5"` for 5, so the OpenAPI document would promise refusals the server does not
    make; numbers are read as JSON Schema reads them (`437.0` is an integer). The body is validated
    once, strictly (the wrap validator hands it to a strict validation and stands aside there), and
    any error becomes the usual one line.
    """

    @model_validator(mode="wrap")
    @classmethod
    def _strictly(cls, data: Any, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo) -> Self:
        if not isinstance(data, dict) or (info.context or {}).get(STRICT_PASS):
            return handler(data)
        where = _not_unicode(data)
        if where is not None:  # the path may hold the surrogate itself: spelled out, not encoded
            where = where.encode("utf-8", "backslashreplace").decode()
            raise ValueError(f"{where}: not valid Unicode (a lone surrogate); send UTF-8 text, binary data as base64")
        try:
            return cls.model_validate(_whole_numbers(data), strict=True, context={STRICT_PASS: True})
        except ValidationError as exc:
            errors = [{**error, "loc": _in_body(data, error["loc"], error["type"])} for error in exc.errors()]
            raise ValueError(describe_validation(errors)) from None


STRICT_PASS = "isol8.strict"


def _whole_numbers(value: Any) -> Any:
    """`value` with integral floats as ints: a float field takes an int, and an int field an integral
    float, as JSON Schema's `integer` does."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


def _in_body(data: Any, loc: tuple[int | str, ...], kind: str) -> tuple[int | str, ...]:
    """`loc` up to what the client sent: pydantic appends the union member it tried (`stdin.str`)."""
    kept: list[int | str] = []
    node = data
    for index, part in enumerate(loc):
        if isinstance(node, dict) and (part in node or (kind == "missing" and index == len(loc) - 1)):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            break
        kept.append(part)
    return tuple(kept)


class ExecuteBody(TextBody):
    """`POST /execute` and `/execute/stream`: run `request`, in session `sessionId` if given."""

    request: ExecutionRequest
    options: ClientOptions | None = None
    session_id: str | None = Field(default=None, pattern=NAME)

    @field_validator("session_id", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value  # reference clients send "" for "no session"; `false` is wrong


class WsExecute(ExecuteBody):
    """The WebSocket's first message; unlike the reference's client, ours sends `sessionId` too.
    With `tty` the code runs on a pseudo-terminal of that size, fed by the WsInput messages."""

    type: Literal["execute"]
    tty: TerminalSize | None = None


class WsStdin(Model):
    """Keys for an interactive run: text, or raw bytes as base64 (`encoding: "base64"`)."""

    type: Literal["stdin"]
    data: str = Field(max_length=1 << 16)
    encoding: Literal["utf-8", "base64"] = "utf-8"

    def raw(self) -> bytes:
        return base64.b64decode(self.data, validate=True) if self.encoding == "base64" else self.data.encode()


class WsResize(Model):
    type: Literal["resize"]
    rows: int
    cols: int


class WsSignal(Model):
    type: Literal["signal"]
    signal: Literal["SIGINT", "SIGTERM"]


class WsEof(Model):
    """The end of an interactive run's input (its terminal's EOF)."""

    type: Literal["eof"]


WsInput = TypeAdapter(Annotated[WsStdin | WsResize | WsSignal | WsEof, Field(discriminator="type")])
"""What a client may send while its run goes; only an interactive run takes it, others ignore it."""


BASE64 = WithJsonSchema({"type": "string", "format": "byte", "contentEncoding": "base64"})
"""How FileBytes travel, for the OpenAPI document (pydantic would say raw octets)."""


class FileUpload(TextBody):
    session_id: str = Field(pattern=NAME)
    path: str
    content: Annotated[FileBytes, BASE64]

    @field_validator("content", mode="before")
    @classmethod
    def _base64(cls, value: object) -> object:
        """Decoded here, so any base64 error (bad padding, stray or non-ASCII characters) is one line."""
        if not isinstance(value, str):
            return value
        try:
            return base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise ValueError(f"content: not valid base64 ({exc}); send the bytes base64-encoded") from None


class FileContent(Model):
    content: Annotated[FileBytes, BASE64]


class ErrorBody(Model):
    error: str


class OkBody(Model):
    ok: bool = True


class Health(Model):
    """`GET /health`. Without a valid key only `status` and `version`; with one, also the pool and the
    number of sessions (how busy the server is is not for anyone who can reach the port)."""

    status: Literal["ok"] = "ok"
    version: str
    pool: list[PoolState] | None = Field(default=None, description="Warm containers per image (needs a key)")
    sessions: int | None = Field(default=None, description="Sessions on this server, all tenants (needs a key)")


class SessionList(Model):
    sessions: list[SessionInfo]


class KeyRequest(TextBody):
    """`POST /auth/login` (and the base of `/auth/keys`); `ttlMs` defaults to `server.keyTtlMs` and is
    capped at ten years, past which the store's integers and dates overflow."""

    name: str | None = Field(default=None, max_length=200)
    tenant_id: str = Field(default=DEFAULT_TENANT, pattern=NAME)
    ttl_ms: int | None = Field(default=None, gt=0, le=MAX_KEY_TTL_MS)


class NewKey(KeyRequest):
    """`POST /auth/keys`: `name` is required. The route checks it (the reference's exact "name is
    required" for a missing, empty or blank name); the schema says so for clients and fuzzers."""

    model_config = ConfigDict(json_schema_extra={"required": ["name"]})

    name: Annotated[
        str | None, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"\S"})
    ] = Field(default=None, max_length=200)


class KeyList(Model):
    keys: list[ApiKeyInfo]


class Revoked(Model):
    ok: bool = True
    id: str


class LoginReply(Model):
    token: str
    expires_at: str | None = None
    key_id: str


class CleanupCount(Model):
    removed: int = 0
    failed: int = 0
    errors: list[str] = Field(default_factory=list)


class CleanupReply(Model):
    ok: bool = True
    sessions: CleanupCount
    containers: CleanupCount
