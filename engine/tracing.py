"""OpenTelemetry traces, when the `otel` extra is installed: a span per execution and per phase.

The engine works without the extra: every function here then does nothing. With it, spans go to the
tracer provider in force; `configure` installs an OTLP exporter only when an endpoint is configured
(`server.otlpEndpoint` or the standard OTEL_EXPORTER_OTLP_ENDPOINT), so nothing is sent otherwise.
Spans are started and ended explicitly with their parent passed along, never made "current" inside
the engine's generators (a generator resumes in whichever context iterates it).
"""

from __future__ import annotations

import os
from typing import Any

from engine.errors import ConfigError

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    ENABLED = True
except ImportError:  # the `otel` extra is not installed
    ENABLED = False

TRACER_NAME = "isol8"
ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
Attributes = dict[str, str | int | float | bool]


class Span:
    """A started span (or nothing, without the extra). `end` is idempotent; as a context manager it
    ends the span on exit, marked failed if an exception left the block."""

    def __init__(self, span: Any = None) -> None:
        self._span = span
        self._ended = False

    def __enter__(self) -> Span:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self.fail(str(exc) or type(exc).__name__)
        self.end()

    def set(self, **attributes: str | int | float | bool | None) -> None:
        if self._span is not None and not self._ended:
            for key, value in attributes.items():
                if value is not None:
                    self._span.set_attribute(f"isol8.{key}", value)

    def fail(self, message: str) -> None:
        if self._span is not None and not self._ended:
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, message))

    def end(self) -> None:
        if self._span is not None and not self._ended:
            self._ended = True
            self._span.end()

    def child(self, name: str, **attributes: str | int | float | bool | None) -> Span:
        return start(name, self, **attributes)


def current() -> Span:
    """The span current where this is called (a server request's), as a parent for later spans."""
    if not ENABLED:
        return Span()
    span = trace.get_current_span()
    return Span(span if span.get_span_context().is_valid else None)


def start(name: str, parent: Span | None = None, **attributes: str | int | float | bool | None) -> Span:
    if not ENABLED:
        return Span()
    ctx = trace.set_span_in_context(parent._span) if parent is not None and parent._span is not None else None
    clean: Attributes = {f"isol8.{key}": value for key, value in attributes.items() if value is not None}
    return Span(trace.get_tracer(TRACER_NAME).start_span(name, context=ctx, attributes=clean))


def activate(span: Span) -> object | None:
    """Make `span` current for the calling coroutine (a request's span); pass the token to `deactivate`."""
    if not ENABLED or span._span is None:
        return None
    return otel_context.attach(trace.set_span_in_context(span._span))


def deactivate(token: object | None) -> None:
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]


def configure(endpoint: str | None) -> str | None:
    """Export spans over OTLP/HTTP to `endpoint` (or $OTEL_EXPORTER_OTLP_ENDPOINT); returns where, or
    None when neither is set (then nothing is exported)."""
    target = endpoint or os.environ.get(ENDPOINT_ENV)
    if not target:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ConfigError(
            f"Traces are configured ({target}) but OpenTelemetry is not installed: pip install 'isol8[otel]'."
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": "isol8"}))
    # Without a configured endpoint the exporter reads the standard variables itself (and adds /v1/traces).
    url = None if endpoint is None else endpoint.rstrip("/").removesuffix("/v1/traces") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    trace.set_tracer_provider(provider)
    return target
