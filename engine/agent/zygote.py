"""The Python fast path: run a Python job by forking an already-started interpreter.

A fresh `python3` costs ~12 ms before the first line of user code; a fork of a warm interpreter
about 1 ms. The zygote is forked from the agent before any job exists, so its memory holds no
job's data; it never reads a job either. For each job it only forks: the new child reads its own
spec from a pipe, drops to the sandbox user and runs the file as `python3 FILE` would (a fresh
`__main__`, `sys.argv`, `sys.path` with the script's folder, PYTHONPATH and the user site, stdio
on the job's pipes, atexit and non-daemon threads at exit). The zygote reaps its children and
reports each exit (status and peak memory) to the agent. Stdlib only.

Wire (a Unix socket pair with the agent): the agent sends one byte with four descriptors
(stdin, stdout, stderr, spec) over SCM_RIGHTS; the zygote answers `spawned <pid>`, and later
`exited <pid> <status> <maxrss_kb>`, one line each.
"""

from __future__ import annotations

import array
import builtins
import contextlib
import io
import os
import signal
import site
import socket
import sys
import types

import protocol as P  # a sibling inside the image (/opt/isol8)

FDS = 4
AGENT_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def start() -> tuple[int, socket.socket]:
    """Fork the zygote; the agent keeps the returned socket (and the pid, to notice a death)."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        parent.close()
        try:
            _serve(child)
        finally:
            os._exit(0)
    child.close()
    return pid, parent


def spawn(sock: socket.socket, fds: list[int]) -> None:
    """Ask the zygote for a child on these four descriptors (it answers `spawned <pid>`)."""
    sock.sendmsg([b"s"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def _serve(sock: socket.socket) -> None:
    # The agent starts without `site` (-S: ~6 ms of every container start); the code the zygote
    # runs gets it as `python3 FILE` would: site-packages and their .pth files, exit(), help().
    site.main()
    keep = sock.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, 65536)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    sock.setblocking(False)
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "sock")
    selector.register(wake_r, selectors.EVENT_READ, "wake")
    while True:
        for key, _ in selector.select():
            if key.data == "wake":
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                _reap(sock)
                continue
            try:
                message, ancillary, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(FDS * 4))
            except BlockingIOError:
                continue
            if not message:
                return  # the agent is gone
            fds = array.array("i")
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
            pid = os.fork()
            if pid == 0:
                selector.close()
                os.close(wake_r)
                os.close(wake_w)
                sock.close()
                _child(list(fds))
            for fd in fds:
                os.close(fd)
            _send(sock, f"spawned {pid}\n")


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, f"exited {pid} {status} {usage.ru_maxrss}\n")


def _send(sock: socket.socket, line: str) -> None:
    sock.setblocking(True)
    try:
        sock.sendall(line.encode())
    finally:
        sock.setblocking(False)


def _child(fds: list[int]) -> None:
    """In the new process: read the spec, become the sandbox user, run the file, exit."""
    code = 1
    try:
        stdin, stdout, stderr, spec_fd = fds
        with os.fdopen(spec_fd, "rb") as spec_file:
            spec = P.loads(spec_file.read())
        for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
            os.dup2(fd, target)
            os.close(fd)
        os.setsid()
        os.setgroups([])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
        signal.set_wakeup_fd(-1)
        for name in ("SIGCHLD", "SIGTERM", "SIGINT"):
            signal.signal(getattr(signal, name), signal.SIG_DFL if name != "SIGINT" else signal.default_int_handler)
        os.chdir(spec["cwd"])
        os.umask(0o022)
        code = _run(spec["path"], spec["env"])
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:  # a broken spawn: say why on the job's stderr
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _run(path: str, env: dict[str, str]) -> int:
    os.environ.clear()
    os.environ.update(env)
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    sys.stdin = open(0, encoding="utf-8", errors="strict", closefd=False)  # noqa: SIM115
    if unbuffered:  # as `python3 -u`: nothing waits in a buffer
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", write_through=True)
    else:
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True
    )
    sys.argv = [path]
    sys.path[:] = _path(path, env)
    if site.ENABLE_USER_SITE and os.path.isdir(site.USER_SITE or ""):
        site.addsitedir(site.USER_SITE or "")  # its .pth files, as at interpreter start
    if "random" in sys.modules:
        sys.modules["random"].seed()
    for name, module in list(sys.modules.items()):  # the agent's own modules: the job's may share a name
        if (getattr(module, "__file__", None) or "").startswith(AGENT_DIR):
            del sys.modules[name]
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=path, __builtins__=builtins, __cached__=None, __spec__=None)
    sys.modules["__main__"] = main
    code = 0
    try:
        with open(path, "rb") as source:
            compiled = compile(source.read(), path, "exec", dont_inherit=True)
        exec(compiled, main.__dict__)
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException as exc:
        user_frames = exc.__traceback__.tb_next if exc.__traceback__ else None  # not this function's
        sys.excepthook(type(exc), exc.with_traceback(user_frames), user_frames)
        code = 1
    import atexit
    import threading

    threading._shutdown()  # type: ignore[attr-defined]  # wait for non-daemon threads, as python3 does
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    return code


def _path(script: str, env: dict[str, str]) -> list[str]:
    """sys.path as `python3 SCRIPT` would build it with this environment."""
    extra = [p for p in env.get("PYTHONPATH", "").split(":") if p]
    stdlib = [p for p in sys.path[1:] if "-packages" not in p]
    dist = [p for p in sys.path[1:] if "-packages" in p]
    user_base = env.get("PYTHONUSERBASE") or os.path.expanduser("~/.local")
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    user_site = os.path.join(user_base, "lib", version, "site-packages")
    site.USER_BASE, site.USER_SITE, site.ENABLE_USER_SITE = user_base, user_site, True
    user = [user_site] if os.path.isdir(user_site) else []
    return [os.path.dirname(script), *extra, *stdlib, *user, *dist]


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1
