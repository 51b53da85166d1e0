"""Image builds: content hashes, up-to-date detection, replacement without dangling images."""

from __future__ import annotations

import pytest
from helpers import run_cli

from engine.docker import DockerClient
from engine.images import builder, ensure_images, image_ready

pytestmark = pytest.mark.docker


def test_runtime_hash_follows_the_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    before = builder.runtime_hash("base", "python")
    assert before == builder.runtime_hash("base", "python")
    assert before != builder.runtime_hash("base", "node")
    assert before != builder.runtime_hash("other-base", "python")
    sources = builder._agent_sources()
    monkeypatch.setattr(builder, "_agent_sources", lambda: {**sources, "agent.py": sources["agent.py"] + b"#"})
    assert builder.runtime_hash("base", "python") != before


def test_base_hash_follows_the_ca_bundle(tmp_path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert builder.base_hash(None) != builder.base_hash(bundle)


def test_setup_again_is_up_to_date(docker_client: DockerClient) -> None:
    result = run_cli("setup", timeout=600)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("[OK] isol8:")]
    assert lines == [f"[OK] isol8:{name}: Up to date" for name in ("base", "python", "node", "bun", "deno", "bash")]
    assert result.stdout.rstrip().endswith("[DONE] Setup complete!")


def test_outdated_layer_is_rebuilt_and_the_old_image_removed(docker_client: DockerClient) -> None:
    builder.build_runtime(docker_client, "bash", "stale", lambda _: None)
    stale = docker_client.image_id("isol8:bash")
    assert not image_ready(docker_client, "bash")
    statuses = ensure_images(docker_client, ["bash"], refresh_base=False)
    assert [(s.image, s.built) for s in statuses] == [("isol8:base", False), ("isol8:bash", True)]
    assert image_ready(docker_client, "bash")
    assert docker_client.image_id(stale) is None


def test_missing_ca_bundle_is_a_clear_error(docker_client: DockerClient, tmp_path) -> None:
    result = run_cli("setup", "--ca-bundle", str(tmp_path / "nope.pem"))
    assert result.returncode == 1
    assert (
        result.stderr
        == f"[ERR] CA bundle not found: {tmp_path / 'nope.pem'}. Pass an existing PEM file to --ca-bundle.\n"
    )
