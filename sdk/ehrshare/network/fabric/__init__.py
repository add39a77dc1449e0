"""A real multi-organisation Hyperledger Fabric network (2.3+) for a consortium, on 127.0.0.1
or with each organisation on a host of its own (``FabricNetSpec.hosts``).

One type, :class:`FabricNet`, across files by concern: :mod:`.spec` (what to build, what the
binaries can do), :mod:`.layout` (paths, ports, ``network.json``), :mod:`.material` (creating it:
MSPs and TLS from the hospitals' CAs, ``configtx.yaml``, genesis block, node configs, the ccaas
package), :mod:`.channel` (the ``peer`` CLI, channel joins and chaincode lifecycle) and
:mod:`.launcher` (its processes, through :mod:`ehrshare.network.supervisor`).
"""

from __future__ import annotations

from ehrshare.network.fabric.launcher import FabricNet
from ehrshare.network.fabric.spec import (
    GATEWAY_SINCE,
    ORDERER_MSP,
    ORDERER_TYPES,
    FabricNetError,
    FabricNetSpec,
    NodeHost,
    bft_quorum,
    default_client,
    fabric_ca_problem,
    fabric_version,
    missing_binaries,
)

__all__ = [
    "GATEWAY_SINCE",
    "ORDERER_MSP",
    "ORDERER_TYPES",
    "FabricNet",
    "FabricNetError",
    "FabricNetSpec",
    "NodeHost",
    "bft_quorum",
    "default_client",
    "fabric_ca_problem",
    "fabric_version",
    "missing_binaries",
]
