"""isol8 agent: PID 1 of every sandbox container. Stdlib only; see protocol.py for the wire format.

Why an agent instead of `docker exec`: one Engine API exec costs about 45 ms on our machines, a job
sent over the already-attached stream about 10 ms. The agent also owns what only PID 1 can do
well: reaping every zombie, killing every process of a job (also `setsid`/double-forked ones, and
ones whose main thread has exited) on timeout, and enforcing the output cap before bytes ever
leave the container.

Privileges: the agent runs as root with only CAP_SETUID/CAP_SETGID (to start jobs as `sandbox`),
CAP_KILL (to kill the job's processes whatever they became) and, in a `fast` pool, CAP_CHOWN (to
hand the writable roots to the next sandbox uid). Files are written and read with the effective
uid of `sandbox`, so a symlink planted by user code can never make the agent touch a file the
sandbox user could not touch itself; files are opened without blocking and must be regular.

Hand-written on purpose: it is the product's core, must start in milliseconds and cannot depend
on anything but the interpreter that is in every image.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import selectors
import signal
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import protocol as P  # sibling files inside the image (/opt/isol8)
import zygote
from kernel import Kernel

ROOTS = ("/sandbox", "/tmp")
AGENT_DIR = os.path.dirname(os.path.abspath(__file__))  # /opt/isol8: these files, compiled
PROXY_MAIN = f"import sys; sys.path[0] = {AGENT_DIR!r}; import proxy; proxy.main()"  # from its .pyc
READ_CHUNK = 64 * 1024
PROXY_URL = "http://127.0.0.1:8118"
WRITABLE = ("/sandbox", "/tmp", "/dev/shm", "/dev/mqueue")  # all the sandbox user can write (gVisor: no mqueue)
# Where a scrub finds what a run left in the kernel. gVisor has neither, though its System V IPC and
# POSIX queues work: there a run's objects could not be found, so a `fast` pool cannot reuse a sandbox.
LISTINGS = {"/proc/sysvipc": "System V IPC objects", "/dev/mqueue": "POSIX message queues"}
PROXY_START_TIMEOUT_S = 5.0
KILL_DEADLINE_S = 2.0  # SIGKILL is not refused: only a task stuck in the kernel takes longer
IPC_KINDS = {"shm": ("shmid", "-m"), "sem": ("semid", "-s"), "msg": ("msqid", "-q")}
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}  # what a client may send a running job
END_OF_INPUT = b"\x04"  # a terminal's EOF character: ends a read at the start of a line


class RefusedPath(Exception):
    pass


class FileProblem(Exception):
    """A file operation that cannot be done; `reason` tells the engine which error type it is."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # one of protocol.FILE_REASONS


def _read_first(*paths: str) -> str | None:
    for path in paths:
        try:
            with open(path) as file:
                return file.read()
        except OSError:
            continue
    return None


def oom_kills() -> int:
    """The container cgroup's OOM-kill count (v1 memory.oom_control or v2 memory.events)."""
    text = _read_first("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events") or ""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill":
            return int(value)
    return 0


def cpu_ns() -> int | None:
    """CPU time used by the whole container so far (cgroup), in nanoseconds."""
    v1 = _read_first("/sys/fs/cgroup/cpuacct/cpuacct.usage", "/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage")
    if v1:
        return int(v1)
    for line in (_read_first("/sys/fs/cgroup/cpu.stat") or "").splitlines():
        if line.startswith("usage_usec "):
            return int(line.split()[1]) * 1000
    return None


def net_bytes() -> tuple[int, int] | None:
    """Bytes received and sent on every interface but loopback; None when there is none."""
    text = _read_first("/proc/net/dev") or ""
    received = sent = 0
    found = False
    for line in text.splitlines()[2:]:
        name, _, counters = line.partition(":")
        if name.strip() == "lo" or not counters:
            continue
        fields = counters.split()
        received += int(fields[0])
        sent += int(fields[8])
        found = True
    return (received, sent) if found else None


def confine(path: str) -> str:
    """`path` normalised, or RefusedPath when it is not inside /sandbox or /tmp."""
    if not path.startswith("/"):
        raise RefusedPath(f"Path must be absolute: {path}")
    norm = os.path.normpath(path)
    if not any(norm == root or norm.startswith(root + "/") for root in ROOTS):
        raise RefusedPath(f"Path must be inside /sandbox or /tmp: {path}")
    real = os.path.realpath(norm)
    if not any(real == root or real.startswith(root + "/") for root in ROOTS):
        raise RefusedPath(f"Path escapes /sandbox and /tmp through a symlink: {path}")
    return norm


