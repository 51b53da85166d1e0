"""How a failure becomes a reply: the reference's `{"error": "..."}` body with the right status.

The status and the `Isol8-Error` code come from the exception's class (engine/errors.py), never from
its message; validation errors become one line. Everything that answers with an error (the exception
handlers, the middleware, the streams' in-band `error` events) goes through here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from engine.errors import ERROR_CODE_HEADER, Isol8Error, SandboxError

log = logging.getLogger("isol8.server")


def describe_validation(errors: list[Any]) -> str:
    """One line for the first validation error; the engine's own messages stand alone."""
    first = errors[0]
    if first["type"] == "json_invalid":
        return "Invalid JSON body"
    loc = tuple(first["loc"])
    if loc[:1] == ("query",) and loc[1:] in (("sessionId",), ("path",)):
        return "Missing sessionId or path"  # the reference's words for `GET /file` without them
    message = str(first["msg"])
    where = ".".join(str(part) for part in loc if part != "body")
    if loc == ("body",) and first["type"] in ("model_attributes_type", "model_type", "dict_type"):
        return "The body must be a JSON object (Content-Type: application/json)"
    if message.startswith("Value error, "):
        return message.removeprefix("Value error, ")
    if first["type"] == "missing" and not where:
        return "Missing JSON body"
    return f"{where}: {message}" if where else message


def error_reply(exc: Exception) -> tuple[int, str]:
    """The HTTP status and `error` text for an exception a route let through: each Isol8Error class
    names its own status (engine/errors.py)."""
    if isinstance(exc, RequestValidationError | ValidationError):
        return 400, describe_validation(list(exc.errors()))
    if isinstance(exc, Isol8Error):
        return exc.status, str(exc)
    return 500, "Internal server error"


def failure_reply(exc: Exception, what: str) -> tuple[int, str]:
    """error_reply(exc), logging `what` with the traceback when the failure is the server's own (a 500
    the sandbox did not cause)."""
    status, message = error_reply(exc)
    if status == 500 and not isinstance(exc, SandboxError):
        log.error(what, exc_info=exc)
    return status, message


def error_code(exc: Exception) -> str | None:
    """The `Isol8-Error` header's value: the class's wire code, so a remote client raises it too."""
    return exc.code if isinstance(exc, Isol8Error) else None


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None, code: str | None = None
) -> JSONResponse:
    """The `{"error": message}` reply, with `code` in the `Isol8-Error` header and, for a 401, the
    `WWW-Authenticate: Bearer` challenge."""
    headers = dict(headers or {})
    if code is not None:
        headers[ERROR_CODE_HEADER] = code
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    # Messages may quote client input; a lone surrogate in it must not break the reply.
    text = message.encode("utf-8", "backslashreplace").decode()
    return JSONResponse({"error": text}, status_code=status, headers=headers or None)


async def on_error(request: Request, exc: Exception) -> JSONResponse:
    """The handler for HTTPException (also BodyTooLarge), validation errors and every Isol8Error."""
    if isinstance(exc, HTTPException):
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed_methods(request)}
        return error_response(exc.status_code, str(exc.detail), headers)
    status, message = failure_reply(exc, "unexpected error")
    return error_response(status, message, code=error_code(exc))


def _allowed_methods(request: Request) -> str:
    """Every method of every route at this path: Starlette's 405 names only the first route's."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "type": "http"})
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


async def on_crash(_: Request, exc: Exception) -> JSONResponse:
    """Anything no handler knows: still a JSON body (uvicorn logs the traceback once this is sent)."""
    return error_response(500, "Internal server error")
