"""The operating pieces that need no daemon: config keys, the JSON log line, route labels, tracing off."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from engine import tracing
from engine.config import Isol8Config, load_config
from engine.errors import ConfigError
from engine.logs import JsonFormatter
from engine.server.app import ServerSettings, create_app
from engine.server.metrics import UNMATCHED, route_template


@pytest.mark.parametrize(
    ("server", "key"),
    [({"metricsPublic": "yes"}, "server.metricsPublic"), ({"otlpEndpoint": "collector:4318"}, "server.otlpEndpoint")],
)
def test_operating_keys_are_validated(tmp_path: Path, server: dict[str, object], key: str) -> None:
    (tmp_path / "isol8.config.json").write_text(json.dumps({"server": server}))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(tmp_path)


def test_operating_keys_default_to_closed_and_silent() -> None:
    server = Isol8Config().server
    assert (server.metrics_public, server.otlp_endpoint) == (False, None)


def test_json_log_line_carries_the_execution_fields() -> None:
    record = logging.LogRecord("isol8.engine", logging.INFO, __file__, 1, "execution %s", ("abc",), None)
    for name, value in {"event": "execution", "execution_id": "abc", "tenant": "t", "duration_ms": 5}.items():
        setattr(record, name, value)
    line = json.loads(JsonFormatter().format(record))
    assert line["time"].endswith("Z")
    assert {k: line[k] for k in ("level", "logger", "event", "message", "execution_id", "tenant", "duration_ms")} == {
        "level": "info",
        "logger": "isol8.engine",
        "event": "execution",
        "message": "execution abc",
        "execution_id": "abc",
        "tenant": "t",
        "duration_ms": 5,
    }
    assert "session" not in line  # absent fields are left out, not null


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("DELETE", "/session/0f7e2c1a-1111", "/session/{session_id}"),
        ("DELETE", "/auth/keys/k-123", "/auth/keys/{key_id}"),
        ("POST", "/execute", "/execute"),
        ("PATCH", "/execute", "/execute"),  # a 405: still the route's template
        ("GET", "/../../etc/passwd", UNMATCHED),
        ("GET", "/session/a/b", UNMATCHED),
    ],
)
def test_route_labels_are_templates_never_raw_paths(method: str, path: str, route: str) -> None:
    app = create_app(ServerSettings(Isol8Config(), "k"))
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": [], "query_string": b""}
    assert route_template(app, scope) == route


def test_nothing_is_exported_without_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tracing.ENDPOINT_ENV, raising=False)
    assert tracing.configure(None) is None


def test_an_endpoint_without_the_extra_is_a_one_line_error() -> None:
    code = (
        "import sys\nsys.modules['opentelemetry'] = None\n"
        "from engine import tracing\nfrom engine.errors import ConfigError\n"
        "try:\n    tracing.configure('http://127.0.0.1:4318')\nexcept ConfigError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == (
        "Traces are configured (http://127.0.0.1:4318) but OpenTelemetry is not installed: pip install 'isol8[otel]'.\n"
    )


def test_a_configured_endpoint_installs_an_otlp_exporter() -> None:
    code = (
        "from opentelemetry import trace\nfrom engine import tracing\n"
        "print(tracing.configure('http://127.0.0.1:9/'))\n"
        "print(type(trace.get_tracer_provider()).__module__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.splitlines() == ["http://127.0.0.1:9/", "opentelemetry.sdk.trace"]
