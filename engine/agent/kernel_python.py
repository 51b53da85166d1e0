"""A stateful session's Python interpreter: runs each execution's file in one namespace, like a
notebook's cells, and reports the values it displays as MIME bundles. Stdlib only.

Started by the agent (engine/agent/kernel.py) as the sandbox user. It reads one cell per line
(JSON `{path, cwd, env}`) from the control descriptor and writes, per line on the results
descriptor, `{"result": {"data": bundle, "main": bool}, "ack": true}` for each displayed value and
`{"done": code}` when the cell ends. After a result it waits for the agent's `ack` line, so what
the cell prints next cannot overtake the result (the agent sends the output written before it
first); a result from another thread asks no `ack` (the main thread owns the control pipe).
Its stdout and stderr are the cell's output. A cell's SIGINT (the agent's timeout) raises
KeyboardInterrupt in the cell only, never in this loop.
"""

from __future__ import annotations

import ast
import base64
import builtins
import contextlib
import json
import linecache
import os
import signal
import sys
import threading
import traceback
import warnings
from typing import Any

MIME_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("text/latex", "_repr_latex_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("application/json", "_repr_json_"),
    ("application/pdf", "_repr_pdf_"),
)
BINARY = ("image/png", "image/jpeg", "application/pdf")
KNOWN = {"text/plain", *(mime for mime, _ in MIME_METHODS)}


