"""The Fabric client for peers without a Gateway service (Fabric < 2.4): the Gateway's work,
done on the client (:mod:`ehrshare.ledger.peer.gateway`).

:func:`connect` gives a :class:`~ehrshare.ledger.fabric.FabricGateway` whose calls
:class:`LocalGateway` makes against the peers and orderers given. The parts:
:mod:`~ehrshare.ledger.peer.gateway` (evaluate, endorse, submit, commit status, events; endpoint
choice and failover), :mod:`~ehrshare.ledger.peer.transport` (endpoints, channels, TLS binding,
gRPC failures as Gateway errors), :mod:`~ehrshare.ledger.peer.messages` (envelopes and block
events) and :mod:`~ehrshare.ledger.peer.commits` (Deliver listeners and event streams).
"""

from ehrshare.ledger.peer.gateway import LocalGateway, connect
from ehrshare.ledger.peer.messages import (
    assemble_transaction,
    block_chaincode_events,
    seek_envelope,
    skip_through,
)
from ehrshare.ledger.peer.transport import OrdererEndpoint, PeerEndpoint

__all__ = [
    "LocalGateway",
    "OrdererEndpoint",
    "PeerEndpoint",
    "assemble_transaction",
    "block_chaincode_events",
    "connect",
    "seek_envelope",
    "skip_through",
]
