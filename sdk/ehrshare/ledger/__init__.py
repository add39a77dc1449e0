"""Ledger backends behind one client interface (see :mod:`ehrshare.ledger.api`).

The embedded ledger (default) runs the real chaincode in-process over SQLite; the Fabric client
(:mod:`ehrshare.ledger.fabric` over a Gateway service, or :mod:`ehrshare.ledger.peer` for Fabric
2.1 peers without one, which runs against a real peer in CI) satisfies the same protocols and is
deliberately not imported here. Callers pick a backend by configuration only.
"""

from ehrshare.ledger.api import (
    ChaincodeEvent,
    ChaincodeEvents,
    Checkpoint,
    Contract,
    Gateway,
    InMemoryCheckpointer,
    Network,
)
from ehrshare.ledger.embedded import EmbeddedGateway, connect
from ehrshare.ledger.errors import (
    CommitError,
    CommitStatusError,
    EndorseError,
    GatewayError,
    LedgerError,
    LedgerIntegrityError,
    SubmitError,
)
from ehrshare.ledger.records import TxStatus
from ehrshare.ledger.store import EmbeddedLedger

__all__ = [
    "ChaincodeEvent",
    "ChaincodeEvents",
    "Checkpoint",
    "CommitError",
    "CommitStatusError",
    "Contract",
    "EmbeddedGateway",
    "EmbeddedLedger",
    "EndorseError",
    "Gateway",
    "GatewayError",
    "InMemoryCheckpointer",
    "LedgerError",
    "LedgerIntegrityError",
    "Network",
    "SubmitError",
    "TxStatus",
    "connect",
]
