"""The agent's end of a stateful session's interpreter (kernel_python.py, kernel-node.cjs,
kernel-bash.sh): one long-lived process of the sandbox user that runs each execution's code file
as a cell. Stdlib only; copied into every image beside agent.py.

Channels: the interpreter's stdout and stderr are pipes the agent streams as a cell's output (and
drops between cells); a control pipe carries one cell per line to it; a results pipe carries one
JSON object per line back (`result` bundles and the cell's `done`). Its stdin is /dev/null, so code
that reads input never reads the control pipe. Everything it writes is the user's own (the cell runs
in its process and can write any of its descriptors): the agent only ever takes bounded lines from
it, and a line it cannot read ends the interpreter.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess

import protocol as P

READ_CHUNK = 64 * 1024
WORD_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./-")


class Kernel:
    """One interpreter: started by the first cell, ended by a reset, a crash, or a kill."""

    def __init__(self, spec: dict, env: dict[str, str], uid: int, gid: int, selector: selectors.BaseSelector) -> None:
        self.argv: list[str] = list(spec["argv"])
        self.cells: str = spec.get("cells", "json")  # how a cell is written to it: "json" or "words"
        self.interruptible = bool(spec.get("interruptible"))  # SIGINT ends a cell and keeps the state
        self.selector = selector
        control_r, self.control = os.pipe2(os.O_CLOEXEC)
        self.results, results_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**env, "ISOL8_KERNEL_FDS": f"{control_r},{results_w}"},
                user=uid,
                group=gid,
                extra_groups=[],
                start_new_session=True,
                close_fds=True,
                pass_fds=(control_r, results_w),
            )
        except BaseException:
            for fd in (self.control, self.results):
                os.close(fd)
            raise
        finally:
            os.close(control_r)
            os.close(results_w)
        assert self.proc.stdout and self.proc.stderr
        self.outputs = {self.proc.stdout.fileno(): P.STDOUT, self.proc.stderr.fileno(): P.STDERR}
        for fd, kind in self.outputs.items():
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ, ("output", kind))
        os.set_blocking(self.results, False)
        selector.register(self.results, selectors.EVENT_READ, ("kernel", None))
        self.lines = bytearray()
        self.status: int | None = None  # its wait status, once it has ended

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.status is None

    def send_cell(self, path: str, cwd: str | None, env: dict[str, str]) -> None:
        """One cell to run; OSError when the interpreter is gone."""
        if self.cells == "words":
            words = [_word(path), _word(cwd or "-")]
            words += [f"{name}={_word(value)}" for name, value in env.items() if name.isascii() and name.isidentifier()]
            line = " ".join(words).encode()
        else:
            line = P.dumps({"path": path, "cwd": cwd, "env": env})
        _write(self.control, line + b"\n")

    def read_lines(self, limit: int) -> list[dict | None]:
        """Complete lines from the results pipe, each parsed; None for one that is not a JSON
        object or runs past `limit` bytes (the interpreter is then not to be trusted). What is held
        of an unfinished line never passes `limit`, and each byte is looked at once."""
        found: list[dict | None] = []
        while True:
            try:
                chunk = os.read(self.results, READ_CHUNK)
            except BlockingIOError:
                return found
            except OSError:
                chunk = b""
            if not chunk:  # it closed its end (or died): no cell can end any more
                if self.results in self.selector.get_map():
                    self.selector.unregister(self.results)
                return [*found, None]
            self.lines += chunk
            if b"\n" in chunk:
                *complete, rest = self.lines.split(b"\n")
                self.lines = bytearray(rest)
                found.extend(_parsed(line, limit) for line in complete)
            if len(self.lines) > limit:
                return [*found, None]

    def ack(self) -> None:
        """The interpreter may go on after a result (its output before the result has gone out)."""
        with contextlib.suppress(OSError):
            _write(self.control, b"ack\n")

    def resume(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGCONT)

    def interrupt(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGINT)

    def peak_rss_kb(self) -> int:
        """The interpreter's own peak memory (it is not a child the agent reaps per job)."""
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{self.pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
        return 0

    def close(self) -> None:
        """Let go of its descriptors (the caller has killed it, or it has died)."""
        assert self.proc.stdout and self.proc.stderr
        for fd in (*self.outputs, self.results):
            if fd in self.selector.get_map():
                self.selector.unregister(fd)
        for fd in (self.control, self.results):
            with contextlib.suppress(OSError):
                os.close(fd)
        for pipe in (self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                pipe.close()

    def drop_output(self, fd: int) -> None:
        """What it writes between cells (a thread a cell left behind) goes nowhere."""
        try:
            if not os.read(fd, READ_CHUNK):
                self.selector.unregister(fd)
        except BlockingIOError:
            pass
        except OSError:
            self.selector.unregister(fd)


def _parsed(line: bytes | bytearray, limit: int) -> dict | None:
    if len(line) > limit:
        return None
    try:
        value = P.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _word(text: str) -> str:
    """`text` as one word the bash interpreter decodes with printf %b: unsafe bytes as \\0ooo."""
    return "".join(chr(byte) if byte in WORD_SAFE else f"\\0{byte:03o}" for byte in text.encode())


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
