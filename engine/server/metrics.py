"""`/metrics` of `isol8 serve` and the layer that measures and traces every request (Observe).

The app has its own registry (HTTP requests, auth failures, and at scrape time the pools and the
sessions); the reply adds the engine's (engine/metrics.py). `/metrics` needs the master key unless the
operator sets `server.metricsPublic`. Labels stay bounded: a route's template (never
its raw path), a known method, a status code, an image, a container state.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import tracing
from engine.errors import Forbidden
from engine.metrics import ENGINE_REGISTRY
from engine.server.deps import principal_of

if TYPE_CHECKING:
    from engine.server.state import ServerState

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UNMATCHED = "(unmatched)"
"""The route label of a request no route matches: raw paths would make the labels unbounded."""


class ServerMetrics:
    """The app's registry and the counters its layers feed."""

    def __init__(self, state: ServerState) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "isol8_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "isol8_http_request_duration_seconds",
            "Time to answer an HTTP request (a stream's: until its last byte), by route template.",
            ["route"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "isol8_auth_failures",
            "Requests refused by authentication: 401 (no or malformed Authorization) or 403 (an invalid key).",
            ["status"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(state))

    def exposition(self) -> bytes:
        return generate_latest(self.registry) + generate_latest(ENGINE_REGISTRY)


class _StateCollector(Collector):
    """Figures read from the server's state at scrape time: warm containers and open sessions."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        pool = GaugeMetricFamily(
            "isol8_pool_containers", "Sandbox containers per image: ready, busy, starting.", labels=["image", "state"]
        )
        for item in self.state.pool_state():
            for name in ("ready", "busy", "starting"):
                pool.add_metric([item.image, name], getattr(item, name))
        yield pool
        counts = self.state.sessions.per_tenant()
        yield GaugeMetricFamily("isol8_sessions_open", "Persistent sessions open.", value=sum(counts))
        yield GaugeMetricFamily("isol8_session_tenants", "Tenants with at least one session open.", value=len(counts))
        yield GaugeMetricFamily(
            "isol8_sessions_open_per_tenant_max",
            "The most sessions one tenant has open (compare with server.maxSessionsPerTenant).",
            value=max(counts, default=0),
        )


def route_template(app: FastAPI, scope: Scope) -> str:
    """The path template of the route `scope` goes to (`/session/{session_id}`), also for a method the
    route does not take (a 405), or UNMATCHED."""
    partial = UNMATCHED
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", UNMATCHED))
        if match == Match.PARTIAL and partial == UNMATCHED:
            partial = str(getattr(route, "path", UNMATCHED))
    return partial


class Observe:
    """The outermost layer: a span per request (the execution's spans are its children) and the
    request counters, whatever answers it (a refusal of Authenticate included)."""

    def __init__(self, app: ASGIApp, fastapi: FastAPI, metrics: ServerMetrics) -> None:
        self.app = app
        self.fastapi = fastapi
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        route = route_template(self.fastapi, scope)
        method = scope.get("method", "WEBSOCKET")
        span = tracing.start(f"{method} {route}", route=route)
        token = tracing.activate(span)
        status = 500
        started = time.monotonic()

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            with span:
                await self.app(scope, receive, watched)
                if scope["type"] == "http":
                    span.set(status=status)
        finally:
            tracing.deactivate(token)
            if scope["type"] == "http":
                self.metrics.requests.labels(method if method in METHODS else "other", route, str(status)).inc()
                self.metrics.request_seconds.labels(route).observe(time.monotonic() - started)


def add_metrics_route(app: FastAPI, metrics: ServerMetrics, public: bool) -> None:
    @app.get("/metrics", include_in_schema=False)
    async def scrape(request: Request) -> Response:
        """Prometheus' text format. The master key only (a tenant's key would see the whole server's
        activity), unless `server.metricsPublic` opens it to everyone (Authenticate lets it through)."""
        principal = principal_of(request)
        if not public and (principal is None or not principal.is_master):
            raise Forbidden("Master key required for this operation")
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
