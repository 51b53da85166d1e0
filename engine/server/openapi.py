"""The OpenAPI document, made to say exactly what the server accepts and answers.

A client or a fuzzer (tests/security/test_server_fuzz.py) reading the document should see the real
contract: the error replies each route gives, and the validators the models' own schemas cannot show.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from engine.models import BINARY_MIME_TYPES, StreamEvent
from engine.runtimes import RUNTIME_NAMES
from engine.server.policy import MINIMUMS
from engine.server.wire import NAME, ErrorBody

ERROR_TEXTS: dict[int, str] = {
    400: "Invalid body or engine error",
    401: "Missing or malformed Authorization header",
    403: "Invalid API key, or options the server's policy refuses",
    404: "Session, file or key not found",
    413: "Request body larger than server.maxBodyBytes, or files read back over defaults.maxFileSize",
    429: "Too many sessions (server.maxSessions or server.maxSessionsPerTenant)",
    500: "The sandbox failed (a real internal failure, reported as JSON)",
    502: "The codeUrl could not be fetched (no such host, no connection, an error status, too slow)",
    503: "Docker is unavailable or the images are missing",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error replies a route can give, each `{"error": "..."}`; 400, 401 and 403 always."""
    return {code: {"model": ErrorBody, "description": ERROR_TEXTS[code]} for code in sorted({400, 401, 403, *codes})}


ERRORS = error_responses()
RUNS = error_responses(413, 429, 500, 502, 503)
"""An execution: a new session may be one too many; its codeUrl, the sandbox or Docker may fail."""


class TightApi(FastAPI):
    """FastAPI whose OpenAPI document is `tighten`ed (built once, on first use)."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            document = get_openapi(
                title=self.title,
                version=self.version,
                summary=self.summary,
                routes=self.routes,
                openapi_version=self.openapi_version,
            )
            self.openapi_schema = tighten(document)
        return self.openapi_schema


def tighten(document: dict[str, Any]) -> dict[str, Any]:
    """What the models' own schemas cannot say, added to the OpenAPI document.

    FastAPI documents a 422 reply this server never gives (validation errors are 400 `{"error"}`), and
    ExecutionRequest's validators (exactly one of code and cmd, a known runtime, a size format) are
    invisible in its schema.
    """
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    body = schemas.get("ExecuteBody")
    if body is not None:  # reference clients send "" for "no session"
        _set(body["properties"]["sessionId"], "string", pattern=NAME.replace("{1,128}", "{0,128}"))
    request = schemas.get("ExecutionRequest")
    if request is not None:
        properties = request["properties"]
        properties["runtime"]["enum"] = list(RUNTIME_NAMES)
        request["oneOf"] = [{"required": [name], "properties": {name: {"type": "string"}}} for name in ("code", "cmd")]
        properties["files"]["propertyNames"] = {"pattern": FILE_PATH_PATTERN}
        properties["outputPaths"]["items"]["pattern"] = FILE_PATH_PATTERN
        _set(properties["fileExtension"], "string", pattern=r"^\.?[A-Za-z0-9]+$")
        _set(properties["fileName"], "string", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    _document_events(document)
    upload = schemas.get("FileUpload")
    if upload is not None:
        upload["properties"]["path"]["pattern"] = FILE_PATH_PATTERN
    for param in document.get("paths", {}).get("/file", {}).get("get", {}).get("parameters", []):
        if param["name"] == "path":
            param["schema"]["pattern"] = FILE_PATH_PATTERN
    for name in ("ExecutionRequest", "ClientOptions"):
        properties = schemas.get(name, {}).get("properties", {})
        _set(properties.get("memoryLimit"), "string", pattern=MEMORY_PATTERN)
        for size in ("sandboxSize", "tmpSize"):
            _set(properties.get(size), "string", pattern=SIZE_PATTERN)
        for variables in ("env", "secrets"):  # names: not empty, no `=`; no NUL anywhere
            _set(properties.get(variables), "object", propertyNames={"pattern": "^[^=\u0000]+$"})
            _set((properties.get(variables) or {}).get("additionalProperties"), "string", pattern="^[^\u0000]*$")
        for json_name, _, minimum in MINIMUMS:
            if not isinstance(minimum, str):
                _set(properties.get(json_name), "number" if json_name == "cpuLimit" else "integer", minimum=minimum)
    return document


def _document_events(document: dict[str, Any]) -> None:
    """StreamEvent (what each SSE frame and WebSocket message holds, `result` events' RichResult
    included) in the components, named from the stream's reply; RichResult's binary values said."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    event = StreamEvent.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    for name, schema in event.pop("$defs", {}).items():
        schemas.setdefault(name, schema)
    schemas["StreamEvent"] = event
    stream = document.get("paths", {}).get("/execute/stream", {}).get("post", {}).get("responses", {}).get("200")
    if stream is not None:
        stream["content"]["text/event-stream"] = {"x-event": {"$ref": "#/components/schemas/StreamEvent"}}
    data = schemas.get("RichResult", {}).get("properties", {}).get("data")
    if data is not None:
        binary = ", ".join(sorted(BINARY_MIME_TYPES))
        data["description"] = f"A MIME bundle: {binary} values are base64, the others text (JSON as its text)"


FILE_PATH_PATTERN = r"^/(sandbox|tmp)(/([^/\u0000.][^/\u0000]*|\.[^/\u0000.][^/\u0000]*|\.\.[^/\u0000]+))+$"
"""Paths engine.models.sandbox_path accepts (a subset: no `.` segments), as a JSON-schema pattern."""
SIZE_PATTERN = r"^\s*0*[1-9]\d*(\.\d+)?\s*[kmgtKMGT]?[bB]?\s*$"
"""Sizes parse_size accepts (a subset: no `0.5k`), as a JSON-schema pattern."""
MEMORY_PATTERN = r"^\s*0*([1-9]\d{2,}|[2-9]\d|1[6-9])(\.\d+)?\s*[mM][bB]?\s*$|^\s*0*[1-9]\d*(\.\d+)?\s*[gG][bB]?\s*$"
"""Memory limits of at least policy.MINIMUMS' 16m, spelled in m or g (a subset of what is accepted)."""


def _set(prop: dict[str, Any] | None, kind: str, **keywords: Any) -> None:
    """Add `keywords` to the `kind` variant of an optional property (`anyOf: [{type: kind}, null]`)."""
    for variant in (prop or {}).get("anyOf", [prop or {}]):
        if variant.get("type") == kind:
            variant.update(keywords)
