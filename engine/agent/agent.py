"""isol8 agent: PID 1 of every sandbox container. Stdlib only; see protocol.py for the wire format.

Why an agent instead of `docker exec`: one Engine API exec costs about 45 ms on our machines, a job
sent over the already-attached stream about 10 ms. The agent also owns what only PID 1 can do
well: reaping every zombie, killing every process of a job (also `setsid`/double-forked ones) on
timeout, and enforcing the output cap before bytes ever leave the container.

Privileges: the agent runs as root with only CAP_SETUID/CAP_SETGID (to start jobs as `sandbox`)
and CAP_KILL (to kill the job's processes whatever they became). Files are written and read with
the effective uid of `sandbox`, so a symlink planted by user code can never make the agent touch
a file the sandbox user could not touch itself.

Hand-written on purpose: it is the product's core, must start in milliseconds and cannot depend
on anything but the interpreter that is in every image.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import selectors
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator

import protocol as P  # sibling files inside the image (/opt/isol8)
import zygote

ROOTS = ("/sandbox", "/tmp")
READ_CHUNK = 64 * 1024
PROXY_URL = "http://127.0.0.1:8118"
SCRUBBED = ("/sandbox", "/tmp", "/dev/shm", "/dev/mqueue")  # everything the sandbox user can write
PROXY_START_TIMEOUT_S = 5.0


class RefusedPath(Exception):
    pass


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


class Job:
    """One run request: receives its files and stdin, runs, streams, reports."""

    def __init__(self, agent: Agent, request: dict) -> None:
        self.agent = agent
        self.request = request
        self.files: list[str] = list(request.get("files", []))
        self.expect_stdin = bool(request.get("stdin"))
        self.max_output = int(request.get("max_output", 1 << 20))
        self.timeout = float(request.get("timeout_ms", 30000)) / 1000.0
        self.error: str | None = None
        self.current_fd: int | None = None
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
        self._begin_next_file()

    # --- receiving files and stdin -------------------------------------------------------------
    def _begin_next_file(self) -> None:
        while self.files and self.current_fd is None:
            if self.error:
                return
            path = self.files[0]
            try:
                target = confine(path)
                with self.agent.as_sandbox():
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    confine(target)
                    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
                    self.current_fd = os.open(target, flags, 0o644)
            except (RefusedPath, OSError) as exc:
                self.error = f"Cannot write {path}: {_reason(exc)}"
            return

    @property
    def receiving_files(self) -> bool:
        return bool(self.files)

    def on_data(self, payload: bytes) -> None:
        if self.receiving_files:
            if self.current_fd is not None:
                try:
                    _write_all(self.current_fd, payload)
                except OSError as exc:
                    self.error = f"Cannot write {self.files[0]}: {_reason(exc)}"
                    os.close(self.current_fd)
                    self.current_fd = None
        elif self.stdin_open:
            self.stdin_buffer += payload
            self.agent.want_stdin_write()

    def on_end(self) -> None:
        if self.receiving_files:
            if self.current_fd is not None:
                os.close(self.current_fd)
                self.current_fd = None
            self.files.pop(0)
            self._begin_next_file()
            if not self.receiving_files:
                if not self.expect_stdin:
                    self.agent.receiver = None
                self.start()
        else:
            self.agent.receiver = None
            self.stdin_open = False
            self.agent.want_stdin_write()

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
            cwd = confine(cwd)
            with self.agent.as_sandbox():
                os.makedirs(cwd, exist_ok=True)
            if self.agent.zygote and req.get("python_file"):
                self.proc = self.agent.zygote.spawn(
                    {"uid": self.agent.uid, "gid": self.agent.gid, "cwd": cwd, "path": req["python_file"], "env": env},
                    self.expect_stdin,
                )
                self.agent.zygote.deliver()
            else:
                self.proc = self._popen(req["argv"], cwd, env)
        except (RefusedPath, OSError, subprocess.SubprocessError) as exc:
            self.error = f"Cannot start {req['argv'][0]!r}: {_reason(exc)}"
            self.agent.finish(self)
            return
        self.started = time.monotonic()
        self.deadline = self.started + self.timeout
        assert self.proc.stdout and self.proc.stderr
        for kind, pipe in ((P.STDOUT, self.proc.stdout), (P.STDERR, self.proc.stderr)):
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            self.streams[fd] = kind
            self.agent.selector.register(fd, selectors.EVENT_READ, ("output", kind))
        if self.proc.stdin:
            os.set_blocking(self.proc.stdin.fileno(), False)
            self.agent.want_stdin_write()

    def _popen(self, argv: list[str], cwd: str, env: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if self.expect_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            user=self.agent.uid,
            group=self.agent.gid,
            extra_groups=[],
            start_new_session=True,
            close_fds=True,
        )

    def read_output(self, fd: int) -> bool:
        """Forward what `fd` has; False at EOF (the fd is then closed and unregistered)."""
        kind = self.streams[fd]
        while True:
            try:
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return True
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
        proc = self.proc
        if proc is None or proc.stdin is None:
            return
        fd = proc.stdin.fileno()
        try:
            while self.stdin_buffer:
                written = os.write(fd, self.stdin_buffer[: 1 << 16])
                del self.stdin_buffer[:written]
        except BlockingIOError:
            return
        except BrokenPipeError:
            self.stdin_buffer.clear()
            self.stdin_open = False
        if not self.stdin_buffer and not self.stdin_open:
            self.agent.stop_stdin_write(fd)
            proc.stdin.close()

    def stop(self, *, timed_out: bool) -> None:
        """Kill every process of the job (timeout or a `kill` request)."""
        self.timed_out = self.timed_out or timed_out
        self.killed = True
        self.agent.kill_sandbox_processes()

    def usage(self) -> dict:
        ooms, cpu, net = self.before
        cpu_after, net_after = cpu_ns(), net_bytes()
        return {
            "oom_killed": oom_kills() > ooms,
            "cpu_time_ms": round((cpu_after - cpu) / 1e6, 3) if cpu is not None and cpu_after else None,
            "peak_memory_bytes": self.max_rss_kb * 1024,
            "network_bytes_in": net_after[0] - net[0] if net and net_after else None,
            "network_bytes_out": net_after[1] - net[1] if net and net_after else None,
        }

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
        _write_all(spec_w, json.dumps(spec).encode())
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
        self.fd: int | None = None
        self.error: str | None = None
        try:
            target = confine(path)
            with agent.as_sandbox():
                os.makedirs(os.path.dirname(target), exist_ok=True)
                confine(target)
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
                self.fd = os.open(target, flags, 0o644)
        except (RefusedPath, OSError) as exc:
            self.error = _reason(exc)

    def on_data(self, payload: bytes) -> None:
        if self.fd is None:
            return
        try:
            _write_all(self.fd, payload)
        except OSError as exc:
            self.error = _reason(exc)
            os.close(self.fd)
            self.fd = None

    def on_end(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.agent.receiver = None
        self.agent.event({"ev": "done", "path": self.path, "error": self.error})


class Agent:
    def __init__(self) -> None:
        user = pwd.getpwnam("sandbox")
        self.uid, self.gid = user.pw_uid, user.pw_gid
        self.base_env = dict(os.environ)
        self.network_policy = self.base_env.pop("ISOL8_NETWORK", None)
        self.zygote: Zygote | None = None
        self.proxy: subprocess.Popen | None = None
        self.proxy_lines = bytearray()
        self.selector = selectors.DefaultSelector()
        self.decoder = P.FrameDecoder()
        self.job: Job | None = None
        self.receiver: Job | Upload | None = None  # where DATA/END frames go
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
        """Act with the sandbox user's effective ids (the agent is single-threaded)."""
        os.setegid(self.gid)
        os.seteuid(self.uid)
        try:
            yield
        finally:
            os.seteuid(0)
            os.setegid(0)

    def want_stdin_write(self) -> None:
        job = self.job
        if job and job.proc and job.proc.stdin and not job.proc.stdin.closed:
            fd = job.proc.stdin.fileno()
            if fd not in self.selector.get_map():
                self.selector.register(fd, selectors.EVENT_WRITE, ("stdin", None))

    def stop_stdin_write(self, fd: int) -> None:
        if fd in self.selector.get_map():
            self.selector.unregister(fd)

    # --- filtered network ----------------------------------------------------------------------
    def setup_network(self) -> str | None:
        """Start the proxy, then firewall the sandbox user to loopback; an error stops everything."""
        proxy_user = pwd.getpwnam("isol8proxy")
        self.proxy = subprocess.Popen(
            [sys.executable, "-E", "-s", os.path.join(os.path.dirname(__file__), "proxy.py")],
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
        uid = str(self.uid)
        rules = [
            ["iptables", "-w", "-A", "OUTPUT", "-o", "lo", "-d", "127.0.0.1", "-m", "owner", "--uid-owner", uid,
             "-j", "ACCEPT"],
            ["iptables", "-w", "-A", "OUTPUT", "-m", "owner", "--uid-owner", uid, "-p", "tcp", "-j", "REJECT",
             "--reject-with", "tcp-reset"],
            ["iptables", "-w", "-A", "OUTPUT", "-m", "owner", "--uid-owner", uid, "-j", "REJECT"],
        ]  # fmt: skip
        if _read_first("/proc/sys/net/ipv6/conf/all/disable_ipv6") != "1\n":
            rules.append(["ip6tables", "-w", "-A", "OUTPUT", "-m", "owner", "--uid-owner", uid, "-j", "REJECT"])
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
                # Node 20 ignores the variables above; this preload routes its fetch and http(s).
                "NODE_OPTIONS": f"--require {os.path.join(os.path.dirname(__file__), 'node-proxy.cjs')}",
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
            entry = json.loads(line)
            if entry.get("flushed"):
                flushed = True
            elif self.job is not None:
                self.event({"ev": "net", "entry": entry})
        return flushed

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

    # --- processes -----------------------------------------------------------------------------
    def reap(self) -> None:
        while True:
            try:
                pid, status, rusage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self.job
            if job:
                job.max_rss_kb = max(job.max_rss_kb, rusage.ru_maxrss)
                if job.proc and pid == job.proc.pid:
                    job.status = status
                    job.proc.returncode = os.waitstatus_to_exitcode(status)

    def sandbox_pids(self) -> list[int]:
        pids = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/status", "rb") as status:
                    text = status.read()
            except OSError:
                continue
            state = uid_line = b""
            for line in text.splitlines():
                if line.startswith(b"State:"):
                    state = line
                elif line.startswith(b"Uid:"):
                    uid_line = line
                    break
            if b"Z" in state.split()[1:2] or not uid_line:
                continue
            if str(self.uid).encode() in uid_line.split()[1:]:
                pids.append(int(name))
        return pids

    def kill_sandbox_processes(self) -> None:
        """SIGKILL every process of the sandbox user until none is left (fork bombs included)."""
        for _ in range(1000):
            pids = self.sandbox_pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.0005)
            self.reap()

    # --- reuse (the pool's `fast` strategy) -------------------------------------------------------
    def scrub(self) -> str | None:
        """Leave nothing of the last execution: processes, files, IPC objects. None when verified."""
        self.kill_sandbox_processes()
        with self.as_sandbox():
            os.chmod("/sandbox", 0o755)
            for root in SCRUBBED:
                with contextlib.suppress(FileNotFoundError):
                    for name in os.listdir(root):
                        with contextlib.suppress(OSError):  # what stays is caught just below
                            _remove(os.path.join(root, name))
        if self.sandbox_ipc():
            subprocess.run(["ipcrm", "--all"], user=self.uid, group=self.gid, extra_groups=[],
                           capture_output=True, check=False)  # fmt: skip
        left = [root for root in SCRUBBED if os.path.isdir(root) and os.listdir(root)]
        if self.sandbox_pids():
            return "sandbox processes survived"
        if left or self.sandbox_ipc():
            return f"could not empty {', '.join(left) or 'System V IPC'}"
        return None

    def sandbox_ipc(self) -> bool:
        """Whether the sandbox user owns any System V shared memory, queue or semaphore."""
        uid = str(self.uid)
        for kind in ("shm", "msg", "sem"):
            lines = (_read_first(f"/proc/sysvipc/{kind}") or "").splitlines()[1:]
            header = (_read_first(f"/proc/sysvipc/{kind}") or "").split("\n", 1)[0].split()
            column = header.index("uid") if "uid" in header else None
            if column is not None and any(line.split()[column] == uid for line in lines):
                return True
        return False

    # --- job lifecycle -------------------------------------------------------------------------
    def handle_request(self, req: dict) -> None:
        op = req.get("op")
        if op == "ping":
            self.event({"ev": "pong"})
        elif op == "kill":
            if self.job and self.job.proc:
                self.job.stop(timed_out=False)
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
            self.send_file(req["path"])
        elif op == "scrub":
            self.event({"ev": "scrubbed", "error": self.scrub()})
        else:
            self.event({"ev": "error", "message": f"unknown op {op!r}"})

    def handle_frame(self, kind: int, payload: bytes) -> None:
        if kind == P.REQUEST:
            self.handle_request(json.loads(payload))
        elif self.receiver is None:
            return
        elif kind == P.DATA:
            self.receiver.on_data(payload)
        elif kind == P.END:
            self.receiver.on_end()

    def finish(self, job: Job) -> None:
        """Drain output, kill leftovers, send output paths and the exit event."""
        for fd in list(job.streams):
            job.read_output(fd)
        self.kill_sandbox_processes()
        for fd in list(job.streams):
            self.selector.unregister(fd)
        job.streams.clear()
        if job.proc:
            for pipe in (job.proc.stdin, job.proc.stdout, job.proc.stderr):
                if pipe and not pipe.closed:
                    self.stop_stdin_write(pipe.fileno())
                    with contextlib.suppress(OSError):
                        pipe.close()
        duration = (time.monotonic() - job.started) * 1000 if job.started else 0.0
        self.flush_proxy()
        if not job.error:
            for path in job.request.get("output_paths", []):
                self.send_file(path)
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
                **job.usage(),
            }
        )

    def send_file(self, path: str) -> None:
        try:
            target = confine(path)
            with self.as_sandbox():
                confine(target)
                # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below).
                fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except (RefusedPath, OSError) as exc:
            self.event({"ev": "file", "path": path, "error": _reason(exc)})
            return
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self.event({"ev": "file", "path": path, "error": "not a regular file"})
                return
            os.set_blocking(fd, True)
            self.event({"ev": "file", "path": path, "size": info.st_size})
            while chunk := os.read(fd, P.MAX_PAYLOAD):
                self.send(P.frame(P.DATA, chunk))
            self.send(P.frame(P.END))
        finally:
            os.close(fd)

    # --- main loop -----------------------------------------------------------------------------
    def run(self) -> None:
        if self.base_env.get("ISOL8_RUNTIME") == "python":
            self.zygote = Zygote(self)  # forked now, before any job: its memory holds none
            self.selector.register(self.zygote.sock, selectors.EVENT_READ, ("zygote", None))
        error = self.setup_network() if self.network_policy is not None else None
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
                elif what == "output" and self.job:
                    self.job.read_output(key.fd)
                elif what == "stdin" and self.job:
                    self.job.write_stdin()
            job = self.job
            if job and job.proc:
                if not job.killed and time.monotonic() >= job.deadline and job.status is None:
                    job.stop(timed_out=True)
                if job.status is None:
                    self.reap()
                if job.status is not None:
                    self.finish(job)


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


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno == errno.ELOOP:
            return "the path is a symlink"
        return os.strerror(exc.errno)
    return str(exc)


if __name__ == "__main__":
    Agent().run()
