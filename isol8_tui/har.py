"""A run's requests (the proxy's network log) as HAR 1.2, the format browsers' devtools import.

The log records, per request: time, method, host, port, path (None for an HTTPS tunnel), verdict,
rule, status, bytes and duration, and a plain-HTTP request's headers as sent (credentials masked);
no response headers or bodies, so those HAR fields are empty. An HTTPS request appears as its
CONNECT tunnel (`https://host:port`), a blocked one with its 403."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine import NetworkLogEntry

CREATOR = {"name": "isol8 workbench", "version": "1"}


def entry_url(entry: NetworkLogEntry) -> str:
    if entry.method == "CONNECT":
        return f"https://{entry.host}:{entry.port}"
    default = entry.port == 80
    return f"http://{entry.host}{'' if default else f':{entry.port}'}{entry.path or '/'}"


def har(entries: Sequence[NetworkLogEntry]) -> dict[str, Any]:
    return {
        "log": {
            "version": "1.2",
            "creator": CREATOR,
            "entries": [_entry(entry) for entry in entries],
        }
    }


def _entry(entry: NetworkLogEntry) -> dict[str, Any]:
    status = entry.status if entry.status is not None else 0
    return {
        "startedDateTime": entry.timestamp,
        "time": entry.duration_ms,
        "request": {
            "method": entry.method,
            "url": entry_url(entry),
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": [{"name": name, "value": value} for name, value in entry.headers or []],
            "queryString": [],
            "headersSize": -1,
            "bodySize": entry.bytes_out,
        },
        "response": {
            "status": status,
            "statusText": "Blocked by the session's network policy" if entry.action == "BLOCK" else "",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": [],
            "content": {"size": entry.bytes_in, "mimeType": ""},
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": entry.bytes_in,
        },
        "cache": {},
        "timings": {"send": 0, "wait": entry.duration_ms, "receive": 0},
        "comment": f"{entry.action} by {entry.rule or 'the default policy'}",
    }
