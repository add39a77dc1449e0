"""A hospital organisation joining a running Fabric network: the channel's members as its config
says, the config update adding one (submitted with the member admins' ConfigSignatures),
and the new organisation's peer: material made in the hospital's own directory, started through
the supervisor like the others, joined with the channel's genesis block fetched from the
orderer, caught up, the chaincode installed and approved for its organisation; every
organisation's ``connection-<MSP>.json`` then lists it.

Each step is found done and skipped when repeated (``network.json`` records the peer's ports,
its directory and the steps, as the first start records its own), so a run killed at any point
finishes on the next (crash points ``add_hospital.peer_started``, ``add_hospital.peer_joined``,
then :mod:`ehrshare.joining`'s ``add_hospital.after_peer``). This module must not read a
private key of the new hospital but to act as it (its peer and admin, from its directory), and
must not copy one out of that directory.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ehrshare.faults import fault_point
from ehrshare.identity import LocalCA
from ehrshare.network.fabric.channel import _JOINED
from ehrshare.network.fabric.config_update import (
    channel_config,
    msp_root_certs,
    update_envelope,
)
from ehrshare.network.fabric.launcher import FabricNet, _read_from
from ehrshare.network.fabric.profiles import connection_profile
from ehrshare.network.fabric.spec import _CC_SEQUENCE, _CC_VERSION, FabricNetError, Progress
from ehrshare.network.netns import NodeHost
from ehrshare.network.supervisor import free_loopback_ports
from ehrshare.services.vault import atomic_write

__all__ = [
    "channel_organizations",
    "fetch_config",
    "join_peer",
    "org_material",
    "submit_update",
]

_log = logging.getLogger(__name__)


def fetch_config(net: FabricNet, as_msp: str, out: Path) -> Any:
    """The channel's current ``common.Config``, fetched from the orderer as ``as_msp``'s admin
    (any member reads it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fetch = ["channel", "fetch", "config", str(out), *net.orderer_args(as_msp)]
    net.peer_cli(as_msp, [*fetch, "-c", net.spec.channel])
    try:
        return channel_config(out.read_bytes())
    finally:
        out.unlink(missing_ok=True)


def channel_organizations(config: Any) -> dict[str, bytes]:
    """MSP id → root CA certificate (PEM) of each Application organisation of ``config``."""
    return msp_root_certs(config)


def submit_update(
    net: FabricNet,
    update: bytes,
    signatures: Iterable[Any],
    *,
    submitter: str,
    work: Path,
) -> None:
    """Submit a config update with the collected ConfigSignatures through ``peer channel
    update`` as ``submitter``'s admin — one of the signers' organisations, so the signature the
    CLI adds counts no organisation that did not sign. The orderer checks the policy."""
    envelope = update_envelope(
        net.spec.channel, update, list(signatures), timestamp_s=int(time.time())
    )
    path = work / f"config-update-{time.monotonic_ns()}.pb"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(envelope)
    try:
        command = ["channel", "update", "-f", str(path), "-c", net.spec.channel]
        net.peer_cli(submitter, [*command, *net.orderer_args(submitter)])
    finally:
        path.unlink(missing_ok=True)


def org_material(net: FabricNet, ca: LocalCA, directory: Path) -> Path:
    """The Fabric material of ``ca``'s organisation in ``directory`` (the hospital's own
    ``<hospital>/fabric``): MSP, peer identity and TLS, admin identity and TLS, made from the
    hospital's CA whole or not at all (a staging directory renamed into place). Kept if there."""
    if (directory / "admin" / "tls" / "client.key").is_file():
        return directory
    staging = directory.parent / f".{directory.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    msp = ca.msp_id
    saved = net._state.org_dirs.get(msp)
    net._state.org_dirs[msp] = str(staging)  # the writers below place files by org_dir(msp)
    try:
        net._write_org(ca)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if saved is None:
            net._state.org_dirs.pop(msp, None)
        else:
            net._state.org_dirs[msp] = saved
    staging.rename(directory)
    return directory


def _add_to_network(
    net: FabricNet,
    msp: str,
    directory: Path,
    anchor: tuple[str, int],
    place: NodeHost | None = None,
) -> None:
    """Record the organisation, its directory, its peer's ports (and its host) in
    ``network.json``."""
    if msp in net.spec.msp_ids:
        return
    host, listen = anchor
    expected = place.address if place is not None else net.host(net.spec.msp_ids[0])
    if host != expected or bool(net.spec.hosts) != (place is not None):
        raise FabricNetError(
            f"the new peer's address {host}:{listen} is not where this network runs it ({expected})"
        )
    # On a host of its own the namespace is empty: any port is free there.
    chaincode, operations = free_loopback_ports(2)
    state = net._state
    state.ports["peers"][msp] = {"listen": listen, "chaincode": chaincode, "operations": operations}
    state.org_dirs[msp] = str(directory)
    state.spec["msp_ids"] = [*state.spec["msp_ids"], msp]
    hosts = dict(net.spec.hosts)
    if place is not None:
        hosts[msp] = place
        state.spec["hosts"] = {
            label: {"address": h.address, "netns": h.netns} for label, h in hosts.items()
        }
    net.spec = replace(net.spec, msp_ids=tuple(state.spec["msp_ids"]), hosts=hosts)
    net._save()


def join_peer(
    net: FabricNet,
    ca: LocalCA,
    directory: Path,
    anchor: tuple[str, int],
    say: Progress,
    *,
    timeout: float = 180.0,
    host: NodeHost | None = None,
) -> bool:
    """Make, start, join and catch up the peer of ``ca``'s organisation (already a channel
    member), then install and approve the chaincode for it; True if anything was done.
    ``host``: on a network on several hosts, the organisation's own (made already): its peer
    binds that address, runs in that namespace, and its TLS certificates name the address."""
    msp = ca.msp_id
    deadline = time.monotonic() + timeout
    steps = ("join", "install", "approve")
    done = all(f"{s}:{msp}" in net._state.done for s in steps)
    if msp in net.spec.msp_ids and done and _alive(net, msp):
        return False
    did = False
    if msp not in net.spec.msp_ids:
        say(f"making the Fabric peer and admin of {msp} in {directory}")
        spec = net.spec
        if host is not None:  # the material names the host's address (in memory until added)
            net.spec = replace(spec, msp_ids=(*spec.msp_ids, msp), hosts={**spec.hosts, msp: host})
        try:
            org_material(net, ca, directory)
        finally:
            net.spec = spec
        _add_to_network(net, msp, directory, anchor, host)
        did = True
    name = f"peer-{msp}"
    if not _alive(net, msp):
        say(f"starting {name} on {net.peer_address(msp)}")
        old = net._state.processes.pop(name, None)
        if old is not None:
            net._reap(old.pid)
        net._start_peers(deadline, only=[name])
        fault_point("add_hospital.peer_started")
        did = True
    channel = net.spec.channel
    if f"join:{msp}" not in net._state.done:
        say(f"joining {name} to channel {channel} (genesis block from the orderer)")
        block = directory / f".{channel}-genesis.block"

        def join(_msp: str) -> str:
            fetch = ["channel", "fetch", "0", str(block), *net.orderer_args(msp), "-c", channel]
            net.peer_cli(msp, fetch)
            return net.peer_cli(msp, ["channel", "join", "-b", str(block)])

        net._each_org("join", join, deadline, _JOINED)
        block.unlink(missing_ok=True)
        fault_point("add_hospital.peer_joined")
        did = True
    _catch_up(net, msp, say, deadline)
    package_id = net.package_id
    if f"install:{msp}" not in net._state.done:
        label = package_id.split(":", 1)[0]
        package = net.dir / "chaincode" / f"{label}.tgz"
        say(f"installing the chaincode package on {name}")

        def install(_msp: str) -> str:
            listed = net.peer_cli(msp, ["lifecycle", "chaincode", "queryinstalled"])
            if package_id in listed:
                return listed
            return net.peer_cli(msp, ["lifecycle", "chaincode", "install", str(package)])

        net._each_org("install", install, deadline)
        did = True
    if f"approve:{msp}" not in net._state.done:
        say(f"approving the chaincode definition (sequence {_CC_SEQUENCE}) as {msp}'s admin")
        definition = ["-C", channel, "-n", net.spec.chaincode, "-v", _CC_VERSION]
        definition += ["--sequence", _CC_SEQUENCE]

        def approve(_msp: str) -> str:
            if _approved(net, msp, definition):
                return "approved already"
            command = ["lifecycle", "chaincode", "approveformyorg", *definition]
            command += ["--package-id", package_id, "--waitForEvent", *net.orderer_args(msp)]
            return net.peer_cli(msp, command)

        net._each_org("approve", approve, deadline, "unchanged content")
        did = True
    _serves_chaincode(net, msp, deadline)
    net._wait_gossip(say, deadline)
    for member in net.spec.msp_ids:  # every organisation is listed in every profile
        text = json.dumps(connection_profile(net, member), indent=2) + "\n"
        path = net.connection_profile_path(member)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write(path, text.encode(), mode=0o644)
    return did


def _alive(net: FabricNet, msp: str) -> bool:
    proc = net._state.processes.get(f"peer-{msp}")
    return proc is not None and net._ours(proc)


def _approved(net: FabricNet, msp: str, definition: list[str]) -> bool:
    query = ["lifecycle", "chaincode", "queryapproved", *definition, "--output", "json"]
    try:
        out = net.peer_cli(msp, query)
    except FabricNetError as exc:  # nothing approved yet ("could not fetch approved …")
        _log.info("no approval of %s yet: %s", msp, exc)
        return False
    return net.package_id in out


def _catch_up(net: FabricNet, msp: str, say: Progress, deadline: float) -> None:
    """Wait until the new peer's height reaches the highest other peer's (as asked now)."""
    others = [m for m in net.spec.msp_ids if m != msp]
    target = max(net.height(m) for m in others)
    say(f"peer-{msp} catching up to block height {target}")
    committed = re.compile(rf"\[{re.escape(net.spec.channel)}\] Committed block \[(\d+)\]")
    while True:
        net._check_alive()
        try:
            height = net.height(msp)
        except FabricNetError as exc:
            # Until the peer has the config block admitting its own organisation it refuses
            # its admin (not yet a channel Reader at that height; and a channel-less query
            # must come from its own organisation): its log says how far it got.
            if "access denied" not in str(exc):
                raise
            proc = net._state.processes[f"peer-{msp}"]
            blocks = [int(b) for b in committed.findall(_read_from(proc))]
            height = max(blocks, default=-1) + 1
        if height >= target:
            _log.info("peer-%s reached height %d", msp, height)
            return
        if time.monotonic() > deadline:
            raise FabricNetError(f"peer-{msp} is at height {height}, not {target}, in time")
        time.sleep(0.2)


def _serves_chaincode(net: FabricNet, msp: str, deadline: float) -> None:
    """Wait until the new peer runs the chaincode (a query answered by the contract itself)."""
    args = json.dumps({"Args": ["GetOrgCA", msp]})
    query = ["chaincode", "query", "-C", net.spec.channel, "-n", net.spec.chaincode, "-c", args]
    while True:
        try:
            net.peer_cli(msp, query)
            return
        except FabricNetError as exc:
            if re.search(r"is not registered|does not exist", str(exc)):
                return  # the contract answered
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)
