"""The bridge alone (no app): engine events in, messages out, on the fake engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from fake_engine import FakeBackend, FakeEngine
from textual.message import Message

from engine import ExecutionRequest, StreamEvent
from engine.errors import DockerUnavailable, ImageMissing, Isol8Error, SandboxLost
from isol8_tui.bridge import (
    DockerChecked,
    EngineBridge,
    FileTransferred,
    ImageBuildFinished,
    ImageBuildProgressed,
    ImagesChecked,
    NetworkRequestCaptured,
    OutputReceived,
    PoolFigures,
    RunFinished,
    RunNoticed,
    RunStarted,
    SandboxListed,
    SessionChanged,
    SessionSpec,
    parse_listing,
    request_extension,
    runtime_for_path,
)


class Inbox:
    """Stands in for the screen: collects what the bridge posts."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def post_message(self, message: Message) -> bool:
        self.messages.append(message)
        return True

    def of(self, kind: type[Message]) -> list[Message]:
        return [m for m in self.messages if isinstance(m, kind)]


def bridge_with_inbox(backend: FakeBackend) -> tuple[EngineBridge, Inbox]:
    bridge = EngineBridge(backend)
    inbox = Inbox()
    bridge.target = inbox  # type: ignore[assignment]
    return bridge, inbox


def request(code: str, runtime: str = "python") -> ExecutionRequest:
    return ExecutionRequest(code=code, runtime=runtime)


async def test_run_posts_the_message_chain(backend: FakeBackend) -> None:
    bridge, inbox = bridge_with_inbox(backend)
    session = bridge.create_session(SessionSpec("python"))
    code = 'print("one")\nprint("two", file=sys.stderr)\nsys.exit(4)\n'
    await bridge.run(session, request(code), run_id=7, trigger="key")
    kinds = [type(m) for m in inbox.messages if not isinstance(m, SessionChanged)]
    assert kinds == [RunStarted, OutputReceived, OutputReceived, RunFinished]
    started, out, err, finished = [m for m in inbox.messages if not isinstance(m, SessionChanged)]
    assert isinstance(started, RunStarted) and (started.run_id, started.runtime, started.trigger) == (
        7,
        "python",
        "key",
    )
    assert isinstance(out, OutputReceived) and (out.stream, out.text) == ("stdout", "one\n")
    assert isinstance(err, OutputReceived) and (err.stream, err.text) == ("stderr", "two\n")
    assert isinstance(finished, RunFinished)
    assert (finished.exit_code, finished.cancelled, finished.error) == (4, False, None)
    assert finished.duration_ms == pytest.approx(3.0)  # three statements of virtual time
    assert session.state == "idle" and session.runs == 1 and session.active_run is None


async def test_abnormal_ends_set_the_markers(backend: FakeBackend) -> None:
    bridge, inbox = bridge_with_inbox(backend)
    session = bridge.create_scratch()
    await bridge.run(session, ExecutionRequest(code="import time\ntime.sleep(60)\n", timeout_ms=1000), 1)
    await bridge.run(session, request("x = bytearray(10**10)\n"), 2)
    await bridge.run(session, request("for i in range(300000): print(i)\n"), 3)
    timed_out, oom, truncated = inbox.of(RunFinished)
    assert isinstance(timed_out, RunFinished) and timed_out.timed_out and timed_out.exit_code == 137
    assert isinstance(oom, RunFinished) and oom.oom_killed and not oom.timed_out
    assert isinstance(truncated, RunFinished) and truncated.truncated and truncated.exit_code == 0
    notices = [m.text for m in inbox.of(RunNoticed)]  # type: ignore[attr-defined]
    assert notices == ["EXECUTION TIMED OUT", "OUT OF MEMORY"]


