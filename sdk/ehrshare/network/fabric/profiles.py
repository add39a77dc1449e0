"""Fabric's common connection profile for each organisation of a network
(``fabric/connection-<MSP>.json``): what standard tools (Fabric's SDKs, the Gateway client,
Hyperledger Caliper) read to reach the network, so nobody writes one by hand.

The format is the one fabric-samples' test network writes (``ccp-template.json``): ``name``,
``version``, ``client.organization``, ``organizations`` (MSP id and peers), ``peers`` (``url``,
``tlsCACerts.pem``, ``grpcOptions.ssl-target-name-override``), ``orderers`` and a ``channels``
section for clients without service discovery. ``certificateAuthorities`` is left out: the
hospitals' CAs are offline here (identities come from wallets). Every organisation is listed in
every profile, so a client can plan endorsements across organisations. It must not contain
keys: only addresses, names and CA certificates.
"""

from __future__ import annotations

from typing import Any, Final

from ehrshare.network.fabric.layout import FabricLayout
from ehrshare.network.fabric.spec import ORDERER_MSP

__all__ = ["PROFILE_VERSION", "connection_profile"]

PROFILE_VERSION: Final = "1.0.0"


def connection_profile(net: FabricLayout, msp: str) -> dict[str, Any]:
    """The connection profile of ``msp``'s clients (``client.organization`` is ``msp``)."""
    spec = net.spec
    if msp not in spec.msp_ids:
        raise ValueError(f"{msp!r} is not one of {list(spec.msp_ids)}")
    peers: dict[str, Any] = {}
    for org in spec.msp_ids:
        name = net.server_name(org)
        peers[name] = {
            "url": f"grpcs://{net.peer_address(org)}",
            "tlsCACerts": {"pem": net.tls_ca(org).read_text(encoding="ascii")},
            "grpcOptions": {"ssl-target-name-override": name, "hostnameOverride": name},
        }
    orderer_ca = net.tls_ca(ORDERER_MSP).read_text(encoding="ascii")
    orderers: dict[str, Any] = {}
    for i in range(spec.orderers):
        name = net._orderer_name(i)
        orderers[name] = {
            "url": f"grpcs://{net.orderer_address(i)}",
            "tlsCACerts": {"pem": orderer_ca},
            "grpcOptions": {"ssl-target-name-override": name, "hostnameOverride": name},
        }
    return {
        "name": f"ehrshare-{msp.lower()}",
        "version": PROFILE_VERSION,
        "client": {
            "organization": msp,
            "connection": {"timeout": {"peer": {"endorser": "300"}, "orderer": "300"}},
        },
        "organizations": {
            org: {"mspid": org, "peers": [net.server_name(org)]} for org in spec.msp_ids
        },
        "peers": peers,
        "orderers": orderers,
        "channels": {
            spec.channel: {
                "orderers": list(orderers),
                "peers": {
                    name: {
                        "endorsingPeer": True,
                        "chaincodeQuery": True,
                        "ledgerQuery": True,
                        "eventSource": True,
                    }
                    for name in peers
                },
            }
        },
    }