class Kernel:
    def __init__(self, control_fd: int, results_fd: int) -> None:
        self.control = os.fdopen(control_fd, "rb")
        self.results = os.fdopen(results_fd, "w", encoding="utf-8", closefd=True)
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins, "display": self.display}
        self.running = False  # a cell's own code runs: a SIGINT interrupts it
        self.loop: Any = None  # asyncio's, made by the first cell that awaits at top level

    # --- displaying ----------------------------------------------------------------------------
    def display(self, *objects: Any) -> None:
        """Show each object as a rich result (the notebook's `display`)."""
        for obj in objects:
            self.send_result(bundle_of(obj), main=False)

    def send_result(self, bundle: dict[str, str], main: bool) -> None:
        _flush()  # what the cell printed before comes first
        ack = threading.current_thread() is threading.main_thread()
        self.results.write(json.dumps({"result": {"data": bundle, "main": main}, "ack": ack}) + "\n")
        self.results.flush()
        if ack:
            self.control.readline()

    def show_figures(self) -> None:
        """Every open matplotlib figure, as PNG, then closed (as a notebook's inline backend does)."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        import io

        for number in pyplot.get_fignums():
            figure = pyplot.figure(number)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", bbox_inches="tight")
            text = _safe_repr(figure)
            self.send_result({"image/png": base64.b64encode(buffer.getvalue()).decode(), "text/plain": text}, False)
        pyplot.close("all")

    # --- running -------------------------------------------------------------------------------
    def run_cell(self, cell: dict[str, Any]) -> int:
        path = cell["path"]
        if cell.get("cwd"):  # else it stays where the last cell left it
            os.chdir(cell["cwd"])
        os.environ.update(cell.get("env") or {})
        try:
            with open(path, encoding="utf-8") as file:
                source = file.read()
            linecache.cache[path] = (len(source), None, source.splitlines(True), path)
            tree = ast.parse(source, path)
            last = tree.body[-1] if tree.body else None
            if isinstance(last, ast.Expr):  # the final expression: its value is the main result
                tree.body.pop()
            else:
                last = None
            self.run(compile(tree, path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT))
            if last is not None:
                value = self.run(
                    compile(ast.Expression(last.value), path, "eval", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                )
                if value is not None:
                    self.namespace["_"] = value
                    self.send_result(bundle_of(value), main=True)
            self.show_figures()
            return 0
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except KeyboardInterrupt:
            self.print_error()
            return 130
        except BaseException:
            self.print_error()
            return 1
        finally:
            self.running = False

    def run(self, code: Any) -> Any:
        self.running = True
        try:
            value = eval(code, self.namespace)
            if code.co_flags & 0x80:  # CO_COROUTINE: the cell awaits at its top level
                if self.loop is None:
                    import asyncio

                    self.loop = asyncio.new_event_loop()
                    asyncio.set_event_loop(self.loop)
                value = self.loop.run_until_complete(value)
            return value
        finally:
            self.running = False

    def print_error(self) -> None:
        """The cell's traceback, without this file's frames."""
        error = traceback.TracebackException(*sys.exc_info())
        error.stack = traceback.StackSummary.from_list([f for f in error.stack if f.filename != __file__])
        sys.stderr.write("".join(error.format()))
        _flush()

    def on_sigint(self, *_: Any) -> None:
        if self.running:
            raise KeyboardInterrupt

    def serve(self) -> None:
        with self.control:
            while line := self.control.readline():
                cell = json.loads(line)
                _reap_children()
                _see_new_packages()
                signal.signal(signal.SIGINT, self.on_sigint)  # the cell may have replaced it
                code = self.run_cell(cell)
                _flush()
                self.results.write(json.dumps({"done": code}) + "\n")
                self.results.flush()


def bundle_of(obj: Any) -> dict[str, str]:
    """`obj` as a MIME bundle, from its `_repr_*_` methods (IPython's display protocol)."""
    bundle: dict[str, str] = {}
    method = _method(obj, "_repr_mimebundle_")
    if method is not None:
        data = _call(method)
        data = data[0] if isinstance(data, tuple) else data
        if isinstance(data, dict):
            for mime, value in data.items():
                if mime in KNOWN and value is not None:
                    bundle[mime] = _encoded(mime, value)
    for mime, name in MIME_METHODS:
        if mime in bundle:
            continue
        method = _method(obj, name)
        value = _call(method) if method is not None else None
        value = value[0] if isinstance(value, tuple) else value
        if value is not None:
            bundle[mime] = _encoded(mime, value)
    bundle.setdefault("text/plain", _safe_repr(obj))
    return bundle


def _method(obj: Any, name: str) -> Any:
    """A display method of the object's type (not a `__getattr__` that answers every name)."""
    if getattr(type(obj), name, None) is None:
        return None
    method = getattr(obj, name, None)
    return method if callable(method) else None


def _call(method: Any) -> Any:
    try:
        return method()
    except Exception:  # one failing representation leaves the others (as IPython does)
        return None


def _encoded(mime: str, value: Any) -> str:
    if mime in BINARY:
        return base64.b64encode(value).decode() if isinstance(value, bytes) else str(value)
    if mime == "application/json":
        return value if isinstance(value, str) else json.dumps(value, default=str)
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _safe_repr(obj: Any) -> str:
    try:
        return repr(obj)
    except Exception as exc:
        return f"<{type(obj).__name__} object (repr failed: {exc!r})>"


def _flush() -> None:
    """The cell's output out of Python's buffers (a cell that closed or replaced them is let be)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _see_new_packages() -> None:
    """Packages installed since the interpreter started (`pip install --user` made its site folder
    after `site` looked for it) import like the others."""
    import importlib
    import site

    user_site = site.getusersitepackages()
    if user_site not in sys.path and os.path.isdir(user_site):
        site.addsitedir(user_site)
    importlib.invalidate_caches()


def _reap_children() -> None:
    """Collect the children the agent killed after the last cell (they stay zombies otherwise)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main() -> None:
    control_fd, results_fd = (int(fd) for fd in os.environ.pop("ISOL8_KERNEL_FDS").split(","))
    for fd in (control_fd, results_fd):
        os.set_inheritable(fd, False)  # a cell's `os.system` child gets neither
    sys.path[0] = "/sandbox"  # as for a file run from /sandbox; not this file's folder
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures are drawn to PNG, never to a window
    # `plt.show()` on Agg would only warn: the figures it means are shown at the cell's end.
    warnings.filterwarnings("ignore", "FigureCanvasAgg is non-interactive", UserWarning)
    kernel = Kernel(control_fd, results_fd)
    signal.signal(signal.SIGINT, kernel.on_sigint)
    kernel.serve()
