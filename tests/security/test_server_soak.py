"""A reduced soak through the HTTP server: the in-process soak's mix (every runtime, timeouts, OOM
kills, stdin, abandoned streams) sent by RemoteIsol8 to a local `isol8 serve`. Every execution is
answered correctly, the server leaves no container behind, and its memory stays flat. The full size
is `python -m bench.soak --count 2000 --through-server`."""

from __future__ import annotations

import pytest

from bench.soak import soak
from engine.docker import DockerClient

pytestmark = pytest.mark.docker


async def test_soak_through_the_server_loses_nothing_and_leaks_nothing(docker_client: DockerClient) -> None:
    report = await soak(count=100, concurrency=8, through_server=True)
    assert report.lost == 0 and report.wrong == [], report
    assert report.leaked_containers == 0, report
    assert report.timeouts > 0 and report.oom > 0 and report.abandoned > 0, report  # the failures really happened
    assert report.rss_mb_end - report.rss_mb_start < 40, report  # the server's memory, not this process's
