"""Setting up a consortium's private IPFS swarm (``consortium init --storage swarm``): making the
nodes, naming them in the profile, marking each as the consortium's volume.

Called by :mod:`ehrshare.provisioning` and ``ehrshare store recreate-node``; the nodes
themselves are :mod:`ehrshare.network.swarm`. This module must not read or pin records.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ehrshare.network.netns import NodeHost
from ehrshare.network.swarm import SWARM_DIR, KuboSwarm
from ehrshare.profile import Profile, StorageSwarm
from ehrshare.storage import KuboClient
from ehrshare.volumes import mark_store

__all__ = ["create_swarm", "mark_swarm_node", "mark_swarm_nodes", "stop_swarm_of"]

_log = logging.getLogger(__name__)


def create_swarm(
    root: Path,
    msps: list[str],
    profile: Profile,
    replicas: int,
    say: Any,
    hosts: Mapping[str, NodeHost] | None = None,
) -> tuple[KuboSwarm, Profile]:
    """Make and start one node per hospital under ``root/ipfs`` (on its host, with
    ``hosts``); return the swarm and ``profile`` naming its nodes (the first hospital's node
    is ``storage.url``)."""
    say(f"creating a private IPFS swarm, one Kubo node per hospital ({len(msps)})")
    swarm = KuboSwarm.create(root / SWARM_DIR, msps, hosts=hosts)
    nodes = tuple((msp, swarm.node(msp).api_url) for msp in swarm.nodes)
    profile = replace(
        profile,
        storage_url=nodes[0][1],
        swarm=StorageSwarm(root / SWARM_DIR, nodes, replicas),
    )
    swarm.start()
    swarm.wait_connected()
    return swarm, profile


def mark_swarm_nodes(profile: Profile, consortium_id: str) -> None:
    """Write the consortium's marker into every hospital's (running) node: each is a volume."""
    assert profile.swarm is not None
    for _, url in profile.swarm.nodes:
        with KuboClient(url, timeout=profile.storage_timeout) as client:
            mark_store(profile, consortium_id, client)


def mark_swarm_node(profile: Profile, swarm: KuboSwarm, msp: str) -> None:
    """Write the consortium's marker into ``msp``'s re-created node (started for this and
    stopped again), so that it is this consortium's volume again."""
    swarm.start([msp])
    try:
        with KuboClient(swarm.node(msp).api_url, timeout=profile.storage_timeout) as client:
            mark_store(profile, profile.consortium_id, client)
    finally:
        swarm.stop([msp])


def stop_swarm_of(root: Path) -> None:
    """Stop the IPFS swarm under ``root`` if one was made there (init failed)."""
    if not (root / SWARM_DIR).is_dir():
        return
    try:
        KuboSwarm.load(root / SWARM_DIR).stop()
    except Exception as exc:  # the original error matters more; say this one in the log
        _log.warning("stopping the IPFS swarm of %s: %s", root, exc)
