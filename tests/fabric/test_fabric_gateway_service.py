"""The Gateway-service client (``client: gateway``) against real Fabric >= 2.4 peers.

The shared network (tests/fabric/conftest.py: three hospitals, MAJORITY, one Raft orderer) as
HospitalA's admin, through :func:`ehrshare.ledger.fabric.service.connect_peers`: the peers'
Gateway plans the endorsements from its gossip view (the launcher waited for it, so the first
submit succeeds), orders and reports the commit. Fabric 2.3 peers have no Gateway service:
marker ``fabric_gateway``, skipped with the reason there.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator

import pytest

from ehrshare.identity import Identity, LocalCA, Signer
from ehrshare.ledger.api import InMemoryCheckpointer, StoredCheckpoint
from ehrshare.ledger.errors import EndorseError, GatewayError
from ehrshare.ledger.fabric import FabricContract, FabricGateway
from ehrshare.ledger.fabric.service import GatewayServiceCalls, connect_peers
from ehrshare.ledger.peer import PeerEndpoint
from ehrshare.ledgers import FabricBackend
from ehrshare.network.binaries import fabric_bin_dir
from ehrshare.network.fabric import GATEWAY_SINCE, FabricNet, fabric_version
from ehrshare.network.supervisor import free_loopback_ports
from ehrshare.services.tls import issue_tls_certificate

pytestmark = [pytest.mark.fabric, pytest.mark.fabric_gateway, pytest.mark.slow]

_log = logging.getLogger(__name__)
Admins = Callable[[str], tuple[Identity, Signer]]


@pytest.fixture(scope="module")
def net(request: pytest.FixtureRequest) -> FabricNet:
    """The shared network, once the binaries are known to have a Gateway service (checked
    first: on 2.3 nothing is started for this module)."""
    version = fabric_version() if (fabric_bin_dir() / "peer").is_file() else None
    if version is None or version[:2] < GATEWAY_SINCE:
        pytest.skip(
            "the Gateway service needs Fabric 2.4 or later; EHRSHARE_FABRIC_BIN has "
            f"{'.'.join(map(str, version)) if version else 'no peer binary'} (point it and "
            "EHRSHARE_FABRIC_SAMPLECONFIG at 2.5 or 3.x release binaries)"
        )
    network: FabricNet = request.getfixturevalue("fabric_net")
    return network


def _peers(net: FabricNet) -> list[PeerEndpoint]:
    return [
        PeerEndpoint(net.peer_address(msp), msp, net.tls_ca(msp).read_bytes(), net.server_name(msp))
        for msp in net.spec.msp_ids
    ]


def _tls(net: FabricNet, msp: str) -> tuple[bytes, bytes]:
    cert, key = net.admin_tls(msp)
    return cert.read_bytes(), key.read_bytes()


@pytest.fixture(scope="module")
def admin(net: FabricNet, admin_of: Admins) -> tuple[Identity, Signer]:
    return admin_of("HospitalAMSP")


@pytest.fixture(scope="module")
def gateway(net: FabricNet, admin: tuple[Identity, Signer]) -> Iterator[FabricGateway]:
    gw = connect_peers(*admin, peers=_peers(net), client_tls=_tls(net, "HospitalAMSP"))
    try:
        yield gw
    finally:
        gw.close()


@pytest.fixture(scope="module")
def contract(net: FabricNet, gateway: FabricGateway) -> FabricContract:
    return gateway.get_network(net.spec.channel).get_contract(net.spec.chaincode)


def _member_cert(net: FabricNet, prefix: str) -> str:
    ca = LocalCA.load(net.spec.root / "ca" / "HospitalAMSP")
    identity, _ = ca.issue(f"{prefix}-{os.urandom(4).hex()}")
    return identity.credentials.decode()


def test_the_first_submit_commits_valid_endorsed_as_the_policy_needs(
    contract: FabricContract, net: FabricNet
) -> None:
    # No endorsers named: the Gateway derives a MAJORITY of the three hospitals from gossip.
    timings, blocks = [], []
    for n in range(5):
        start = time.perf_counter()
        commit = (
            contract.new_proposal("RegisterMember", _member_cert(net, f"gw{n}"), "clinician")
            .endorse()
            .submit()
        )
        status = commit.get_status()
        timings.append(time.perf_counter() - start)
        assert (status.code, status.successful) == ("VALID", True)
        blocks.append(status.block_number)
    _log.info("gateway submit+commit p50 %.1f ms", statistics.median(timings) * 1e3)
    assert blocks == sorted(blocks) and blocks[0] > 0
    result = json.loads(
        contract.submit_transaction("RegisterMember", _member_cert(net, "r"), "auditor")
    )
    stored = json.loads(contract.evaluate_transaction("GetIdentity", result["ibe_id"]))
    assert stored == result and stored["role"] == "auditor"


def test_refusals_carry_the_contracts_message(
    contract: FabricContract, admin: tuple[Identity, Signer]
) -> None:
    timings = []
    for _ in range(10):
        start = time.perf_counter()
        json.loads(contract.evaluate_transaction("GetIdentity", admin[0].ibe_id))
        timings.append(time.perf_counter() - start)
    _log.info("gateway evaluate p50 %.1f ms", statistics.median(timings) * 1e3)
    with pytest.raises(GatewayError) as refused:
        contract.evaluate_transaction("GetOrgCA", "HospitalBMSP")
    assert refused.value.message == "the ca of HospitalBMSP is not registered"
    with pytest.raises(EndorseError) as endorse:
        contract.submit_transaction("RegisterIdentity")
    assert endorse.value.message == f"identity {admin[0].ibe_id} is already registered"
    assert not endorse.value.unreachable


def test_events_from_block_0_and_from_a_checkpoint(
    gateway: FabricGateway, contract: FabricContract, net: FabricNet
) -> None:
    statuses = [
        contract.new_proposal("RegisterMember", _member_cert(net, f"ev{n}"), "clinician")
        .endorse()
        .submit()
        .get_status()
        for n in range(2)
    ]
    network = gateway.get_network(net.spec.channel)
    checkpoint = InMemoryCheckpointer()
    seen = []
    with network.get_chaincode_events(net.spec.chaincode, start_block=0) as events:
        for event in events:
            seen.append(event)
            checkpoint.checkpoint_event(event)
            if event.transaction_id == statuses[0].tx_id:
                break
    assert [e.event_name for e in seen[:2]] == ["RegisterOrgCA", "RegisterIdentity"]
    stored = StoredCheckpoint(checkpoint.block_number, checkpoint.transaction_id)
    with network.get_chaincode_events(net.spec.chaincode, checkpoint=stored) as events:
        assert next(events).transaction_id == statuses[1].tx_id


def test_a_peer_that_is_down_first_in_the_list_is_passed_over(
    net: FabricNet, admin: tuple[Identity, Signer]
) -> None:
    (port,) = free_loopback_ports(1)
    own = _peers(net)[0]
    dead = PeerEndpoint(f"127.0.0.1:{port}", own.msp_id, own.tls_ca_pem, own.server_name)
    peers = [dead, *_peers(net)]
    with connect_peers(*admin, peers=peers, client_tls=_tls(net, "HospitalAMSP")) as gw:
        contract = gw.get_network(net.spec.channel).get_contract(net.spec.chaincode)
        result = json.loads(
            contract.submit_transaction("RegisterMember", _member_cert(net, "fo"), "clinician")
        )
        assert result["role"] == "clinician"
        assert isinstance(gw._calls, GatewayServiceCalls) and gw._calls.current != dead


def test_a_tls_client_certificate_from_no_consortium_ca_is_refused_not_unreachable(
    net: FabricNet, admin: tuple[Identity, Signer]
) -> None:
    stranger = LocalCA.create("StrangerMSP")
    cert, key = issue_tls_certificate(stranger, "intruder", client_auth=True)
    with connect_peers(*admin, peers=_peers(net), client_tls=(cert, key)) as gw:
        contract = gw.get_network(net.spec.channel).get_contract(net.spec.chaincode)
        with pytest.raises(GatewayError) as refused:
            contract.evaluate_transaction("GetIdentity", admin[0].ibe_id)
    assert refused.value.creator_refused and not refused.value.unreachable
    assert "TLS handshake" in refused.value.message


def test_the_networks_connection_makes_backends_use_the_gateway(
    net: FabricNet, admin: tuple[Identity, Signer]
) -> None:
    assert net.connection()["client"] == "gateway"
    backend = FabricBackend.from_connection(net.connection())
    try:
        gw = backend.connect(*admin, client_tls=_tls(net, "HospitalAMSP"))
        assert isinstance(gw._calls, GatewayServiceCalls)
        contract = gw.get_network(net.spec.channel).get_contract(net.spec.chaincode)
        record = json.loads(contract.evaluate_transaction("GetIdentity", admin[0].ibe_id))
        assert record["role"] == "admin"
    finally:
        backend.close()
