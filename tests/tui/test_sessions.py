"""Which session runs what: the workbench's session policy on its own (no Textual, no engine)."""

from __future__ import annotations

import subprocess
import sys
from typing import cast

from engine.interface import Engine
from isol8_tui.sessions import (
    NETWORK_POLICIES,
    Session,
    SessionState,
    after_removal,
    in_order,
    session_for,
    should_warm,
)


def session(ident: str, runtime: str | None, created_at: float, state: SessionState = "new") -> Session:
    return Session(
        id=ident,
        name=ident,
        runtime=runtime,
        network="none",
        log_network=False,
        engine=cast(Engine, object()),
        created_at=created_at,
        state=state,
    )


SCRATCH = session("scratch", None, 0.0)


def test_scratch_comes_first_then_the_oldest() -> None:
    newer, older = session("b", "node", 5.0), session("a", "python", 1.0)
    same_time = session("c", "python", 1.0)
    assert in_order([newer, same_time, SCRATCH, older]) == [SCRATCH, older, same_time, newer]


def test_a_runtime_switch_picks_the_newest_session_of_that_runtime() -> None:
    first, second, other = session("p1", "python", 1.0), session("p2", "python", 2.0), session("n1", "node", 3.0)
    assert session_for("python", [second, SCRATCH, other, first]) is second
    assert session_for("bash", [first, other, SCRATCH]) is None  # the screen creates one


def test_deleting_the_selected_session_falls_back_to_its_runtime_then_scratch() -> None:
    python, node = session("p1", "python", 1.0), session("n1", "node", 2.0)
    assert after_removal([SCRATCH, python, node], "python", SCRATCH) is python
    assert after_removal([SCRATCH, node], "python", SCRATCH) is SCRATCH


def test_only_persistent_sessions_without_a_container_are_warmed_once_docker_and_the_image_are_there() -> None:
    fresh = session("p1", "python", 1.0)
    assert should_warm(fresh, True, [])
    assert should_warm(session("p2", "python", 1.0, state="error"), True, [])
    assert not should_warm(fresh, None, []) and not should_warm(fresh, False, [])
    assert not should_warm(fresh, True, ["python"])
    assert not should_warm(SCRATCH, True, [])
    assert not should_warm(session("p3", "python", 1.0, state="idle"), True, [])


def test_scratch_runs_any_runtime_a_session_only_its_own() -> None:
    assert SCRATCH.can_run("deno") and SCRATCH.scratch
    python = session("p1", "python", 1.0)
    assert python.can_run("python") and not python.can_run("node")


def test_sessions_are_equal_only_to_themselves() -> None:
    assert session("p1", "python", 1.0) != session("p1", "python", 1.0)


def test_network_policies_are_the_engines_with_the_open_one_last() -> None:
    assert NETWORK_POLICIES == ("none", "filtered", "host")


def test_the_policy_needs_no_textual() -> None:
    code = "import sys, isol8_tui.sessions; print('textual' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