async def test_cancelling_the_run_closes_the_stream(backend: FakeBackend) -> None:
    bridge, inbox = bridge_with_inbox(backend)
    session = bridge.create_session(SessionSpec("python"))
    engine = session.engine
    assert isinstance(engine, FakeEngine)
    task = asyncio.create_task(bridge.run(session, request('print("a")\nwhile True:\n    pass\n'), 1))
    for _ in range(50):
        await asyncio.sleep(0)
        if inbox.of(OutputReceived):
            break
    assert engine.running == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert engine.running == 0  # the stream was closed: the engine's run ended
    [finished] = inbox.of(RunFinished)
    assert isinstance(finished, RunFinished) and finished.cancelled and finished.exit_code is None
    assert session.state == "idle"


async def test_network_events_become_messages(backend: FakeBackend) -> None:
    bridge, inbox = bridge_with_inbox(backend)
    session = bridge.create_session(SessionSpec("python", "filtered", (r"ok\.test",), (r"bad\.test",)))
    assert session.logs_network
    code = 'urlopen("http://ok.test/a")\nurlopen("http://bad.test/b")\nurlopen("https://other.test/")\n'
    await bridge.run(session, request(code), 1)
    entries = [m.entry for m in inbox.of(NetworkRequestCaptured)]  # type: ignore[attr-defined]
    assert [(e.host, e.action, e.rule) for e in entries] == [
        ("ok.test", "ALLOW", r"whitelist:ok\.test"),  # the rules as the real proxy names them
        ("bad.test", "BLOCK", r"blacklist:bad\.test"),
        ("other.test", "BLOCK", "not in whitelist"),
    ]
    assert entries[2].method == "CONNECT" and entries[2].path is None


async def test_engine_errors_never_escape(backend: FakeBackend) -> None:
    bridge, inbox = bridge_with_inbox(backend)
    session = bridge.create_session(SessionSpec("python"))
    await bridge.run(session, request("import os\nos.kill(1, 9)\n"), 1)
    [died] = inbox.of(RunFinished)
    assert isinstance(died, RunFinished) and died.error is not None
    assert "stopped unexpectedly" in died.error and "next run starts a new container" in died.error
    assert session.state == "error"
    backend.docker_up = False
    await bridge.run(session, request('print("x")\n'), 2)
    down = inbox.of(RunFinished)[-1]
    assert isinstance(down, RunFinished) and down.docker_down and "Docker is not running" in (down.error or "")
    assert any(isinstance(m, DockerChecked) and not m.available for m in inbox.messages)


def playing(
    *events: StreamEvent, then: Exception | None = None
) -> Callable[[ExecutionRequest, object], AsyncIterator[StreamEvent]]:
    """An execute_stream that yields `events`, then raises `then`."""

    async def stream(_request: ExecutionRequest, _terminal: object = None) -> AsyncIterator[StreamEvent]:
        for event in events:
            yield event
        if then is not None:
            raise then

    return stream


