"""The Fabric backend's client: Gateway → Network → Contract over Fabric's Gateway API
(:mod:`ehrshare.ledger.fabric.client`).

The parts: :mod:`~ehrshare.ledger.fabric.client` (the Gateway, Network, Contract, Proposal,
Transaction and Commit objects), :mod:`~ehrshare.ledger.fabric.calls` (the Gateway's five calls
behind :class:`GatewayCalls`, their gRPC implementation, :func:`dial`),
:mod:`~ehrshare.ledger.fabric.messages` (signed proposals, checks of the prepared envelope) and
:mod:`~ehrshare.ledger.fabric.failures` (a failed call as the stage's error).
"""

from ehrshare.ledger.fabric.calls import EventStream, GatewayCalls, GrpcGatewayCalls, dial
from ehrshare.ledger.fabric.client import (
    CONFLICT_RETRIES,
    FabricChaincodeEvents,
    FabricCommit,
    FabricContract,
    FabricGateway,
    FabricNetwork,
    FabricProposal,
    FabricTransaction,
    Timeouts,
    connect,
)
from ehrshare.ledger.fabric.failures import (
    GRPC_STATUS_DETAILS_KEY,
    GatewayFailure,
    rpc_status_class,
)
from ehrshare.ledger.fabric.messages import chaincode_action_of, signed_proposal

__all__ = [
    "CONFLICT_RETRIES",
    "GRPC_STATUS_DETAILS_KEY",
    "EventStream",
    "FabricChaincodeEvents",
    "FabricCommit",
    "FabricContract",
    "FabricGateway",
    "FabricNetwork",
    "FabricProposal",
    "FabricTransaction",
    "GatewayCalls",
    "GatewayFailure",
    "GrpcGatewayCalls",
    "Timeouts",
    "chaincode_action_of",
    "connect",
    "dial",
    "rpc_status_class",
    "signed_proposal",
]
