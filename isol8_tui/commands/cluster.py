"""`isol8 cluster status`: the Ray cluster's isol8 nodes (engine/cluster.py): load, warm pools, sessions.

`cluster_flag` validates the `--cluster ADDRESS` that `isol8 run` and `isol8 serve` take too.
"""

from __future__ import annotations

import asyncio
import json

import click

from engine.cluster import NodeStatus, cluster_status
from engine.config import check_cluster_address, load_config
from engine.errors import ConfigError
from isol8_tui.output import info, user_errors


def cluster_flag(value: str) -> str:
    try:
        return check_cluster_address(value)
    except ValueError as exc:
        raise ConfigError(f"--cluster: {exc}") from None


def _pools(node: NodeStatus) -> str:
    return ", ".join(f"{p.image} {p.ready} ready/{p.busy} busy" for p in node.pools) or "none warm"


@click.group("cluster")
def command() -> None:
    """The Ray cluster isol8 runs on (`isol8 serve --cluster`, `isol8 run --cluster`)."""


@command.command("status")
@click.option("--cluster", metavar="ADDRESS", help="The cluster (default: the config's server.cluster, else auto).")
@click.option("--json", "as_json", is_flag=True, help="Print the nodes as JSON.")
def status_command(cluster: str | None, as_json: bool) -> None:
    """Each node offering the `isol8` resource: alive or dead, runs in flight, warm pools, sessions."""
    with user_errors():
        address = cluster_flag(cluster) if cluster else load_config().config.server.cluster or "auto"
        nodes = asyncio.run(cluster_status(address))
    if as_json:
        click.echo(json.dumps([n.model_dump(mode="json", by_alias=True) for n in nodes], indent=2))
        return
    if not nodes:
        info(f"No node of the Ray cluster at {address} offers the isol8 resource.")
        return
    click.echo(f"\n  {len(nodes)} isol8 node(s) at {address}:\n")
    for node in nodes:
        state = "alive" if node.alive else "DEAD (its sessions are lost)"
        click.echo(f"  {node.node_id[:12]}  {node.address}  {state}")
        click.echo(f"      running {node.running}, sessions {node.sessions}, pools: {_pools(node)}")
    click.echo()