async def test_run_ends_are_told_apart_by_type_and_flags_not_text(
    backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge, inbox = bridge_with_inbox(backend)
    session = bridge.create_session(SessionSpec("python"))
    timed_out = StreamEvent(type="exit", data="137", timed_out=True)
    cases: list[tuple[Callable[[ExecutionRequest, object], AsyncIterator[StreamEvent]], dict[str, object]]] = [
        (playing(timed_out), {"timed_out": True, "oom_killed": False, "error": None}),
        (
            playing(StreamEvent(type="error", data="EXECUTION TIMED OUT"), StreamEvent(type="exit", data="0")),
            {"timed_out": False},
        ),
        (
            playing(then=SandboxLost("gone")),
            {"error": "gone The session's next run starts a new container; its files and state are gone."},
        ),
        (playing(then=Isol8Error("stopped unexpectedly")), {"error": "stopped unexpectedly", "image_missing": False}),
        (playing(then=ImageMissing.of("isol8:python")), {"image_missing": True, "docker_down": False}),
        (playing(then=DockerUnavailable.at("unix:///x")), {"docker_down": True, "image_missing": False}),
    ]
    for run_id, (stream, expected) in enumerate(cases, start=1):
        monkeypatch.setattr(session.engine, "execute_stream", stream)
        await bridge.run(session, request("x"), run_id)
        finished = inbox.of(RunFinished)[-1]
        assert {name: getattr(finished, name) for name in expected} == expected, run_id


def test_docker_checks_and_image_builds() -> None:
    backend = FakeBackend(missing=["node", "deno"])
    bridge, inbox = bridge_with_inbox(backend)
    bridge.check_docker()
    assert [type(m) for m in inbox.messages] == [DockerChecked, ImagesChecked]
    assert inbox.messages[1].missing == ["node", "deno"]  # type: ignore[attr-defined]
    bridge.build_images(["node", "deno"])
    lines = [m.line for m in inbox.of(ImageBuildProgressed)]  # type: ignore[attr-defined]
    assert "building isol8:node" in lines and "building isol8:deno" in lines
    assert inbox.of(ImageBuildFinished)[-1].error is None  # type: ignore[attr-defined]
    assert backend.missing == set()
    backend.docker_up = False
    bridge.ping()
    bridge.build_images(["bash"])
    assert inbox.of(DockerChecked)[-1].available is False  # type: ignore[attr-defined]
    assert "Docker is not running" in (inbox.of(ImageBuildFinished)[-1].error or "")  # type: ignore[attr-defined]


async def test_files_and_listing(backend: FakeBackend, workdir: Path) -> None:
    bridge, inbox = bridge_with_inbox(backend)
    session = bridge.create_session(SessionSpec("python"))
    source = workdir / "data.csv"
    source.write_text("a,b\n1,2\n")
    await bridge.upload(session, source, "/sandbox/in/data.csv")
    await bridge.download(session, "/sandbox/in/data.csv", workdir / "out" / "copy.csv")
    await bridge.download(session, "/sandbox/nope", workdir / "nope")
    await bridge.upload(session, source, "/etc/passwd")
    up, down, missing, outside = inbox.of(FileTransferred)
    assert isinstance(up, FileTransferred) and up.error is None and up.size == 8
    assert (workdir / "out" / "copy.csv").read_text() == "a,b\n1,2\n"
    assert isinstance(down, FileTransferred) and down.error is None
    assert isinstance(missing, FileTransferred) and "not found" in (missing.error or "")
    assert isinstance(outside, FileTransferred) and "inside /sandbox or /tmp" in (outside.error or "")
    await bridge.list_sandbox(session)
    [listed] = inbox.of(SandboxListed)
    assert isinstance(listed, SandboxListed) and listed.entries is not None
    assert [e.path for e in listed.entries] == ["/sandbox/in/data.csv"]
    scratch = bridge.create_scratch()
    await bridge.list_sandbox(scratch)
    assert "ephemeral" in (inbox.of(SandboxListed)[-1].error or "")  # type: ignore[attr-defined]


async def test_pool_and_shutdown(backend: FakeBackend) -> None:
    bridge, _ = bridge_with_inbox(backend)
    first = bridge.create_session(SessionSpec("python"))
    second = bridge.create_session(SessionSpec("python", "filtered"))
    assert (first.name, second.name) == ("python-1", "python-2")
    await bridge.warm_up(first)
    await bridge.warm_up(second)
    assert bridge.pool_figures() == PoolFigures(sessions=2)  # idle sessions' containers are not "busy"
    await bridge.shutdown()
    assert bridge.sessions == {}
    assert all(isinstance(s.engine, FakeEngine) and s.engine.stopped for s in (first, second))


def test_listing_parser_and_runtime_helpers() -> None:
    text = "f\t12\t2026-01-01 12:00\tmain.py\nd\t4096\t2026-01-01 12:00\tout\ngarbage line\n"
    entries = parse_listing(text)
    assert [(e.kind, e.size, e.path) for e in entries] == [
        ("file", 12, "/sandbox/main.py"),
        ("dir", 4096, "/sandbox/out"),
    ]
    assert [runtime_for_path(p) for p in ("a.py", "b.cjs", "c.ts", "d.mts", "e.sh", "f.rb")] == [
        "python",
        "node",
        "bun",
        "deno",
        "bash",
        None,
    ]
    assert request_extension("node", Path("x.cjs")) == ".cjs"
    assert request_extension("deno", Path("x.ts")) is None
    assert request_extension("python", None) is None