def task_uids(status_path: str) -> list[int]:
    """The real, effective, saved and filesystem uids in one process's or task's status; [] once it is gone."""
    try:
        with open(status_path, "rb") as status:
            for line in status:
                if line.startswith(b"Uid:"):
                    return [int(value) for value in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


def kill_every_process_of(uid: int, number: int = signal.SIGKILL) -> None:
    """Signal (SIGKILL) every process of `uid` in one pass: kill(-1) from a child running as that uid.

    The kernel walks every process under its task-list lock, so a fork bomb cannot slip a new
    child past it. The child is waited for here, so `reap` never counts it as a job's process.
    """
    try:
        pid = os.fork()
    except OSError:  # the pids limit is full: the caller's direct kills free room for the next pass
        return
    if pid == 0:
        try:
            os.setresuid(uid, uid, uid)
            os.kill(-1, number)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


class Incoming:
    """One file arriving in DATA frames. It is written to a hidden file next to its target and moved
    into place at the end, so a failed or cancelled write leaves nothing behind. An existing target
    that is not a regular file (a FIFO, a socket, a directory, a symlink) is refused before anything
    is opened: nothing here can block."""

    def __init__(self, agent: Agent, path: str) -> None:
        self.agent = agent
        self.path = path
        self.temp: str | None = None
        self.fd: int | None = None
        self.error: FileProblem | None = None
        try:
            with agent.as_sandbox():
                self.target = confine(path)
                os.makedirs(os.path.dirname(self.target), exist_ok=True)
                confine(self.target)
                mode = self._existing_mode()
                self.temp = os.path.join(os.path.dirname(self.target), f".isol8-upload-{os.urandom(6).hex()}")
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
                self.fd = os.open(self.temp, flags, mode)
        except (RefusedPath, OSError, FileProblem) as exc:
            self.error = _problem(exc)

    def _existing_mode(self) -> int:
        """The mode to write with: the replaced file's, else 0644. Refuses what is not a regular file."""
        try:
            info = os.lstat(self.target)
        except FileNotFoundError:
            return 0o644
        if stat.S_ISLNK(info.st_mode):
            raise FileProblem("refused", "the path is a symlink")
        if not stat.S_ISREG(info.st_mode):
            raise FileProblem("not_regular", f"not a regular file ({_kind(info.st_mode)})")
        return stat.S_IMODE(info.st_mode)

    def write(self, payload: bytes) -> None:
        if self.fd is None or self.error:
            return
        try:
            _write_all(self.fd, payload)
        except OSError as exc:
            self.error = _problem(exc)
            self.abort()

    def finish(self, cancelled: bool = False) -> FileProblem | None:
        """Move the file into place (or discard it); the problem, if any."""
        if cancelled and not self.error:
            self.error = FileProblem("cancelled", "cancelled before it was complete")
        if self.error:
            self.abort()
            return self.error
        assert self.fd is not None and self.temp is not None
        os.close(self.fd)
        self.fd = None
        try:
            with self.agent.as_sandbox():
                os.rename(self.temp, self.target)
        except OSError as exc:
            self.error = _problem(exc)
            self.abort()
        return self.error

    def abort(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.temp is not None:
            with contextlib.suppress(OSError), self.agent.as_sandbox():
                os.unlink(self.temp)
            self.temp = None


class Job:
    """One run request: receives its files and stdin, runs, streams, reports."""

    def __init__(self, agent: Agent, request: dict) -> None:
        self.agent = agent
        self.request = request
        self.files: list[str] = list(request.get("files", []))
        self.incoming: Incoming | None = None
        self.expect_stdin = bool(request.get("stdin"))
        # A pseudo-terminal {rows, cols}: the job's stdin, stdout and stderr are its slave; its
        # master is read as stdout and written with stdin (through a second descriptor, as the
        # selector watches each descriptor for one thing).
        self.tty: dict | None = request.get("tty")
        self.terminal: int | None = None
        self.terminal_input: int | None = None
        self.last_input = b"\n"
        self.max_output = int(request.get("max_output", 1 << 20))
        self.max_file_size = int(request["max_file_size"])
        self.timeout = float(request.get("timeout_ms", 30000)) / 1000.0
        self.error: str | None = None
        self.stdin_buffer = bytearray()
        self.stdin_open = self.expect_stdin
        self.proc: subprocess.Popen | ZygoteChild | None = None
        self.status: int | None = None
        self.started = 0.0
        self.deadline = 0.0
        self.timed_out = False
        self.killed = False
        self.sent = {P.STDOUT: 0, P.STDERR: 0}
        self.total = {P.STDOUT: 0, P.STDERR: 0}
        self.streams: dict[int, int] = {}
        self.max_rss_kb = 0
        self.before = (oom_kills(), cpu_ns(), net_bytes())
        # A stateful session's cell: the code file runs on the session's interpreter (kernel.py).
        self.kernel_spec: dict | None = request.get("kernel")
        self.fresh_kernel = False  # this cell started the interpreter
        self.interrupted = False  # SIGINT sent to end the cell (timeout, cancel)
        self.results_left = self.max_file_size  # bytes of rich results this cell may still send
        self.results_dropped = 0
        self._begin_next_file()

    # --- receiving files and stdin -------------------------------------------------------------
    def _begin_next_file(self) -> None:
        if self.files and self.incoming is None and not self.error:
            self.incoming = Incoming(self.agent, self.files[0])

    @property
    def receiving_files(self) -> bool:
        return bool(self.files)

    def on_data(self, payload: bytes) -> None:
        if self.receiving_files:
            if self.incoming is not None:
                self.incoming.write(payload)
        elif self.stdin_open:
            self.stdin_buffer += payload
            self.agent.want_stdin_write()

    def on_end(self) -> None:
        if self.receiving_files:
            if self.incoming is not None:
                problem = self.incoming.finish()
                if problem:
                    self.error = f"Cannot write {self.files[0]}: {problem}"
                self.incoming = None
            self.files.pop(0)
            self._begin_next_file()
            if not self.receiving_files:
                if not self.expect_stdin:
                    self.agent.receiver = None
                self.start()
        else:
            self.agent.receiver = None
            self.stdin_open = False
            if self.tty:  # the end of input, as a terminal says it (twice when a line is pending)
                pending = (self.stdin_buffer[-1:] or self.last_input) != b"\n"
                self.stdin_buffer += END_OF_INPUT * (2 if pending else 1)
            self.agent.want_stdin_write()

    def cancel(self) -> None:
        """The engine gave up on this job: stop receiving, discard a partial file, kill what runs."""
        if self.agent.receiver is self:
            self.agent.receiver = None
        if self.incoming is not None:
            self.incoming.finish(cancelled=True)
            self.incoming = None
        self.stdin_open = False
        self.stdin_buffer.clear()
        if self.receiving_files:
            self.files.clear()
            self.error = self.error or "cancelled by the engine before it started"
            self.start()  # reports the error as the job's exit
        elif self.proc is not None and self.agent.job is self:
            self.agent.want_stdin_write()
            self.stop(timed_out=False)

    # --- running -------------------------------------------------------------------------------
    def start(self) -> None:
        if self.error:
            self.agent.finish(self)
            return
        req = self.request
        env = dict(self.agent.base_env)
        env.update(req.get("env", {}))
        cwd = req.get("cwd", "/sandbox")
        try:
            with self.agent.as_sandbox():  # the roots may be closed to root itself (a `fast` pool's)
                cwd = confine(cwd)
                os.makedirs(cwd, exist_ok=True)
            warm = self.agent.take_waiting(None if self.tty else req.get("warm_argv"))
            if self.kernel_spec is not None:
                self.start_cell(env, self.kernel_spec.get("cwd"))
                return
            if self.tty:  # always a new process: the zygote and warm interpreters have pipes
                self.proc = self._popen(req["argv"], cwd, env, terminal=self._open_terminal())
            elif self.agent.zygote and req.get("python_file"):
                self.proc = self.agent.zygote.spawn(
                    {"uid": self.agent.uid, "gid": self.agent.gid, "cwd": cwd, "path": req["python_file"], "env": env},
                    self.expect_stdin,
                )
                self.agent.zygote.deliver()
            elif warm is not None:  # its preload reads this first, then stdin is the job's
                self.proc = warm
                spec = P.dumps({"env": env, "cwd": cwd})
                self.stdin_buffer[:0] = len(spec).to_bytes(4, "big") + spec
            else:
                self.proc = self._popen(req["argv"], cwd, env)
        except (RefusedPath, OSError, ValueError, subprocess.SubprocessError) as exc:  # ValueError: a NUL byte
            self.error = f"Cannot start {req['argv'][0]!r}: {_reason(exc)}"
            self.agent.finish(self)
            return
        self.started = time.monotonic()
        self.deadline = self.started + self.timeout
        if self.terminal is not None:
            outputs = [(P.STDOUT, self.terminal)]
        else:
            assert self.proc.stdout and self.proc.stderr
            outputs = [(P.STDOUT, self.proc.stdout.fileno()), (P.STDERR, self.proc.stderr.fileno())]
        for kind, fd in outputs:
            os.set_blocking(fd, False)
            self.streams[fd] = kind
            self.agent.selector.register(fd, selectors.EVENT_READ, ("output", kind))
        stdin = self.stdin_fd()
        if stdin is not None:
            os.set_blocking(stdin, False)
            self.agent.want_stdin_write()

    def start_cell(self, env: dict[str, str], cwd: str | None) -> None:
        """Hand the code file to the session's interpreter (started now if there is none)."""
        agent = self.agent
        kernel = agent.kernel
        if kernel is None:
            with self.agent.as_sandbox():
                os.chdir("/sandbox")
            try:
                kernel = agent.kernel = Kernel(self.kernel_spec or {}, env, agent.uid, agent.gid, agent.selector)
            finally:
                os.chdir("/")
            self.fresh_kernel = True
        self.proc = kernel.proc
        kernel.resume()  # stopped since the last run ended
        self.started = time.monotonic()
        self.deadline = self.started + self.timeout
        self.streams = dict(kernel.outputs)
        try:
            kernel.send_cell(self.request["argv"][-1], cwd, self.request.get("env", {}))
        except OSError:  # it died before the cell reached it: reaping says how
            self.agent.reap()

    def take_kernel_lines(self) -> None:
        """The interpreter's results and its `done`: results go out after the output written before them."""
        kernel = self.agent.kernel
        if kernel is None:
            return
        for line in kernel.read_lines(self.max_file_size * 4 // 3 + 65536):  # a bundle's base64, and its JSON
            if line is None:  # not one of its lines: the interpreter cannot be trusted to go on
                self.stop(timed_out=False, keep_kernel=False)
                return
            if "result" in line and self.status is None:
                self._send_result(line["result"])
            if line.get("ack"):
                kernel.ack()
            elif "done" in line and self.status is None:
                code = line["done"]
                self.status = (code & 0xFF) << 8 if isinstance(code, int) else 1 << 8

    def _send_result(self, result: object) -> None:
        if not isinstance(result, dict) or not isinstance(result.get("data"), dict):
            return
        size = sum(len(str(value)) for value in result["data"].values())
        if size > self.results_left:
            self.results_dropped += 1
            return
        self.results_left -= size
        for fd in list(self.streams):
            self.read_output(fd)
        self.agent.event({"ev": "result", "data": result["data"], "main": bool(result.get("main"))})

    def _open_terminal(self) -> int:
        """A pseudo-terminal of the asked size: keeps its master, returns its slave (for the job)."""
        import fcntl
        import termios

        size = self.tty or {}
        rows, cols = int(size["rows"]), int(size["cols"])
        master, slave = os.openpty()  # both close on exec: the job gets the slave as its stdio only
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.terminal, self.terminal_input = master, os.dup(master)
        return slave

    def _popen(self, argv: list[str], cwd: str, env: dict[str, str], terminal: int | None = None) -> subprocess.Popen:
        # Popen would chdir before dropping to the sandbox uid, as root, which may not enter a
        # `fast` pool's roots: the child inherits a working directory entered as that uid instead.
        with self.agent.as_sandbox():
            os.chdir(cwd)
        if terminal is None:
            stdin, stdout, stderr = (
                subprocess.PIPE if self.expect_stdin else subprocess.DEVNULL,
                subprocess.PIPE,
                subprocess.PIPE,
            )
        else:
            stdin = stdout = stderr = terminal
        try:
            return subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                env=env,
                user=self.agent.uid,
                group=self.agent.gid,
                extra_groups=[],
                start_new_session=True,
                close_fds=True,
                # Single-threaded agent: preexec_fn is safe. It runs after setsid and setuid.
                preexec_fn=None if terminal is None else _take_controlling_terminal,
            )
        finally:
            os.chdir("/")
            if terminal is not None:
                os.close(terminal)  # the job holds the slave now: its last close ends the output

    def stdin_fd(self) -> int | None:
        """Where the job's stdin is written: the terminal, or the pipe (None once closed)."""
        if self.tty:
            return self.terminal_input
        proc = self.proc
        return proc.stdin.fileno() if proc and proc.stdin and not proc.stdin.closed else None

    def resize(self, rows: int, cols: int) -> None:
        """The terminal's new size; its foreground processes get SIGWINCH from the kernel."""
        import fcntl
        import termios

        if self.terminal is not None:
            with contextlib.suppress(OSError, struct.error):
                fcntl.ioctl(self.terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def signal(self, name: str) -> None:
        """SIGINT or SIGTERM to the job's foreground process group (a terminal's, else its own)."""
        number = SIGNALS.get(name)
        if number is None or self.proc is None or self.status is not None:
            return
        with contextlib.suppress(OSError):
            group = os.tcgetpgrp(self.terminal) if self.terminal is not None else self.proc.pid
            os.killpg(group, number)

    def read_output(self, fd: int) -> bool:
        """Forward what `fd` has; False at EOF (the fd is then closed and unregistered)."""
        kind = self.streams[fd]
        while True:
            try:
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return True
            except OSError as exc:  # a terminal's master reads EIO once every slave is closed
                if exc.errno != errno.EIO:
                    raise
                chunk = b""
            if not chunk:
                self.agent.selector.unregister(fd)
                del self.streams[fd]
                return False
            self.total[kind] += len(chunk)
            room = self.max_output - self.sent[kind]
            if room > 0:
                part = chunk[:room]
                self.sent[kind] += len(part)
                self.agent.send(P.frame(kind, part))

    def write_stdin(self) -> None:
        fd = self.stdin_fd()
        if fd is None:
            return
        try:
            while self.stdin_buffer:
                written = os.write(fd, self.stdin_buffer[: 1 << 16])
                if written:
                    self.last_input = bytes(self.stdin_buffer[written - 1 : written])
                del self.stdin_buffer[:written]
        except BlockingIOError:
            return
        except OSError:  # the reader is gone (a closed pipe, a terminal hung up)
            self.stdin_buffer.clear()
            self.stdin_open = False
        if not self.stdin_buffer and not self.stdin_open:
            self.close_stdin()

    def close_stdin(self) -> None:
        fd = self.stdin_fd()
        if fd is None:
            return
        self.agent.stop_stdin_write(fd)
        if self.tty:
            os.close(fd)
            self.terminal_input = None
        elif self.proc and self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def stop(self, *, timed_out: bool, keep_kernel: bool = True) -> None:
        """Kill every process of the job (timeout or the engine's `cancel`). A cell is first
        interrupted: its interpreter (and state) survive when it stops within its grace;
        past that, or where SIGINT cannot end a cell, the interpreter is killed too."""
        self.timed_out = self.timed_out or timed_out
        kernel = self.agent.kernel
        if self.kernel_spec is not None and kernel is not None and keep_kernel:
            if kernel.interruptible and not self.interrupted:
                self.interrupted = True
                kernel.interrupt()
                self.deadline = time.monotonic() + float(self.kernel_spec.get("grace_ms", 0)) / 1000
                return
            keep_kernel = False
        self.killed = True
        self.agent.kill_sandbox_processes(spare=kernel.pid if kernel and keep_kernel else None)

    def usage(self) -> dict:
        ooms, cpu, net = self.before
        cpu_after, net_after = cpu_ns(), net_bytes()
        if self.kernel_spec is not None and self.agent.kernel is not None:
            self.max_rss_kb = max(self.max_rss_kb, self.agent.kernel.peak_rss_kb())
        return {
            "oom_killed": oom_kills() > ooms,
            "cpu_time_ms": round((cpu_after - cpu) / 1e6, 3) if cpu is not None and cpu_after else None,
            "peak_memory_bytes": self.max_rss_kb * 1024,
            "network_bytes_in": net_after[0] - net[0] if net and net_after else None,
            "network_bytes_out": net_after[1] - net[1] if net and net_after else None,
        }

    def kernel_state(self) -> str | None:
        """What became of the session's interpreter in this cell: fresh, kept or lost."""
        if self.kernel_spec is None:
            return None
        kernel = self.agent.kernel
        if kernel is None or not kernel.alive:
            return "lost"
        return "fresh" if self.fresh_kernel else "kept"

    def exit_code(self) -> int:
        if self.timed_out or (self.killed and self.status is None):
            return 137
        status = self.status or 0
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
        return os.waitstatus_to_exitcode(status)


class ZygoteChild:
    """A job process forked by the zygote: the same face as a Popen object, as the Job uses it."""

    def __init__(self, pid: int, stdin: int | None, stdout: int, stderr: int) -> None:
        self.pid = pid
        self.stdin = os.fdopen(stdin, "wb", buffering=0) if stdin is not None else None
        self.stdout = os.fdopen(stdout, "rb", buffering=0)
        self.stderr = os.fdopen(stderr, "rb", buffering=0)
        self.returncode: int | None = None


class Zygote:
    """The agent's end of zygote.py: spawn requests out, `spawned`/`exited` lines in."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.pid, self.sock = zygote.start()
        self.lines = bytearray()
        self.spawned: list[int] = []
        self.exits: dict[int, tuple[int, int]] = {}  # pid -> (status, maxrss), until its job takes it

    def spawn(self, spec: dict, with_stdin: bool) -> ZygoteChild:
        cloexec = os.O_CLOEXEC
        stdin_r, stdin_w = os.pipe2(cloexec) if with_stdin else (os.open(os.devnull, os.O_RDONLY | cloexec), None)
        out_r, out_w = os.pipe2(cloexec)
        err_r, err_w = os.pipe2(cloexec)
        spec_r, spec_w = os.pipe2(cloexec)
        zygote.spawn(self.sock, [stdin_r, out_w, err_w, spec_r])
        for fd in (stdin_r, out_w, err_w, spec_r):
            os.close(fd)
        _write_all(spec_w, P.dumps(spec))
        os.close(spec_w)
        while not self.spawned:
            self.sock.setblocking(True)
            self.read()
        return ZygoteChild(self.spawned.pop(0), stdin_w, out_r, err_r)

    def read(self) -> None:
        """Take what the zygote said: remember spawned pids, hand exits to the running job."""
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return
        finally:
            self.sock.setblocking(False)
        if not chunk:
            raise SystemExit("isol8 agent: the Python zygote died")
        self.lines += chunk
        while b"\n" in self.lines:
            line, _, rest = self.lines.partition(b"\n")
            self.lines = bytearray(rest)
            word, *numbers = line.split()
            if word == b"spawned":
                self.spawned.append(int(numbers[0]))
            elif word == b"exited":
                pid, status, rss = (int(n) for n in numbers)
                self.exits[pid] = (status, rss)
        self.deliver()

    def deliver(self) -> None:
        """Hand the running job its exit, which may arrive in the same read as `spawned`."""
        job = self.agent.job
        if job and job.proc and job.proc.pid in self.exits:
            status, rss = self.exits.pop(job.proc.pid)
            job.max_rss_kb = max(job.max_rss_kb, rss)
            job.status = status
            job.proc.returncode = os.waitstatus_to_exitcode(status)


class Upload:
    """A `put` request: one file written as the sandbox user, then a `done` event."""

    def __init__(self, agent: Agent, path: str) -> None:
        self.agent = agent
        self.path = path
        self.incoming = Incoming(agent, path)

    def on_data(self, payload: bytes) -> None:
        self.incoming.write(payload)

    def on_end(self) -> None:
        self._done(self.incoming.finish())

    def cancel(self) -> None:
        self._done(self.incoming.finish(cancelled=True))

    def _done(self, problem: FileProblem | None) -> None:
        self.agent.receiver = None
        self.agent.event({"ev": "done", "path": self.path, **_problem_fields(problem)})


class Agent:
    def __init__(self) -> None:
        # Every uid of the image's user `sandbox`: jobs run as the current one, the `fast` pool's
        # scrub moves to the next, and nothing of any of them may outlive a scrub.
        users = [user for user in pwd.getpwall() if user.pw_name == "sandbox"]
        self.gids = {user.pw_uid: user.pw_gid for user in users}
        self.uids = sorted(self.gids)
        self.uid = self.uids[0]
        self.gid = self.gids[self.uid]
        self.writable = [root for root in WRITABLE if os.path.isdir(root)]
        self.base_env = dict(os.environ)
        self.network_policy = self.base_env.pop("ISOL8_NETWORK", None)
        self.zygote: Zygote | None = None
        self.proxy: subprocess.Popen | None = None
        self.proxy_lines = bytearray()
        self.selector = selectors.DefaultSelector()
        self.decoder = P.FrameDecoder()
        self.job: Job | None = None
        self.receiver: Job | Upload | None = None  # where DATA/END frames go
        # The interpreter started ahead of the next job (node, deno): its argv, as a job asks for it.
        self.warm_argv: list[str] | None = P.loads(self.base_env.pop("ISOL8_PRESTART", "null"))
        self.waiting: subprocess.Popen | None = None
        self.kernel: Kernel | None = None  # a stateful session's interpreter, between and during cells
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wake_r = wake_r
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        os.set_blocking(0, False)
        self.selector.register(0, selectors.EVENT_READ, ("input", None))
        self.selector.register(wake_r, selectors.EVENT_READ, ("wake", None))

    # --- io ------------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        _write_all(1, data)

    def event(self, obj: dict) -> None:
        self.send(P.message(P.EVENT, obj))

    @contextlib.contextmanager
    def as_sandbox(self) -> Iterator[None]:
        """Act with the current sandbox uid's effective ids (the agent is single-threaded)."""
        os.setegid(self.gid)
        os.seteuid(self.uid)
        try:
            yield
        finally:
            os.seteuid(0)
            os.setegid(0)

    def want_stdin_write(self) -> None:
        job = self.job
        fd = job.stdin_fd() if job and job.proc else None
        if fd is not None and fd not in self.selector.get_map():
            self.selector.register(fd, selectors.EVENT_WRITE, ("stdin", None))

    def stop_stdin_write(self, fd: int) -> None:
        if fd in self.selector.get_map():
            self.selector.unregister(fd)

    # --- filtered network ----------------------------------------------------------------------
    def setup_network(self) -> str | None:
        """Start the proxy, then firewall the sandbox users to loopback; an error stops everything."""
        proxy_user = pwd.getpwnam("isol8proxy")
        self.proxy = subprocess.Popen(
            [sys.executable, "-E", "-s", "-S", "-B", "-c", PROXY_MAIN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={"ISOL8_PROXY_POLICY": self.network_policy or "{}", "PATH": "/usr/bin:/bin"},
            user=proxy_user.pw_uid,
            group=proxy_user.pw_gid,
            extra_groups=[],
            close_fds=True,
        )
        assert self.proxy.stdout
        ready = selectors.DefaultSelector()
        ready.register(self.proxy.stdout, selectors.EVENT_READ)
        if not ready.select(PROXY_START_TIMEOUT_S) or b"ready" not in self.proxy.stdout.readline():
            return "Proxy failed to start within timeout"
        uids = f"{self.uids[0]}-{self.uids[-1]}"  # every sandbox uid, the current and later ones
        rules = [
            ["iptables", "-w", "-A", "OUTPUT", "-o", "lo", "-d", "127.0.0.1", "-m", "owner", "--uid-owner", uids,
             "-j", "ACCEPT"],
            ["iptables", "-w", "-A", "OUTPUT", "-m", "owner", "--uid-owner", uids, "-p", "tcp", "-j", "REJECT",
             "--reject-with", "tcp-reset"],
            ["iptables", "-w", "-A", "OUTPUT", "-m", "owner", "--uid-owner", uids, "-j", "REJECT"],
        ]  # fmt: skip
        if _read_first("/proc/sys/net/ipv6/conf/all/disable_ipv6") != "1\n":
            rules.append(["ip6tables", "-w", "-A", "OUTPUT", "-m", "owner", "--uid-owner", uids, "-j", "REJECT"])
        for rule in rules:
            try:
                done = subprocess.run(rule, capture_output=True, text=True, check=False)
            except OSError as exc:
                return f"Failed to set up iptables rules (exit code 127): {_reason(exc)}"
            if done.returncode != 0:
                detail = (done.stderr or done.stdout).strip().splitlines()
                return f"Failed to set up iptables rules (exit code {done.returncode}): {detail[-1] if detail else ''}"
        self.base_env.update(
            {
                "HTTP_PROXY": PROXY_URL,
                "HTTPS_PROXY": PROXY_URL,
                "http_proxy": PROXY_URL,
                "https_proxy": PROXY_URL,
                "NO_PROXY": "localhost,127.0.0.1",
                "no_proxy": "localhost,127.0.0.1",
                # Node's fetch would tunnel plain http:// with CONNECT too (the proxy allows that to
                # 443 and the listed ports only); this preload routes its fetch and http(s) properly.
                "NODE_OPTIONS": f"--require {os.path.join(AGENT_DIR, 'node-proxy.cjs')}",
            }
        )
        os.set_blocking(self.proxy.stdout.fileno(), False)
        self.selector.register(self.proxy.stdout.fileno(), selectors.EVENT_READ, ("proxy", None))
        return None

    def read_proxy(self) -> bool:
        """Forward complete log lines to the running job; True once a `flushed` reply was seen."""
        assert self.proxy and self.proxy.stdout
        flushed = False
        try:
            while chunk := os.read(self.proxy.stdout.fileno(), 65536):
                self.proxy_lines += chunk
        except BlockingIOError:
            pass
        while b"\n" in self.proxy_lines:
            line, _, rest = self.proxy_lines.partition(b"\n")
            self.proxy_lines = bytearray(rest)
            entry = P.loads(line)
            if entry.get("flushed"):
                flushed = True
            elif self.job is not None:
                self.event({"ev": "net", "entry": entry})
        return flushed

    def set_network_policy(self, policy: str) -> None:
        """New allow and deny lists for the filtered network's proxy (JSON on one line)."""
        if self.proxy is not None and self.proxy.stdin is not None and "\n" not in policy:
            self.proxy.stdin.write(b"policy " + policy.encode() + b"\n")
            self.proxy.stdin.flush()

    def flush_proxy(self) -> None:
        """Close the job's proxy connections and forward their log entries before `exit`."""
        if self.proxy is None or self.proxy.stdin is None:
            return
        self.proxy.stdin.write(b"flush\n")
        self.proxy.stdin.flush()
        waiter = selectors.DefaultSelector()
        waiter.register(self.proxy.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            waiter.select(max(0.0, deadline - time.monotonic()))
            if self.read_proxy():
                return

    # --- the interpreter waiting for the next job -----------------------------------------------
    def prestart(self) -> None:
        """Start the interpreter for the next job now, so its start-up is over when the job comes.

        Only ever while no job runs (at start-up, after a job, at the end of a scrub): it never
        shares a uid with code that could reach it, and it holds nothing but its own start-up. Its
        preload waits on stdin for the job's env and cwd, then runs the file on its command line."""
        if self.warm_argv is None or self.waiting is not None:
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):  # no warm start: jobs run cold
            self.waiting = subprocess.Popen(
                self.warm_argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.base_env,
                user=self.uid,
                group=self.gid,
                extra_groups=[],
                start_new_session=True,
                close_fds=True,
            )

    def take_waiting(self, argv: list[str] | None) -> subprocess.Popen | None:
        """The waiting interpreter when it was started for exactly `argv`; any other is let go, so
        no job ever runs beside it."""
        waiting, self.waiting = self.waiting, None
        if waiting is not None and argv == self.warm_argv and waiting.poll() is None:
            return waiting
        if waiting is not None:
            with contextlib.suppress(ProcessLookupError):
                waiting.kill()
            waiting.wait()
            _close_pipes(waiting)
        if argv is not None:
            self.warm_argv = argv  # the next one is started for the file this job ran
        return None

    # --- processes -----------------------------------------------------------------------------
    def reap(self) -> None:
        while True:
            try:
                pid, status, rusage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.waiting is not None and pid == self.waiting.pid:  # it died waiting (e.g. out of memory)
                self.waiting.returncode = os.waitstatus_to_exitcode(status)
                _close_pipes(self.waiting)
                self.waiting = None
                continue
            kernel = self.kernel
            if kernel is not None and pid == kernel.pid:
                kernel.status = status
                kernel.proc.returncode = os.waitstatus_to_exitcode(status)
                if self.job is None or self.job.kernel_spec is None:  # it died between cells
                    self.forget_kernel()
            job = self.job
            if job:
                job.max_rss_kb = max(job.max_rss_kb, rusage.ru_maxrss)
                if job.proc and pid == job.proc.pid:
                    job.status = status
                    job.proc.returncode = os.waitstatus_to_exitcode(status)

    def sandbox_processes(self, spare: int | None = None) -> dict[int, set[int]]:
        """Each process with a task of any sandbox uid, whatever the task's state: pid -> those uids.
        Not `spare` (a stateful session's interpreter), nor its children already dead (it collects
        them before its next cell).

        Each task's status, because a thread-group leader that has exited is a zombie while its
        threads run; the process's own where gVisor cannot list /proc/<pid>/task of such a process."""
        found: dict[int, set[int]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            if spare is not None and (int(name) == spare or _dead_child_of(name, spare)):
                continue
            try:
                tids = os.listdir(f"/proc/{name}/task")
            except OSError:
                tids = []
            statuses = [f"/proc/{name}/task/{tid}/status" for tid in tids] or [f"/proc/{name}/status"]
            uids = {uid for status in statuses for uid in task_uids(status) if uid in self.gids}
            if uids:
                found[int(name)] = uids
        return found

    def kill_sandbox_processes(self, spare: int | None = None) -> bool:
        """SIGKILL every process of every sandbox uid until none is left (fork bombs, `setsid` and
        double forks, processes whose main thread exited, leftovers of earlier uids); False when
        some still exist at the deadline.

        `spare`, a stateful session's interpreter, lives on, stopped. Its uid's processes are first
        all stopped in one kill(-1) pass, so none can fork while the others are killed one by one
        (kill(-1, SIGKILL) would take the interpreter too). The interpreter stays stopped until its
        next cell: nothing of it (a thread a cell left) runs outside an execution's time limit."""
        self.take_waiting(None)  # it dies too (a scrub starts a new one for the next uid)
        if spare is not None:
            kill_every_process_of(self.uid, signal.SIGSTOP)
        deadline = time.monotonic() + KILL_DEADLINE_S
        pause = 0.0002
        while found := self.sandbox_processes(spare):
            if time.monotonic() > deadline:
                return False
            for pid in found:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for uid in set().union(*found.values()):
                if spare is None or uid != self.uid:
                    kill_every_process_of(uid)
            self.reap()
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
        return True

    def forget_kernel(self) -> None:
        """Let go of an interpreter that has ended (its state is gone; the next cell starts anew)."""
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None

    def reset_kernel(self) -> str | None:
        """End the interpreter and everything it left; the next cell starts a fresh one."""
        if self.job is not None:
            return "a run is in progress"
        if self.kernel is not None:
            self.kill_sandbox_processes()
            self.forget_kernel()
        return None

    # --- reuse (the pool's `fast` strategy) -------------------------------------------------------
    def scrub(self) -> str | None:
        """Leave nothing of the last execution, then move on to the next sandbox uid, so that even a
        process that escaped could not reach the next execution. None once verified: no task of any
        sandbox uid, no System V IPC object, the writable roots empty and the new uid's alone.
        Where the kernel keeps what a run made out of the agent's sight, nothing can be verified."""
        if unlisted := [what for path, what in LISTINGS.items() if not os.path.isdir(path)]:
            return f"{' and '.join(unlisted)} cannot be listed here, so what a run left could not be removed"
        if not self.kill_sandbox_processes():
            return "sandbox processes survived SIGKILL"
        with self.as_sandbox():
            for root in self.writable:
                with contextlib.suppress(OSError):  # what stays is caught just below
                    if os.lstat(root).st_uid == self.uid:
                        os.chmod(root, 0o700)  # the code may have locked itself out
                    for name in os.listdir(root):
                        with contextlib.suppress(OSError):
                            _remove(os.path.join(root, name))
        self.remove_ipc()
        try:
            self.next_uid()
        except OSError as exc:
            return f"could not hand the sandbox to the next uid: {_reason(exc)}"
        with self.as_sandbox():
            left = [root for root in self.writable if not _empty_and_private(root, self.uid)]
        if self.sandbox_processes():
            return "sandbox processes survived"
        if left:
            return f"could not empty {', '.join(left)}"
        if self.ipc_objects():
            return "could not remove every System V IPC object"
        self.prestart()
        return None

    def next_uid(self) -> None:
        """Jobs from now on run as the next sandbox uid, which alone may enter the writable roots."""
        uid = self.uids[(self.uids.index(self.uid) + 1) % len(self.uids)]
        gid = self.gids[uid]
        for root in self.writable:  # mount points: the code can neither replace them nor make them symlinks
            os.chown(root, uid, gid, follow_symlinks=False)
        self.uid, self.gid = uid, gid
        with self.as_sandbox():
            for root in self.writable:
                os.chmod(root, 0o700)

    def ipc_objects(self) -> list[tuple[str, int, int, int]]:
        """Every System V IPC object in the container's namespace: (ipcrm flag, id, creator, owner)."""
        found = []
        for kind, (id_column, flag) in IPC_KINDS.items():
            lines = (_read_first(f"/proc/sysvipc/{kind}") or "").splitlines()
            header = lines[0].split() if lines else []
            for line in lines[1:]:
                fields = dict(zip(header, line.split(), strict=False))
                found.append((flag, int(fields[id_column]), int(fields["cuid"]), int(fields["uid"])))
        return found

    def remove_ipc(self) -> None:
        """Remove every object as its creator (or else its owner): IPC_RMID stays theirs even after
        IPC_SET handed the object to another uid. What no sandbox uid made fails the check after."""
        removals: dict[int, list[str]] = {}
        for flag, ident, creator, owner in self.ipc_objects():
            actor = creator if creator in self.gids else owner if owner in self.gids else None
            if actor is not None:
                removals.setdefault(actor, []).extend([flag, str(ident)])
        for actor, args in removals.items():
            subprocess.run(["ipcrm", *args], user=actor, group=self.gids[actor], extra_groups=[],
                           capture_output=True, check=False)  # fmt: skip

    # --- job lifecycle -------------------------------------------------------------------------
    def handle_request(self, req: dict) -> None:
        op = req.get("op")
        if op == "ping":
            self.event({"ev": "pong"})
        elif op == "cancel":
            self.cancel()
        elif op == "resize":
            if self.job is not None:
                self.job.resize(int(req["rows"]), int(req["cols"]))
        elif op == "signal":
            if self.job is not None:
                self.job.signal(str(req.get("signal")))
        elif op == "network":
            self.set_network_policy(str(req["policy"]))
        elif op == "run":
            if self.job is not None:
                self.event({"ev": "exit", "code": 1, "error": "agent is busy with another job"})
                return
            job = self.job = Job(self, req)
            if job.receiving_files or job.expect_stdin:
                self.receiver = job
            if not job.receiving_files:
                job.start()
        elif op == "put":
            self.receiver = Upload(self, req["path"])
        elif op == "get":
            self.send_file(req["path"], int(req["max_bytes"]))
        elif op == "scrub":
            self.event({"ev": "scrubbed", "error": self.scrub()})
        elif op == "reset":
            self.event({"ev": "reset", "error": self.reset_kernel()})
        else:
            self.event({"ev": "error", "message": f"unknown op {op!r}"})

    def cancel(self) -> None:
        """The engine abandoned its request: end it now, so its last event comes at once."""
        receiver, job = self.receiver, self.job
        if isinstance(receiver, Upload):
            receiver.cancel()
        elif receiver is not None and receiver is not job:
            receiver.cancel()  # a finished job still owed its stdin
        if job is not None:
            job.cancel()

    def handle_frame(self, kind: int, payload: bytes) -> None:
        if kind == P.REQUEST:
            self.handle_request(P.loads(payload))
        elif self.receiver is None:
            return
        elif kind == P.DATA:
            self.receiver.on_data(payload)
        elif kind == P.END:
            self.receiver.on_end()

    def finish(self, job: Job) -> None:
        """Drain output, kill leftovers (a session's interpreter lives on unless the cell was killed),
        send output paths and the exit event."""
        for fd in list(job.streams):
            job.read_output(fd)
        cell = job.kernel_spec is not None
        kernel = self.kernel
        spare = kernel.pid if kernel is not None and kernel.alive and not (cell and job.killed) else None
        self.kill_sandbox_processes(spare)
        if not cell:  # a cell's output descriptors are the interpreter's, kept for the next cell
            for fd in list(job.streams):
                self.selector.unregister(fd)
        job.streams.clear()
        job.close_stdin()
        if job.terminal is not None:
            os.close(job.terminal)
            job.terminal = None
        state = job.kernel_state()
        if self.kernel is not None and not self.kernel.alive:
            self.forget_kernel()
        if job.proc and not cell:
            for pipe in (job.proc.stdout, job.proc.stderr):
                if pipe and not pipe.closed:
                    with contextlib.suppress(OSError):
                        pipe.close()
        duration = (time.monotonic() - job.started) * 1000 if job.started else 0.0
        self.flush_proxy()
        if not job.error:
            budget = job.max_file_size  # for all output paths together: hard links cost nothing to make
            for path in job.request.get("output_paths", []):
                budget -= self.send_file(path, budget, job.max_file_size)
        self.job = None
        self.event(
            {
                "ev": "exit",
                "code": 1 if job.error else job.exit_code(),
                "timed_out": job.timed_out,
                "killed": job.killed,
                "duration_ms": round(duration, 3),
                "stdout_bytes": job.total[P.STDOUT],
                "stderr_bytes": job.total[P.STDERR],
                "error": job.error,
                "kernel": state,
                "results_dropped": job.results_dropped,
                **job.usage(),
            }
        )
        if job.request.get("prestart"):  # another job will follow on this uid (a session, a next step)
            self.prestart()

    def open_regular(self, path: str) -> int:
        """A read-only descriptor on the regular file `path`, opened as the sandbox user without
        blocking (a FIFO would otherwise wait for a writer); FileProblem for anything else."""
        try:
            with self.as_sandbox():
                target = confine(path)
                try:
                    fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
                except OSError as exc:
                    info = _lstat(target)
                    if info is not None and not stat.S_ISREG(info.st_mode) and not stat.S_ISLNK(info.st_mode):
                        raise FileProblem("not_regular", f"not a regular file ({_kind(info.st_mode)})") from exc
                    raise
        except (RefusedPath, OSError) as exc:
            raise _problem(exc) from exc
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise FileProblem("not_regular", f"not a regular file ({_kind(mode)})")
        return fd

    def send_file(self, path: str, limit: int, maximum: int | None = None) -> int:
        """One file out: a `file {path, size}` event, its DATA frames and END; or a `file {path,
        error, reason}` event, also after some DATA when the content runs past `limit` (the size
        on disk may lie: the bytes are counted as they are read). Returns the bytes sent."""
        maximum = maximum or limit
        scope = "" if limit == maximum else f", {limit} bytes of it left for this execution's output paths"
        try:
            fd = self.open_regular(path)
        except FileProblem as problem:
            self.event({"ev": "file", "path": path, **_problem_fields(problem)})
            return 0
        sent = 0
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                raise FileProblem("too_large", f"it is {size} bytes, over maxFileSize ({maximum} bytes{scope})")
            self.event({"ev": "file", "path": path, "size": size})
            while chunk := os.read(fd, P.MAX_PAYLOAD):
                if sent + len(chunk) > limit:
                    raise FileProblem("too_large", f"it grew past maxFileSize ({maximum} bytes{scope}) as it was read")
                sent += len(chunk)
                self.send(P.frame(P.DATA, chunk))
            self.send(P.frame(P.END))
        except (FileProblem, OSError) as exc:
            self.event({"ev": "file", "path": path, **_problem_fields(_problem(exc))})
        finally:
            os.close(fd)
        return sent

    # --- main loop -----------------------------------------------------------------------------
    def run(self) -> None:
        if self.base_env.get("ISOL8_RUNTIME") == "python":
            self.zygote = Zygote(self)  # forked now, before any job: its memory holds none
            self.selector.register(self.zygote.sock, selectors.EVENT_READ, ("zygote", None))
        error = self.setup_network() if self.network_policy is not None else None
        if not error:
            self.prestart()  # after the network setup: it inherits the proxy variables
        self.event({"ev": "hello", "version": P.VERSION, "uid": self.uid, "error": error})
        if error:
            return
        while True:
            job = self.job
            timeout = None
            if job and job.proc and not job.killed:
                timeout = max(0.0, job.deadline - time.monotonic())
            for key, _ in self.selector.select(timeout):
                what, _kind = key.data
                if what == "input":
                    try:
                        chunk = os.read(0, 1 << 20)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        self.kill_sandbox_processes()
                        return  # the engine went away: the container ends (and is auto-removed)
                    for frame_kind, payload in self.decoder.feed(chunk):
                        self.handle_frame(frame_kind, payload)
                elif what == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
                    self.reap()
                elif what == "proxy":
                    self.read_proxy()
                elif what == "zygote" and self.zygote:
                    self.zygote.read()
                elif what == "output" and self.job and key.fd in self.job.streams:
                    self.job.read_output(key.fd)
                elif what == "output" and self.kernel is not None:
                    self.kernel.drop_output(key.fd)
                elif what == "kernel" and self.kernel is not None:
                    if self.job is not None and self.job.kernel_spec is not None:
                        self.job.take_kernel_lines()
                    else:  # between cells nothing is owed: results of threads a cell left go nowhere
                        lines = self.kernel.read_lines(1 << 20)
                        if None in lines:
                            self.reset_kernel()  # its results channel is broken: no cell could end
                        elif any(line and line.get("ack") for line in lines):
                            self.kernel.ack()
                elif what == "stdin" and self.job:
                    self.job.write_stdin()
            job = self.job
            if job and job.proc:
                if not job.killed and time.monotonic() >= job.deadline and job.status is None:
                    job.stop(timed_out=not job.interrupted)  # an interrupted cell's grace is over
                if job.status is None:
                    self.reap()
                if job.status is not None:
                    self.finish(job)


def _dead_child_of(pid: str, parent: int) -> bool:
    """Whether process `pid` is a zombie whose parent is `parent`."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            fields = stat_file.read().rpartition(b")")[2].split()
        return fields[0] == b"Z" and int(fields[1]) == parent
    except (OSError, IndexError, ValueError):
        return False


def _take_controlling_terminal() -> None:
    """In the job, before exec: its terminal (stdin) becomes the controlling one of its session."""
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _close_pipes(proc: subprocess.Popen) -> None:
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def _empty_and_private(root: str, uid: int) -> bool:
    try:
        info = os.lstat(root)
        return info.st_uid == uid and stat.S_IMODE(info.st_mode) == 0o700 and not os.listdir(root)
    except OSError:
        return False


def _remove(path: str) -> None:
    """Delete a file or a whole tree, fixing permissions the user took away from itself."""
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, 0o700)
        for name in os.listdir(path):
            _remove(os.path.join(path, name))
        os.rmdir(path)
    else:
        os.unlink(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            selectors.DefaultSelector().select(0.01)
            continue
        view = view[written:]


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a symlink")):  # fmt: skip
        if test(mode):
            return name
    return "not a plain file"


def _problem(exc: BaseException) -> FileProblem:
    """The FileProblem an exception of a file operation stands for."""
    if isinstance(exc, FileProblem):
        return exc
    if isinstance(exc, RefusedPath):
        return FileProblem("refused", str(exc))
    if isinstance(exc, FileNotFoundError):
        return FileProblem("missing", os.strerror(errno.ENOENT))
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return FileProblem("refused", "the path is a symlink")
    if isinstance(exc, OSError) and exc.errno in (errno.EISDIR, errno.ENXIO):
        return FileProblem("not_regular", "not a regular file")
    return FileProblem("failed", _reason(exc))


def _problem_fields(problem: FileProblem | None) -> dict:
    return {"error": str(problem), "reason": problem.reason} if problem else {"error": None}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno == errno.ELOOP:
            return "the path is a symlink"
        return os.strerror(exc.errno)
    return str(exc)


def main() -> None:
    Agent().run()
