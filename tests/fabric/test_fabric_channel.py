"""The channel as the orderers and peers hold it: its configuration and who gossips with whom.

The shared network (tests/fabric/conftest.py) was joined through the channel participation API
from a genesis block ``configtxgen`` wrote: no system channel, no consortium. The configuration
block is fetched from the orderer with the ``peer`` CLI (a client independent of the SDK) and
decoded here; the peers' own log lines show which peers gossip found.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from fabric_protos.common import common_pb2, configtx_pb2
from fabric_protos.common import configuration_pb2 as common_config_pb2
from fabric_protos.peer import configuration_pb2 as peer_config_pb2

from ehrshare.network.fabric import ORDERER_MSP, FabricNet

pytestmark = [pytest.mark.fabric, pytest.mark.slow]

common: Any = common_pb2
configtx: Any = configtx_pb2
common_config: Any = common_config_pb2
peer_config: Any = peer_config_pb2


def _channel_config(net: FabricNet, tmp_path: Path) -> Any:
    """The channel's current configuration, from the config block the orderer hands out."""
    out = tmp_path / "config.block"
    fetch = ["channel", "fetch", "config", str(out), *net.orderer_args(), "-c", net.spec.channel]
    net.peer_cli("HospitalBMSP", fetch)
    block = common.Block.FromString(out.read_bytes())
    payload = common.Payload.FromString(common.Envelope.FromString(block.data.data[0]).payload)
    return configtx.ConfigEnvelope.FromString(payload.data).config


def test_every_hospital_has_its_peer_as_anchor_peer_in_the_channel_config(
    fabric_net: FabricNet, tmp_path: Path
) -> None:
    config = _channel_config(fabric_net, tmp_path)
    application = config.channel_group.groups["Application"]
    assert set(application.groups) == set(fabric_net.spec.msp_ids)
    for msp in fabric_net.spec.msp_ids:
        value = application.groups[msp].values["AnchorPeers"].value
        anchors = peer_config.AnchorPeers.FromString(value).anchor_peers
        host, port = fabric_net.peer_address(msp).rsplit(":", 1)
        assert [(a.host, a.port) for a in anchors] == [(host, int(port))], msp


def test_the_channel_has_no_consortium_and_per_organisation_orderer_endpoints(
    fabric_net: FabricNet, tmp_path: Path
) -> None:
    config = _channel_config(fabric_net, tmp_path)
    channel = config.channel_group
    # Made for the channel participation API: no consortium (a system channel's mark), no
    # global Orderer.Addresses (which Fabric 3's V3_0 capability refuses).
    assert "Consortium" not in channel.values
    assert "OrdererAddresses" not in channel.values
    endpoints = channel.groups["Orderer"].groups[ORDERER_MSP].values["Endpoints"].value
    listed = list(common_config.OrdererAddresses.FromString(endpoints).addresses)
    assert listed == [fabric_net.orderer_address(i) for i in range(fabric_net.spec.orderers)]
    caps = common_config.Capabilities.FromString(channel.values["Capabilities"].value)
    assert set(caps.capabilities) == {"V3_0" if fabric_net.version[0] >= 3 else "V2_0"}
    assert fabric_net.orderer_channels(0) == [fabric_net.spec.channel]


def _views(log: Path) -> list[str]:
    text = log.read_text(encoding="utf-8", errors="replace")
    return re.findall(r"Membership view has changed\..*current view: +(.*)", text)


def test_gossip_learns_every_other_hospitals_peer_through_the_anchor_peers(
    fabric_net: FabricNet,
) -> None:
    # Each peer bootstraps gossip only from itself (CORE_PEER_GOSSIP_BOOTSTRAP is its own
    # address): the other organisations' peers can come only from the anchor peers in the
    # channel config. The peers log their channel membership view every 5 s when it changes.
    msps = fabric_net.spec.msp_ids
    missing: dict[str, set[str]] = {}
    deadline = time.monotonic() + 60
    while True:
        missing = {}
        for msp in msps:
            others = {fabric_net.peer_address(m) for m in msps if m != msp}
            log = fabric_net.dir / "logs" / f"peer-{msp}.log"
            seen = set().union(*(set(re.findall(r"127\.0\.0\.1:\d+", v)) for v in _views(log)))
            if others - seen:
                missing[msp] = others - seen
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"peers that never saw the others in gossip: {missing}"
