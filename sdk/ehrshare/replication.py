"""``ehrshare store status|repair`` for a private IPFS swarm: where each record is pinned, what
is under-replicated, and re-pinning to reach the policy.

The policy is computed from the ledger alone: every version ``ListRecordVersions`` names must
be pinned at its origin hospital's node (``creator_msp``) and at the next ``storage.replicas``
hospitals (:func:`ehrshare.storage.replicated.placement`), and the latest version of every
record a valid grant covers at the grantee's hospital's node (``ListGrantPins``: the hospitals
a grant pins at when it is made; a revoked or expired grant's copy becomes an extra one). Both
queries are for org admins and auditors and name no owner, grantee or type. A node's pins are
read once (``pin/ls``); :func:`repair_swarm` asks each node that lacks a pin it should hold to
pin it, which fetches the blocks over bitswap from any node that has them and checks them
against the CID. A pin is all-or-nothing in Kubo (the pin is recorded only after every block is
held), so a repair killed at any point leaves each node with the record pinned or not, never
half, and the next repair finishes the rest. Pins beyond the policy (the copy of a grant that
was revoked or expired, a pin made by hand) are reported and never removed here.
:func:`repair_every` runs the repair in rounds until told to stop (``store repair --every``).

This module must not unpin or delete anything and reads no key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from ehrshare.errors import UsageError
from ehrshare.faults import fault_point
from ehrshare.profile import Profile
from ehrshare.storage import KuboClient, StorageError
from ehrshare.storage.cid import CID
from ehrshare.storage.replicated import placement
from ehrshare.storemaint import grant_pins, record_versions
from ehrshare.wallet import Wallet

__all__ = [
    "MAX_INTERVAL_S",
    "MIN_INTERVAL_S",
    "NotASwarm",
    "SwarmReport",
    "UnknownRecord",
    "repair_every",
    "repair_swarm",
    "swarm_status",
]

_log = logging.getLogger(__name__)

MIN_INTERVAL_S: Final = 1.0
MAX_INTERVAL_S: Final = 30 * 86400.0


class NotASwarm(UsageError, ValueError):
    """``store status``/``repair`` on a profile whose store is not a private swarm."""

    hint = "create the consortium with 'ehrshare consortium init --storage swarm'"


class UnknownRecord(UsageError, ValueError):
    """``store status RECORD`` named a record the ledger does not hold."""


@dataclass
class SwarmReport:
    """Each record version's placement: where it should be pinned and where it is."""

    replicas: int
    nodes: dict[str, bool] = field(default_factory=dict)
    """Hospital → whether its node answered."""
    versions: list[dict[str, Any]] = field(default_factory=list)
    repaired: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    @property
    def under_replicated(self) -> list[dict[str, Any]]:
        """The versions missing a pin the policy wants."""
        return [v for v in self.versions if v["missing"]]

    @property
    def healthy(self) -> bool:
        """Every version pinned where the policy says and every node answering."""
        return not self.under_replicated and all(self.nodes.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``--json``)."""
        return {
            "healthy": self.healthy,
            "replicas": self.replicas,
            "nodes": self.nodes,
            "record_versions": len(self.versions),
            "under_replicated": len(self.under_replicated),
            "versions": self.versions,
            "repaired": self.repaired,
            "failed": self.failed,
        }


def _v1(cid: str) -> str:
    parsed = CID.parse(cid)
    return str(parsed if parsed.version == 1 else CID(1, parsed.codec, parsed.multihash))


def _pins(url: str, timeout: float) -> set[str] | None:
    """The node's recursive pins (as CIDv1 text), or None if it does not answer."""
    try:
        with KuboClient(url, timeout=timeout) as client:
            return {_v1(c) for c in client.pins()}
    except StorageError as exc:
        _log.warning("IPFS node %s does not answer: %s", url, exc)
        return None


