"""isol8's engine: runs untrusted code in hardened Docker containers. No UI code lives here."""

from engine.engine import DockerIsol8, cleanup
from engine.errors import DockerUnavailable, Isol8Error
from engine.interface import Engine
from engine.models import (
    ExecutionRequest,
    ExecutionResult,
    Isol8Options,
    NetworkFilter,
    NetworkLogEntry,
    PoolState,
    StreamEvent,
)
from engine.remote import RemoteIsol8

__version__ = "0.1.0"

__all__ = [
    "DockerIsol8",
    "DockerUnavailable",
    "Engine",
    "ExecutionRequest",
    "ExecutionResult",
    "Isol8Error",
    "Isol8Options",
    "NetworkFilter",
    "NetworkLogEntry",
    "PoolState",
    "RemoteIsol8",
    "StreamEvent",
    "__version__",
    "cleanup",
]
