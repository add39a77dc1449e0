"""A hospital's peer dies: its members' transactions and event followers carry on through the
other hospitals' peers (real Fabric 2.3, three hospitals, MAJORITY endorsement).

The follower is the loop the KGC nodes' DKG follower and the proxies' revocation follower run
(`ehrshare.ledger.api.EventFollower`); the client's chaincode-event streams move to the next peer
once one breaks as unreachable, and the follower opens its stream again from its checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ehrshare.identity import Identity, LocalCA, Signer
from ehrshare.ledger.api import ChaincodeEvent, EventFollower
from ehrshare.ledger.fabric import FabricGateway
from ehrshare.ledgers import FabricBackend
from ehrshare.network.binaries import fabric_bin_dir as default_bin_dir
from ehrshare.network.fabric import FabricNet, FabricNetSpec
from ehrshare.network.supervisor import pid_alive

pytestmark = [pytest.mark.fabric, pytest.mark.slow]

MSPS = ("HospitalAMSP", "HospitalBMSP", "HospitalCMSP")


@pytest.fixture
def net(tmp_path: Path) -> Iterator[FabricNet]:
    assert (default_bin_dir() / "peer").is_file(), "Fabric 2.3 is not built: run `make tools`"
    root = tmp_path / "consortium"
    for msp in MSPS:
        LocalCA.create(msp).save(root / "ca" / msp)
    network = FabricNet.create(FabricNetSpec(root=root, msp_ids=MSPS))
    pids: list[int] = []
    try:
        network.start()
        pids = list(network.pids().values())
        ca_pem = (root / "ca" / "HospitalAMSP" / "ca-cert.pem").read_text(encoding="utf-8")
        both = ["HospitalAMSP", "HospitalBMSP"]
        network.invoke("HospitalAMSP", ["RegisterOrgCA", ca_pem], endorsers=both)
        network.invoke("HospitalAMSP", ["RegisterIdentity"], endorsers=both)
        network.wait_synced()
        yield network
    finally:
        network.stop()
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids and not any(pid_alive(p) for p in pids), "the network left processes running"


def _gateway(net: FabricNet, msp: str) -> FabricGateway:
    msp_dir = net.admin_msp(msp)
    key = serialization.load_pem_private_key(
        (msp_dir / "keystore" / "key.pem").read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    identity = Identity(msp, (msp_dir / "signcerts" / "cert.pem").read_bytes())
    cert, tls_key = net.admin_tls(msp)
    backend = FabricBackend.from_connection(net.connection())
    assert backend.endorsers == 2  # MAJORITY of three
    gateway = backend.connect(
        identity, Signer(key), client_tls=(cert.read_bytes(), tls_key.read_bytes())
    )
    assert isinstance(gateway, FabricGateway)  # new_proposal: the fine-grained flow
    return gateway


def _publish(gateway: FabricGateway, net: FabricNet, name: str) -> str:
    # RegisterMember of a new HospitalA member: a plain write (a type key would need a DKG).
    contract = gateway.get_network("ehrshare").get_contract("ehrshare")
    identity, _ = LocalCA.load(net.spec.root / "ca" / "HospitalAMSP").issue(name)
    transaction = contract.new_proposal(
        "RegisterMember", identity.credentials.decode(), "clinician"
    ).endorse()
    status = transaction.submit().get_status()
    assert status.code == "VALID", status
    return transaction.transaction_id


def test_a_dead_peer_moves_commits_and_event_followers_to_the_others(net: FabricNet) -> None:
    gateway = _gateway(net, "HospitalAMSP")
    seen: list[ChaincodeEvent] = []
    arrived = threading.Condition()
    point: list[tuple[int | None, str | None]] = [(None, None)]

    def handle(event: ChaincodeEvent) -> None:
        with arrived:
            seen.append(event)
            point[0] = (event.block_number, event.transaction_id)
            arrived.notify_all()

    def wait_for(tx_id: str) -> None:
        with arrived:
            assert arrived.wait_for(
                lambda: any(e.transaction_id == tx_id for e in seen), timeout=60
            ), f"event of {tx_id} never arrived; saw {[e.event_name for e in seen]}"

    follower = EventFollower(
        gateway.get_network("ehrshare"),
        "ehrshare",
        lambda: point[0],
        handle,
        name="test follower",
        retry_max=0.5,
    )
    follower.open()
    thread = threading.Thread(target=follower.run, daemon=True)
    thread.start()
    try:
        before = _publish(gateway, net, "before")
        wait_for(before)
        assert follower.reconnects == 0

        health = net.health()
        assert {n: h["status"] for n, h in health.items()} == dict.fromkeys(health, "running")
        assert sorted(health) == [
            "ccaas", "orderer1", "peer-HospitalAMSP", "peer-HospitalBMSP", "peer-HospitalCMSP"
        ]  # fmt: skip

        # Hospital A's peer dies (SIGKILL): the events came from it, it was the first endorser
        # and the commit listener read its blocks.
        dead = net.pids()["peer-HospitalAMSP"]
        os.kill(dead, signal.SIGKILL)
        # Its health says so at once (by pid in /proc); the others still answer.
        deadline = time.monotonic() + 10
        while net.health()["peer-HospitalAMSP"]["healthy"] and time.monotonic() < deadline:
            time.sleep(0.05)
        health = net.health()
        assert health["peer-HospitalAMSP"] == {
            "pid": dead,
            "status": f"down (pid {dead} is gone)",
            "healthy": False,
        }
        assert all(h["healthy"] for n, h in health.items() if n != "peer-HospitalAMSP")
        assert not net.running()
        after = _publish(gateway, net, "after")  # endorsed by B and C, committed, reported
        wait_for(after)
        assert follower.reconnects >= 1
        # Nothing was delivered twice across the reconnection.
        ids = [e.transaction_id for e in seen]
        assert len(ids) == len(set(ids))
    finally:
        follower.stop()
        thread.join(10)
        gateway.close()
    assert not thread.is_alive()

    # `repair` starts again only what is gone (the peer, then the orderer), the rest keeps its
    # pids, and the network takes transactions again.
    live = {n: p for n, p in net.pids().items() if n != "peer-HospitalAMSP"}
    assert net.repair() == ["peer-HospitalAMSP"]
    assert {n: p for n, p in net.pids().items() if n in live} == live
    orderer = net.pids()["orderer1"]
    os.kill(orderer, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(orderer) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert net.repair() == ["orderer1"]
    assert net.pids()["orderer1"] != orderer
    assert net.running() and all(h["healthy"] for h in net.health().values())
    assert net.repair() == []
    gateway = _gateway(net, "HospitalAMSP")
    try:
        _publish(gateway, net, "repaired")
    finally:
        gateway.close()
