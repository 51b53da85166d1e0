"""Prometheus metrics of the engine: executions, queue wait, container starts, network traffic.

They live on their own registry (ENGINE_REGISTRY, not prometheus_client's global one), shared by
every engine in the process; `isol8 serve` exposes it with the server's own metrics on `/metrics`.
Labels stay bounded: a runtime name, an outcome, an image, an action or a direction, never an
execution, session or tenant id.
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Histogram

from engine.models import NetworkLogEntry

Outcome = Literal["ok", "error", "timeout", "oom"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "error", "timeout", "oom")

ENGINE_REGISTRY = CollectorRegistry()

# From 10 ms to 5 minutes (the server's default maxTimeoutMs).
_DURATIONS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

EXECUTIONS = Counter(
    "isol8_executions",
    "Executions that ended, by runtime and outcome (ok, error, timeout, oom).",
    ["runtime", "outcome"],
    registry=ENGINE_REGISTRY,
)
EXECUTION_SECONDS = Histogram(
    "isol8_execution_duration_seconds",
    "Wall time of an execution, from the request to its end (queue, sandbox and every step).",
    ["runtime"],
    buckets=_DURATIONS,
    registry=ENGINE_REGISTRY,
)
QUEUE_SECONDS = Histogram(
    "isol8_queue_wait_seconds",
    "Time an execution waited for a slot (maxConcurrent) or for its session's container.",
    ["runtime"],
    buckets=_DURATIONS,
    registry=ENGINE_REGISTRY,
)
CONTAINER_STARTS = Counter(
    "isol8_container_starts",
    "Sandbox containers started (created, attached, started and greeted by their agent), by image and result.",
    ["image", "result"],
    registry=ENGINE_REGISTRY,
)
CONTAINER_START_SECONDS = Histogram(
    "isol8_container_start_duration_seconds",
    "Time from creating a sandbox container to its agent's hello.",
    ["image"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
    registry=ENGINE_REGISTRY,
)
NETWORK_REQUESTS = Counter(
    "isol8_network_requests",
    "Requests through the filtered network's proxy, by the filter's decision (allow, block).",
    ["action"],
    registry=ENGINE_REGISTRY,
)
NETWORK_BYTES = Counter(
    "isol8_network_bytes",
    "Bytes through the filtered network's proxy: received by sandboxes (in) and sent by them (out).",
    ["direction"],
    registry=ENGINE_REGISTRY,
)


def outcome_of(exit_code: int, timed_out: bool, oom_killed: bool) -> Outcome:
    if timed_out:
        return "timeout"
    if oom_killed:
        return "oom"
    return "ok" if exit_code == 0 else "error"


def record_execution(runtime: str, outcome: Outcome, seconds: float) -> None:
    EXECUTIONS.labels(runtime, outcome).inc()
    EXECUTION_SECONDS.labels(runtime).observe(seconds)


def record_network(entry: NetworkLogEntry) -> None:
    """One entry of the proxy's network log (every filtered run has one, `logNetwork` or not)."""
    NETWORK_REQUESTS.labels(entry.action.lower()).inc()
    NETWORK_BYTES.labels("in").inc(entry.bytes_in)
    NETWORK_BYTES.labels("out").inc(entry.bytes_out)
