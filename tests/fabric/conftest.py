"""One real Fabric 2.3 network (``ehrshare.network.fabric``) shared by the peer-level tests.

``fabric_net`` builds it once per test session for test_fabric_peer.py and
test_fabric_local_gateway.py: three hospitals whose CAs are made with ``LocalCA.create`` and
saved to ``<tmp>/consortium/ca/<MSP>`` (as `consortium init` does), one Raft orderer, one peer
per hospital on free loopback ports, a MAJORITY endorsement policy and our chaincode server
deployed as ccaas over mutual TLS. Before the tests, HospitalA's admin registers its
organisation's CA and itself with the ``peer`` CLI (a client independent of the SDK), so every
module sees the same starting state whatever order they run in. At the end the network is
stopped by pid and the fixture asserts every pid is gone.

The other modules here (test_fabricnet.py, test_fabric_consortium.py, test_live_fabric.py) build
networks of their own: they test creating, restarting and breaking one.
"""

from __future__ import annotations

import functools
import json
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ehrshare.identity import Identity, LocalCA, Signer
from ehrshare.network.binaries import fabric_bin_dir as default_bin_dir
from ehrshare.network.fabric import FabricNet, FabricNetSpec
from ehrshare.network.supervisor import pid_alive

MSPS = ("HospitalAMSP", "HospitalBMSP", "HospitalCMSP")


def _admin(net: FabricNet, msp: str) -> tuple[Identity, Signer]:
    msp_dir = net.admin_msp(msp)
    key = serialization.load_pem_private_key(
        (msp_dir / "keystore" / "key.pem").read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Identity(msp, (msp_dir / "signcerts" / "cert.pem").read_bytes()), Signer(key)


def _chaincode_debug(net: FabricNet) -> None:
    """Turn the peers' ``chaincode`` logger to debug through Fabric's operations API (``PUT
    /logspec``), so their logs record the REGISTER/READY handshake with our server (fabricnet
    runs peers at INFO, where the handshake leaves no line)."""
    ports = json.loads((net.dir / "network.json").read_text(encoding="utf-8"))["ports"]["peers"]
    for msp in net.spec.msp_ids:
        request = urllib.request.Request(
            f"http://127.0.0.1:{ports[msp]['operations']}/logspec",
            data=json.dumps({"spec": "info:chaincode=debug"}).encode(),
            method="PUT",
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # our loopback peer
            assert response.status == 204, f"PUT /logspec on the peer of {msp}: {response.status}"


@pytest.fixture(scope="session")
def fabric_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FabricNet]:
    """The shared network, started, with HospitalA's CA and admin registered on the channel."""
    assert (default_bin_dir() / "peer").is_file(), "Fabric 2.3 is not built: run `make tools`"
    root = tmp_path_factory.mktemp("fabric23") / "consortium"
    for msp in MSPS:
        LocalCA.create(msp).save(root / "ca" / msp)
    net = FabricNet.create(FabricNetSpec(root=root, msp_ids=MSPS))
    pids: list[int] = []
    try:
        # The peers launch the chaincode (dial our server) once its definition is committed:
        # the chaincode logger is turned up just before, while the hospitals approve it.
        approving: list[str] = []

        def progress(step: str) -> None:
            if step.startswith("approving") and not approving:
                approving.append(step)
                _chaincode_debug(net)

        net.start(progress=progress)
        assert approving, "the first start approved no chaincode definition"
        pids = list(net.pids().values())
        assert len(pids) == 1 + 1 + len(MSPS)  # chaincode server, orderer, one peer each
        # A MAJORITY of three: HospitalA's and HospitalB's peers endorse.
        ca_pem = (root / "ca" / "HospitalAMSP" / "ca-cert.pem").read_text(encoding="utf-8")
        both = ["HospitalAMSP", "HospitalBMSP"]
        net.invoke("HospitalAMSP", ["RegisterOrgCA", ca_pem], endorsers=both)
        net.invoke("HospitalAMSP", ["RegisterIdentity"], endorsers=both)
        net.wait_synced()  # HospitalC's peer, which did not endorse, has the blocks too
        yield net
    finally:
        pids = pids or list(net.pids().values())
        net.stop()
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids and not any(pid_alive(p) for p in pids), "the network left processes running"


@pytest.fixture(scope="session")
def admin_of(fabric_net: FabricNet) -> Callable[[str], tuple[Identity, Signer]]:
    """A hospital's Fabric admin (NodeOU admin, role admin) from the network's admin MSP."""
    return functools.partial(_admin, fabric_net)
