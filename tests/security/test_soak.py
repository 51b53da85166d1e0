"""A reduced soak in CI: every execution answered correctly, nothing leaked, memory flat.
The full size (2,000) is `python -m bench.soak`; see SECURITY.md for its figures."""

from __future__ import annotations

import pytest

from bench.soak import soak
from engine.docker import DockerClient

pytestmark = pytest.mark.docker


async def test_soak_loses_nothing_and_leaks_nothing(docker_client: DockerClient) -> None:
    report = await soak(count=200, concurrency=8)
    assert report.lost == 0 and report.wrong == [], report
    assert report.leaked_containers == 0
    assert report.timeouts > 0 and report.oom > 0 and report.abandoned > 0  # the failures really happened
    assert report.rss_mb_end - report.rss_mb_start < 40, report
