"""Structured logs: one JSON object per line, for `isol8 serve --log-format json`.

Every record becomes {"time", "level", "logger", "event", "message"} plus the context fields a
record carries (`extra=`): execution_id, tenant, session, runtime, outcome, duration_ms. An
execution's end is logged by the engine as event `execution` with all of them.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

FIELDS = ("execution_id", "tenant", "session", "runtime", "outcome", "duration_ms")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        line: dict[str, object] = {
            "time": when.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)