def swarm_status(
    profile: Profile, *, wallet: Wallet | None = None, record: str = "", timeout: float = 10.0
) -> SwarmReport:
    """Where every record version (or those of ``record``) is pinned, against the policy."""
    swarm = profile.swarm
    if swarm is None:
        raise NotASwarm(
            f"profile {profile.path} keeps its records in one store, not a private IPFS swarm"
        )
    hospitals = [msp for msp, _ in swarm.nodes]
    pins = {msp: _pins(url, timeout) for msp, url in swarm.nodes}
    report = SwarmReport(swarm.replicas, {msp: p is not None for msp, p in pins.items()})
    versions = record_versions(profile, wallet)
    if record:
        versions = [v for v in versions if v.record_id == record]
        if not versions:
            raise UnknownRecord(f"record {record} is not on the ledger")
    by_grant: dict[tuple[str, int], dict[str, list[str]]] = {}
    for g in grant_pins(profile, wallet):
        for record_id, version, _ in g.records:
            by_grant.setdefault((record_id, version), {}).setdefault(g.grantee_msp, [])
            by_grant[(record_id, version)][g.grantee_msp].append(g.grant_id)
    for v in versions:
        cid = _v1(v.cid)
        policy = placement(v.creator_msp, hospitals, swarm.replicas)
        # A grantee's hospital without a node in the swarm reads through the others.
        grants = {m: sorted(ids) for m, ids in by_grant.get((v.record_id, v.version), {}).items()}
        grants = {m: ids for m, ids in sorted(grants.items()) if m in pins}
        want = policy + [m for m in grants if m not in policy]
        pinned = sorted(msp for msp, p in pins.items() if p is not None and cid in p)
        unknown = sorted(msp for msp in want if pins[msp] is None)
        report.versions.append(
            {
                "record_id": v.record_id,
                "version": v.version,
                "cid": v.cid,
                "origin": v.creator_msp,
                "policy": policy,
                "grantees": [m for m in grants if m not in policy],
                "grants": grants,
                "pinned": pinned,
                "missing": [m for m in want if m not in pinned],
                "unreachable": unknown,
                "extra": [m for m in pinned if m not in want],
            }
        )
    return report


def repair_swarm(
    profile: Profile, *, wallet: Wallet | None = None, timeout: float | None = None
) -> SwarmReport:
    """Pin every version where the policy wants it and it is not; nodes that do not answer
    are left (reported in ``failed``). Returns the status after the repair, with what was
    re-pinned in ``repaired``."""
    swarm = profile.swarm
    before = swarm_status(profile, wallet=wallet)
    assert swarm is not None
    urls = dict(swarm.nodes)
    repaired: list[dict[str, str]] = []
    failed: list[dict[str, str]] = []
    clients: dict[str, KuboClient] = {}
    try:
        for v in before.under_replicated:
            for msp in v["missing"]:
                entry = {"record_id": v["record_id"], "version": str(v["version"]), "node": msp}
                if not before.nodes[msp]:
                    failed.append(entry | {"reason": "node does not answer"})
                    continue
                if not v["pinned"]:
                    # No node holds it: a pin would only wait for blocks nobody has.
                    failed.append(entry | {"reason": "no node holds a copy"})
                    continue
                client = clients.get(msp)
                if client is None:
                    client = KuboClient(urls[msp], timeout=timeout or profile.storage_timeout)
                    clients[msp] = client
                try:
                    client.pin(v["cid"])
                except StorageError as exc:
                    failed.append(entry | {"reason": str(exc)})
                    continue
                fault_point("swarm.repair.after_pin")
                repaired.append(entry)
                _log.info("re-pinned %s v%s at %s", v["record_id"], v["version"], msp)
    finally:
        for c in clients.values():
            c.close()
    after = swarm_status(profile, wallet=wallet)
    after.repaired, after.failed = repaired, failed
    return after


def repair_every(
    round_: Callable[[], SwarmReport],
    interval: float,
    stop: threading.Event,
    report: Callable[[int, SwarmReport | None, str], None],
) -> int:
    """Run ``round_`` (a :func:`repair_swarm`) now and then every ``interval`` seconds from the
    start of the last round until ``stop`` is set; ``report(n, result, error)`` is told each
    round's outcome. A round that fails (a node or the ledger down) is reported with its
    error and the next one runs on time; a crashed round leaves nothing half-done (see the
    module doc). Returns the number of rounds run."""
    if not MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S:
        raise UsageError(
            f"the repair interval must be {MIN_INTERVAL_S:g} s to {MAX_INTERVAL_S / 86400:g} "
            f"days, got {interval:g} s"
        )
    rounds = 0
    while not stop.is_set():
        started = time.monotonic()
        rounds += 1
        try:
            result = round_()
        except Exception as exc:  # any failure of one round: the next one may succeed
            _log.debug("repair round %d failed", rounds, exc_info=True)
            report(rounds, None, f"{type(exc).__name__}: {exc}")
        else:
            report(rounds, result, "")
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
    return rounds
