"""A real multi-organisation Hyperledger Fabric network (2.3+) for a consortium, on 127.0.0.1."""

from __future__ import annotations

from ehrshare.network.fabric.launcher import (
    ORDERER_MSP,
    FabricNet,
    FabricNetError,
    FabricNetSpec,
    fabric_ca_problem,
    fabric_version,
    missing_binaries,
)

__all__ = [
    "ORDERER_MSP",
    "FabricNet",
    "FabricNetError",
    "FabricNetSpec",
    "fabric_ca_problem",
    "fabric_version",
    "missing_binaries",
]
