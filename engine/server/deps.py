"""FastAPI dependencies: who is calling (`Caller`, `Master`), the server's state, and the query check
every route runs.

Authenticate (engine/server/middleware.py) has already checked the key; these only read what it left
in the scope, so a request costs one check, and `Security` documents the scheme in the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security, WebSocket
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from engine.errors import AuthError, Forbidden
from engine.server.auth import Principal
from engine.server.middleware import PRINCIPAL
from engine.server.state import ServerState


def state_of(connection: Request | WebSocket) -> ServerState:
    """The ServerState create_app left on the app."""
    state: ServerState = connection.app.state.server
    return state


async def known_query(connection: HTTPConnection) -> None:
    """Refuse a query parameter the route does not take, as unknown body keys are refused: a typo such as
    `GET /auth/keys?tenant=x` would otherwise list every tenant's keys instead of one tenant's."""
    if connection.scope["type"] != "http" or not connection.query_params:
        return
    path = getattr(connection.scope.get("route"), "path_format", "")
    operation = connection.app.openapi()["paths"].get(path, {}).get(connection.scope["method"].lower(), {})
    names = [param["name"] for param in operation.get("parameters", []) if param["in"] == "query"]
    unknown = next((name for name in connection.query_params if name not in names), None)
    if unknown is not None:
        taken = ", ".join(names) or "none"
        raise HTTPException(400, f'Unknown query parameter "{unknown}" (this route takes: {taken})')


_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`")


def principal_of(connection: HTTPConnection) -> Principal | None:
    """The caller Authenticate found; None on a public path reached without a valid key."""
    principal: Principal | None = connection.scope.get(PRINCIPAL)
    return principal


async def caller(
    connection: HTTPConnection, _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None
) -> Principal:
    """The authenticated caller (`Security` documents the scheme in the OpenAPI document)."""
    principal = principal_of(connection)
    if principal is None:  # a route that needs a key on a public path: refuse, never serve
        raise AuthError("Missing Authorization header")
    return principal


Caller = Annotated[Principal, Depends(caller)]


async def master(principal: Caller) -> Principal:
    if not principal.is_master:
        raise Forbidden("Master key required for this operation")
    return principal


Master = Annotated[Principal, Depends(master)]
