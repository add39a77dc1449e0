"""Replication across the hospitals' Kubo nodes: where a record belongs, and the store that puts
it there.

The pin policy is a pure function of what the ledger already says about a record — the MSP of
the hospital that registered it (``creator_msp``) — and the consortium's hospital list:
:func:`placement` is the origin hospital followed by the next ``replicas`` hospitals in the
profile's order, wrapping round. Any hospital can compute it, so repair needs no coordinator and
no state besides the ledger (docs/operations.md, "Private IPFS swarm", argues this against IPFS
Cluster). A grant adds its grantee's hospital (:func:`grantee_hospital`) for the records it
covers: the grant pins them there when it is made (:meth:`ReplicatedStore.pin_many`), and
``ehrshare store status/repair`` (:mod:`ehrshare.replication`) expect them there while the grant
is valid, from the chaincode's ``ListGrantPins``, which applies the rule ``ListGrantedRecords``
applies.

:class:`ReplicatedStore` is the :class:`~ehrshare.storage.base.BlobStore` a client of hospital
``home`` uses: it writes to and reads from its own hospital's node (which fetches what it lacks
from the others over bitswap) and, after a put, pins the blob at the policy's other nodes. A
replica that cannot be pinned then (its node is down) is logged and left to ``ehrshare store
repair``: the put itself succeeded at the origin. This module must not start or stop nodes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from ehrshare.faults import fault_point

from .errors import StorageError
from .ipfs import KuboStore
from .unixfs import BlobSource

__all__ = ["ReplicatedStore", "grantee_hospital", "placement"]

_log = logging.getLogger(__name__)

# Pins are waits on other nodes (each fetches over bitswap): a few at once, not one by one.
PIN_WORKERS = 4


def placement(origin: str, hospitals: Sequence[str], replicas: int) -> list[str]:
    """The hospitals whose nodes must pin a record registered by ``origin``: the origin first,
    then the next ``replicas`` hospitals of ``hospitals`` after it, wrapping round (fewer when
    there are fewer hospitals). An origin outside ``hospitals`` (a hospital whose node is gone)
    starts the ring at the first hospital and keeps ``replicas + 1`` copies among the others."""
    if replicas < 0:
        raise ValueError(f"replicas must be 0 or more, got {replicas}")
    order = list(hospitals)
    if origin in order:
        start = order.index(origin)
        ring = order[start:] + order[:start]
        return ring[: replicas + 1]
    return order[: replicas + 1]


def grantee_hospital(ibe_id: str) -> str:
    """The hospital (MSP id) whose node holds a grantee's copies: an IBE id is ``<MSP id>/
    <enrollment id>``, the MSP its member registered in (the chaincode's ``ListGrantPins``
    reads the same MSP from the member registry)."""
    return ibe_id.split("/", 1)[0]


class ReplicatedStore:
    """The store of a client at hospital ``home`` in a private swarm (see the module doc)."""

    def __init__(
        self, home: str, stores: Mapping[str, KuboStore], hospitals: Sequence[str], replicas: int
    ) -> None:
        if home not in stores:
            raise ValueError(f"hospital {home!r} has no node among {sorted(stores)}")
        self.home = home
        self.stores = dict(stores)
        self.hospitals = list(hospitals)
        self.replicas = replicas

    def __repr__(self) -> str:
        return f"ReplicatedStore(home={self.home!r}, replicas={self.replicas})"

    def for_home(self, home: str) -> ReplicatedStore:
        """The same nodes seen from a client of hospital ``home``."""
        return ReplicatedStore(home, self.stores, self.hospitals, self.replicas)

    @property
    def local(self) -> KuboStore:
        """The store of this client's own hospital's node."""
        return self.stores[self.home]

    def put(self, data: BlobSource) -> str:
        """Add and pin at the home node, then pin at the policy's other nodes (best effort)."""
        cid = self.local.put(data)
        fault_point("swarm.put.after_add")
        self.pin_many((msp, cid) for msp in placement(self.home, self.hospitals, self.replicas)[1:])
        return cid

    def pin_many(self, targets: Iterable[tuple[str, str]]) -> list[bool]:
        """Pin each ``(hospital, cid)`` like :meth:`pin_at` with ``required=False``, up to
        :data:`PIN_WORKERS` at a time; whether each is pinned, in order."""
        work = list(targets)
        if len(work) <= 1:
            return [self.pin_at(msp, cid, required=False) for msp, cid in work]
        with ThreadPoolExecutor(min(PIN_WORKERS, len(work)), "pin") as pool:
            return list(pool.map(lambda t: self.pin_at(t[0], t[1], required=False), work))

    def pin_at(self, msp: str, cid: str, *, required: bool = True) -> bool:
        """Pin ``cid`` at hospital ``msp``'s node, which fetches it over bitswap. Returns whether
        it is pinned there; a failure raises unless ``required`` is False (then it is logged)."""
        store = self.stores.get(msp)
        try:
            if store is None:
                raise StorageError(f"hospital {msp} has no IPFS node in the profile")
            store.pin(cid)
        except StorageError as exc:
            if required:
                raise
            _log.warning(
                "could not pin %s at %s's node (%s); 'ehrshare store repair' will", cid, msp, exc
            )
            return False
        return True

    def get(self, cid: str) -> bytes:
        """Read through the home node (checked against the CID)."""
        return self.local.get(cid)

    def iter(self, cid: str) -> Iterator[bytes]:
        """Stream through the home node (checked against the CID)."""
        return self.local.iter(cid)

    def pin(self, cid: str) -> None:
        """Pin at the home node."""
        self.local.pin(cid)

    def unpin(self, cid: str) -> None:
        """Unpin at the home node only (other hospitals' pins are theirs)."""
        self.local.unpin(cid)

    def has(self, cid: str) -> bool:
        """Whether the home node holds ``cid`` pinned."""
        return self.local.has(cid)
