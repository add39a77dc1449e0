"""The client-side gateway (ehrshare.ledger.peer) against real Fabric 2.3 peers and an orderer.

Fabric 2.3 has no Gateway service; ``ledger.peer.connect`` endorses on the peers' Endorser,
orders through the orderer's Broadcast and reads commits and chaincode events from a peer's
Deliver service. These tests drive the shared ``ehrshare.network.fabric`` network (three hospitals,
a MAJORITY endorsement policy; tests/fabric/conftest.py) as HospitalA's admin: queries, commits
endorsed by two organisations, a commit endorsed by one (invalidated by the peers), the
contract's refusals, an MVCC conflict, chaincode events from block 0, from a checkpoint and from
the next commit. The first orderer given is a port nothing listens on, so every submission also
goes through the orderer failover.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from ehrshare.identity import Identity, LocalCA, Signer
from ehrshare.ledger.api import InMemoryCheckpointer, StoredCheckpoint
from ehrshare.ledger.errors import EndorseError, GatewayError
from ehrshare.ledger.fabric import FabricContract, FabricGateway, FabricNetwork
from ehrshare.ledger.peer import OrdererEndpoint, PeerEndpoint, connect
from ehrshare.network.fabric import ORDERER_MSP, FabricNet
from ehrshare.network.supervisor import free_loopback_ports

pytestmark = [pytest.mark.fabric, pytest.mark.slow]

_log = logging.getLogger(__name__)
Admins = Callable[[str], tuple[Identity, Signer]]


def _connect(net: FabricNet, admin: tuple[Identity, Signer], endorsers: int) -> FabricGateway:
    peers = [
        PeerEndpoint(net.peer_address(msp), msp, net.tls_ca(msp).read_bytes(), net.server_name(msp))
        for msp in net.spec.msp_ids
    ]
    orderer_ca = net.tls_ca(ORDERER_MSP).read_bytes()
    (dead,) = free_loopback_ports(1)
    orderer = net.connection()["orderers"][0]
    # Peers and orderers require mutual TLS: the admin presents its TLS client certificate.
    cert, key = net.admin_tls(admin[0].msp_id)
    return connect(
        *admin,
        client_tls=(cert.read_bytes(), key.read_bytes()),
        peers=peers,
        orderers=[
            OrdererEndpoint(f"127.0.0.1:{dead}", orderer_ca, orderer["server_name"]),
            OrdererEndpoint(orderer["address"], orderer_ca, orderer["server_name"]),
        ],
        endorsers=endorsers,
    )


@pytest.fixture(scope="module")
def admin(admin_of: Admins) -> tuple[Identity, Signer]:
    return admin_of("HospitalAMSP")


@pytest.fixture(scope="module")
def gateway(fabric_net: FabricNet, admin: tuple[Identity, Signer]) -> Iterator[FabricGateway]:
    assert fabric_net.endorsers == 2  # MAJORITY of three hospitals
    gw = _connect(fabric_net, admin, fabric_net.endorsers)
    try:
        yield gw
    finally:
        gw.close()
    # The gateway owned its commit listener: closing it stopped the thread.
    assert not [t for t in threading.enumerate() if t.name.startswith("fabric-commits-")]


@pytest.fixture(scope="module")
def network(fabric_net: FabricNet, gateway: FabricGateway) -> FabricNetwork:
    return gateway.get_network(fabric_net.spec.channel)


@pytest.fixture(scope="module")
def contract(fabric_net: FabricNet, network: FabricNetwork) -> FabricContract:
    return network.get_contract(fabric_net.spec.chaincode)


def _member_cert(net: FabricNet, prefix: str) -> str:
    """A new HospitalA member's certificate for RegisterMember: the tests' plain write.

    (PublishTypeKey was that write until type keys had to carry a proof of knowledge checked
    against a finished DKG's key, which this network does not have.)"""
    ca = LocalCA.load(net.spec.root / "ca" / "HospitalAMSP")
    identity, _ = ca.issue(f"{prefix}-{os.urandom(4).hex()}")
    return identity.credentials.decode()


def test_evaluate_reads_state_and_a_refusal_carries_the_contracts_message(
    contract: FabricContract, fabric_net: FabricNet, admin: tuple[Identity, Signer]
) -> None:
    me = admin[0].ibe_id
    timings = []
    for _ in range(10):
        start = time.perf_counter()
        record = json.loads(contract.evaluate_transaction("GetIdentity", me))
        timings.append(time.perf_counter() - start)
        assert (record["ibe_id"], record["role"]) == (me, "admin")
    _log.info("evaluate p50 %.1f ms", statistics.median(timings) * 1e3)

    # Evaluated on the caller's own organisation's peer.
    with pytest.raises(GatewayError) as refused:
        contract.evaluate_transaction("GetOrgCA", "HospitalBMSP")
    assert refused.value.message == "the ca of HospitalBMSP is not registered"
    assert refused.value.details == (
        f"HospitalAMSP ({fabric_net.peer_address('HospitalAMSP')}): chaincode response 500, "
        "the ca of HospitalBMSP is not registered",
    )


def test_submit_commits_valid_in_a_block_and_a_query_reads_it_back(
    contract: FabricContract, fabric_net: FabricNet
) -> None:
    blocks: list[int] = []
    timings = []
    for n in range(5):
        cert = _member_cert(fabric_net, f"lat{n}")
        start = time.perf_counter()
        commit = contract.new_proposal("RegisterMember", cert, "clinician").endorse().submit()
        status = commit.get_status()
        timings.append(time.perf_counter() - start)
        assert (status.tx_id, status.code, status.successful) == (
            commit.transaction_id,
            "VALID",
            True,
        )
        assert json.loads(commit.result)["ibe_id"].startswith(f"HospitalAMSP/lat{n}-")
        blocks.append(status.block_number)
    _log.info("submit+commit p50 %.1f ms", statistics.median(timings) * 1e3)
    assert blocks == sorted(blocks) and blocks[0] > 0

    cert = _member_cert(fabric_net, "t-read")
    result = json.loads(contract.submit_transaction("RegisterMember", cert, "auditor"))
    stored = json.loads(contract.evaluate_transaction("GetIdentity", result["ibe_id"]))
    assert stored == result and stored["role"] == "auditor"


def test_one_organisations_endorsement_is_not_a_majority_and_the_peers_invalidate_it(
    fabric_net: FabricNet, admin: tuple[Identity, Signer], contract: FabricContract
) -> None:
    # The channel's MAJORITY policy needs two of the three hospitals: the gateway above asks two
    # (its commits are VALID); one asking only its own peer gets its transaction ordered, then
    # invalidated by every peer, and nothing is written.
    lone = _connect(fabric_net, admin, endorsers=1)
    try:
        one = lone.get_network(fabric_net.spec.channel).get_contract(fabric_net.spec.chaincode)
        cert = _member_cert(fabric_net, "lone")
        commit = one.new_proposal("RegisterMember", cert, "clinician").endorse().submit()
        status = commit.get_status()
        assert (status.code, status.successful) == ("ENDORSEMENT_POLICY_FAILURE", False)
        ibe_id = json.loads(commit.result)["ibe_id"]
    finally:
        lone.close()
    with pytest.raises(GatewayError) as missing:
        contract.evaluate_transaction("GetIdentity", ibe_id)
    assert missing.value.message == f"identity {ibe_id} is not registered"


def test_a_submission_the_contract_refuses_is_an_endorse_error_and_nothing_is_ordered(
    contract: FabricContract, admin: tuple[Identity, Signer]
) -> None:
    with pytest.raises(EndorseError) as refused:
        contract.submit_transaction("RegisterIdentity")
    assert refused.value.message == f"identity {admin[0].ibe_id} is already registered"
    assert refused.value.transaction_id


def test_two_transactions_endorsed_on_the_same_state_the_second_is_an_mvcc_conflict(
    contract: FabricContract, fabric_net: FabricNet
) -> None:
    # Both read the audit log head before either commits; the orderer puts the first one first.
    cert = _member_cert(fabric_net, "mvcc")
    first = contract.new_proposal("RegisterMember", cert, "clinician").endorse()
    second = contract.new_proposal("RegisterMember", cert, "clinician").endorse()
    first_commit, second_commit = first.submit(), second.submit()
    assert first_commit.get_status().code == "VALID"
    status = second_commit.get_status()
    assert (status.code, status.successful) == ("MVCC_READ_CONFLICT", False)
    assert status.block_number >= first_commit.get_status().block_number


def test_chaincode_events_from_block_0_and_resumed_from_a_checkpoint(
    contract: FabricContract, network: FabricNetwork, fabric_net: FabricNet
) -> None:
    statuses = []
    for n in range(3):  # one after the other: each reads the audit log head the last one wrote
        statuses.append(
            contract.new_proposal("RegisterMember", _member_cert(fabric_net, f"ev{n}"), "clinician")
            .endorse()
            .submit()
            .get_status()
        )
    assert [s.code for s in statuses] == ["VALID"] * 3
    wanted = [s.tx_id for s in statuses]

    seen = []
    checkpoint = InMemoryCheckpointer()
    with network.get_chaincode_events("ehrshare", start_block=0) as events:
        for event in events:
            # The set-up's RegisterOrgCA and RegisterIdentity (peer CLI) came first, in order.
            seen.append(event)
            checkpoint.checkpoint_event(event)
            if event.transaction_id == wanted[0]:
                break
    assert [e.event_name for e in seen[:2]] == ["RegisterOrgCA", "RegisterIdentity"]
    assert seen[-1].block_number == statuses[0].block_number
    assert seen[-1].chaincode_name == "ehrshare" and seen[-1].event_name == "RegisterMember"
    assert json.loads(seen[-1].payload)["tx_id"] == wanted[0]
    numbers = [e.block_number for e in seen]
    assert numbers == sorted(numbers)

    # Resuming from the checkpoint skips the handled transaction and yields the next ones.
    stored = StoredCheckpoint(checkpoint.block_number, checkpoint.transaction_id)
    with network.get_chaincode_events("ehrshare", checkpoint=stored) as events:
        resumed = [next(events).transaction_id, next(events).transaction_id]
    assert resumed == wanted[1:]


def test_events_from_the_next_commit_and_close_ends_a_blocked_iteration(
    contract: FabricContract, network: FabricNetwork, fabric_net: FabricNet
) -> None:
    cert = _member_cert(fabric_net, "next")
    events = network.get_chaincode_events("ehrshare")  # returns once positioned at the newest
    commit = contract.new_proposal("RegisterMember", cert, "clinician").endorse().submit()
    first = next(events)
    assert first.transaction_id == commit.transaction_id
    assert first.block_number == commit.get_status().block_number

    ended = threading.Event()

    def drain() -> None:
        for _ in events:
            pass
        ended.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    events.close()
    reader.join(timeout=30)
    assert ended.is_set(), "close() did not end the blocked iteration"


def test_a_client_built_only_from_the_connection_profile_reads_and_writes(
    fabric_net: FabricNet, admin: tuple[Identity, Signer]
) -> None:
    """Fabric's common connection profile the launcher wrote is enough to reach the network:
    peers by url, CA pem and name override, orderers likewise (nothing from network.json)."""
    profile = json.loads(
        fabric_net.connection_profile_path("HospitalAMSP").read_text(encoding="utf-8")
    )
    assert profile["client"]["organization"] == "HospitalAMSP"
    peers = []
    for org in profile["organizations"].values():
        for name in org["peers"]:
            entry = profile["peers"][name]
            peers.append(
                PeerEndpoint(
                    entry["url"].removeprefix("grpcs://"),
                    org["mspid"],
                    entry["tlsCACerts"]["pem"].encode(),
                    entry["grpcOptions"]["ssl-target-name-override"],
                )
            )
    orderers = [
        OrdererEndpoint(
            o["url"].removeprefix("grpcs://"),
            o["tlsCACerts"]["pem"].encode(),
            o["grpcOptions"]["ssl-target-name-override"],
        )
        for o in profile["orderers"].values()
    ]
    cert, key = fabric_net.admin_tls("HospitalAMSP")
    channel = next(iter(profile["channels"]))
    with connect(
        *admin,
        client_tls=(cert.read_bytes(), key.read_bytes()),
        peers=peers,
        orderers=orderers,
        endorsers=fabric_net.endorsers,
    ) as gw:
        contract = gw.get_network(channel).get_contract(fabric_net.spec.chaincode)
        me = admin[0].ibe_id
        assert json.loads(contract.evaluate_transaction("GetIdentity", me))["ibe_id"] == me
        cert_pem = _member_cert(fabric_net, "profile")
        result = json.loads(contract.submit_transaction("RegisterMember", cert_pem, "clinician"))
        assert result["ibe_id"].startswith("HospitalAMSP/profile-")
