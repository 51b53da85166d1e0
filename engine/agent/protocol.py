"""The wire protocol between the engine and the agent (PID 1 of every sandbox).

Stdlib only: this file is copied into every image next to `agent.py`.

Transport: the container's attached stdin (engine -> agent) and stdout (agent -> engine).
Docker wraps the agent's stdout in its own 8-byte multiplexing headers; the engine strips those
first, then reads the frames below.

Frame: `!BI` header (kind, payload length) followed by the payload.

Engine -> agent
  REQUEST  JSON object; `op` is one of:
           run    {argv, env, cwd, timeout_ms, max_output, max_file_size, files: [path...],
                   stdin: bool, output_paths: [path...], python_file, warm_argv, prestart, tty,
                   kernel}
                  followed by one DATA*/END item per file, in order, then one DATA*/END
                  item for stdin when `stdin` is true (its DATA may keep coming while the
                  job runs). `python_file`: run on the zygote; `warm_argv`: run on the
                  pre-started interpreter when it was started with exactly this argv;
                  `prestart`: start the next one after this job. `tty` {rows, cols}: run on a
                  new pseudo-terminal of that size (its output comes as STDOUT; the END of
                  stdin is the terminal's EOF character). `kernel` {argv, cells,
                  interruptible, grace_ms, cwd}: a stateful session's cell: the last of
                  `argv` (the code file) runs on the session's interpreter, started with
                  the kernel's argv if there is none (kernel.py); it outlives the job.
           resize {rows, cols}  the running job's terminal changes size. No answer.
           signal {signal}      SIGINT or SIGTERM to the running job's foreground process
                                group. No answer; both are ignored when no job runs.
           network {policy}     the filtered network's lists (the NetworkFilter's JSON) for
                                every request from now on, also during a run. No answer;
                                ignored without a filtered network.
           put    {path}  followed by one DATA*/END item: writes a file, answered by `done`.
           get    {path, max_bytes}  answered by one file item (below).
           cancel {}   the engine gave up on its request: a job being received or running ends
                       at once (its processes killed, exit 137), an upload is discarded; the
                       request's own last event (`exit`, `done`) follows. Ignored when idle.
           reset  {}   ends the stateful session's interpreter and every sandbox process; answered
                       by `reset {error}` (error: a run is in progress).
           scrub  {}   erases the last execution (processes, /sandbox, /tmp, /dev/shm, IPC) and
                       moves on to the next sandbox uid; answered by `scrubbed {error}` (error is
                       null once verified clean).
           ping   {}   answered by a `pong` event.
  DATA     raw bytes of the current item (file content or stdin).
  END      closes the current item.

Agent -> engine
  EVENT    JSON object; `ev` is one of:
           hello {version, uid}            once, when the agent is ready for jobs
           pong  {}
           done  {path, error, reason}         a `put` finished (error is null on success)
           file  {path, size}                  a file item: DATA* then END, or this event again
                                               with an error if it ran past its limit
           file  {path, error, reason}         a file item that failed (nothing, or what was sent
                                               of it, is to be discarded)
           exit  {code, timed_out, killed, duration_ms, stdout_bytes, stderr_bytes, error,
                  oom_killed, cpu_time_ms, peak_memory_bytes, network_bytes_in, network_bytes_out}
                 the last event of every run; `error` is set when the job could not start;
                 *_bytes count everything the job wrote, also past `max_output`. A cell's
                 also has `kernel` (fresh, kept or lost: its interpreter after it) and
                 `results_dropped` (results past `max_file_size`, not sent).
           net   {entry}                       one request through the filtered network's proxy
           result {data, main}                 a cell's displayed value: a MIME bundle (binary
                                               types base64); `main` marks its final
                                               expression's value
  STDOUT   raw bytes the job wrote to its stdout (at most `max_output` bytes in all)
  STDERR   raw bytes the job wrote to its stderr (at most `max_output` bytes in all)
  DATA     raw bytes of the file item announced by the preceding `file` event
  END      closes that file item
  A run sends one file item per output path, before `exit`; their bytes together are at most
  `max_file_size`. `reason` names the kind of failure: one of FILE_REASONS.

Bumping VERSION is required for any incompatible change; the engine refuses other versions.
"""

from __future__ import annotations

import _json  # json's C core, without json's pure-Python layer and its `re` (~4 ms of every agent start)
import struct
from collections.abc import Iterator

TYPE_CHECKING = False  # `typing` costs ~3 ms of every agent start: only the type checker imports it
if TYPE_CHECKING:
    from typing import Any

VERSION = 2

HEADER = struct.Struct("!BI")
MAX_PAYLOAD = 1 << 20
FILE_REASONS = ("missing", "not_regular", "too_large", "refused", "cancelled", "failed")

# engine -> agent
REQUEST = 1
DATA = 2
END = 3
# agent -> engine
EVENT = 11
STDOUT = 12
STDERR = 13
# DATA and END are reused agent -> engine for output paths.


class _Decoding:
    """What `_json`'s scanner reads of a decoder: json.loads' defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN and Infinity, as json.loads reads them


def _unencodable(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# typeshed types the scanner's context as the scanner class itself; the C code reads only the
# attributes above (json.JSONDecoder passes itself the same way).
_scan = _json.make_scanner(_Decoding())  # type: ignore[arg-type]
_encode = _json.make_encoder(None, _unencodable, _json.encode_basestring_ascii, None, ":", ",", False, False, True)


def dumps(obj: Any) -> bytes:
    """Compact JSON, exactly as `json.dumps(obj, separators=(",", ":")).encode()`."""
    return "".join(_encode(obj, 0)).encode()


def loads(data: bytes | bytearray | str) -> Any:
    """One JSON value, as json.loads reads it; ValueError for anything else."""
    text = (data if isinstance(data, str) else bytes(data).decode()).strip()
    try:
        value, end = _scan(text, 0)
    except Exception:  # StopIteration, or the scanner's own error: json says what is wrong
        import json

        return json.loads(text)
    if end != len(text):
        raise ValueError(f"not one JSON value: {text[:80]!r}")
    return value


def frame(kind: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def message(kind: int, obj: dict) -> bytes:
    return frame(kind, dumps(obj))


def data_frames(content: bytes) -> Iterator[bytes]:
    """DATA frames for `content` (split at MAX_PAYLOAD), then END; lazily, to keep one copy."""
    view = memoryview(content)
    for i in range(0, len(view), MAX_PAYLOAD):
        yield frame(DATA, view[i : i + MAX_PAYLOAD].tobytes())
    yield frame(END)


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, get complete frames back."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        self._buffer += chunk
        frames: list[tuple[int, bytes]] = []
        offset = 0
        size = len(self._buffer)
        while size - offset >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buffer, offset)
            end = offset + HEADER.size + length
            if end > size:
                break
            frames.append((kind, bytes(self._buffer[offset + HEADER.size : end])))
            offset = end
        if offset:
            del self._buffer[:offset]
        return frames
