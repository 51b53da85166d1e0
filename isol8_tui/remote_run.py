"""`isol8 run --host URL`: the same run, executed by an isol8 server, with the same output and exit codes.

Only the flags the user gave are sent as options: the server's own config decides the rest, and its
policy refuses (with a message naming the flag's option) anything it does not allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from engine.errors import Isol8Error
from engine.models import ExecutionRequest, Isol8Options, NetworkFilter
from engine.remote import RemoteIsol8
from isol8_tui.credentials import api_key
from isol8_tui.output import err
from isol8_tui.printing import Printing, run_requests

OPTION_FLAGS = (
    "network",
    "image",
    "memory_limit",
    "cpu_limit",
    "pids_limit",
    "sandbox_size",
    "tmp_size",
    "max_output_size",
    "persist",
    "log_network",
    "stateful",
)
"""`isol8 run` flags that become the remote call's options (same names as Isol8Options fields)."""


def remote_options(flags: dict[str, Any]) -> Isol8Options | None:
    """Isol8Options holding only the flags that were given (so only those are sent)."""
    values = {name: flags[name] for name in OPTION_FLAGS if flags.get(name) not in (None, False)}
    rules = {
        field: list(flags.get(flag) or ())
        for field, flag in (("whitelist", "allow"), ("blacklist", "deny"), ("ports", "allow_ports"))
    }
    if any(rules.values()):  # only what was given: the server's own filter supplies the rest
        values["network_filter"] = NetworkFilter(**{field: rule for field, rule in rules.items() if rule})
    if values.get("stateful"):  # a session's (the server decides the mode: a sessionId means persistent)
        values["mode"] = "persistent"
    return Isol8Options(**values) if values else None


def run_remote(
    host: str | None,
    key: str | None,
    session_id: str | None,
    requests: list[ExecutionRequest],
    *,
    persistent: bool,
    stream: bool,
    output: tuple[str | None, Path, bool],
    flags: dict[str, Any],
) -> int:
    """Run `requests` in order on the server; the exit code of the last one run."""
    if not host:
        raise Isol8Error("--session-id and --key need --host URL (the isol8 server to run on).")
    key = api_key(key, host)
    # --persistent without an id: a session for this command only, deleted at the end.
    session = session_id or (f"cli-{int(time.time() * 1000)}" if persistent else None)
    remote = RemoteIsol8(host, key, session, remote_options(flags), keep_session=session_id is not None)
    try:
        return asyncio.run(_run(remote, requests, stream, output))
    except KeyboardInterrupt:
        err("Interrupted; the remote run was stopped.")
        return 130


async def _run(
    remote: RemoteIsol8, requests: list[ExecutionRequest], stream: bool, output: tuple[str | None, Path, bool]
) -> int:
    out_path, results_dir, as_json = output
    with open(out_path, "w", encoding="utf-8") if out_path else contextlib.nullcontext(sys.stdout) as out:
        async with remote:
            printing = Printing(out, results_dir, as_json)
            return await run_requests(remote, requests, stream=stream, printing=printing, log_network=False)
