"""A Fabric network across hosts: each hospital's peer in its own network namespace with its own
address, the orderer and chaincode server in another (real Fabric 2.3, three hospitals).

Checks that every node binds its host's address only (no 127.0.0.1 left in what runs, in the
certificates or in the connection profiles), and that a hospital cut off mid-run (its link
down) does not stop the others: they keep committing through the SDK and the ``peer`` CLI and
read what they committed, a read on the cut-off peer fails with a clear error, and once the
link is up again its peer catches up.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ehrshare.identity import Identity, LocalCA, Signer
from ehrshare.ledger.fabric import FabricGateway
from ehrshare.ledgers import FabricBackend
from ehrshare.network.binaries import fabric_bin_dir as default_bin_dir
from ehrshare.network.fabric import ORDERER_MSP, FabricNet, FabricNetError, FabricNetSpec, NodeHost
from ehrshare.network.netns import HostLayout
from ehrshare.network.supervisor import pid_alive

pytestmark = [pytest.mark.netns, pytest.mark.fabric, pytest.mark.slow]

MSPS = ("HospitalAMSP", "HospitalBMSP", "HospitalCMSP")


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HostLayout, FabricNet]]:
    """Four hosts (three hospitals, the orderer organisation) and a network started on them;
    stopped by pid and the hosts removed afterwards, whatever happened."""
    assert (default_bin_dir() / "peer").is_file(), "Fabric 2.3 is not built: run `make tools`"
    tmp = tmp_path_factory.mktemp("fabric-hosts")
    root = tmp / "consortium"
    for msp in MSPS:
        LocalCA.create(msp).save(root / "ca" / msp)
    layout = HostLayout.create([*MSPS, ORDERER_MSP], state_dir=tmp / "netns-state")
    pids: list[int] = []
    try:
        hosts = {label: NodeHost(h.address, h.netns) for label, h in layout.hosts.items()}
        net = FabricNet.create(FabricNetSpec(root=root, msp_ids=MSPS, hosts=hosts))
        try:
            net.start()
            pids = list(net.pids().values())
            yield layout, net
        finally:
            net.stop()
    finally:
        layout.teardown()
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
    gateway = backend.connect(
        identity, Signer(key), client_tls=(cert.read_bytes(), tls_key.read_bytes())
    )
    assert isinstance(gateway, FabricGateway)
    return gateway


def _listening(netns: str) -> set[str]:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "ss", "-ltnH"], capture_output=True, text=True, check=True
    ).stdout
    # Addresses without their ports; gRPC in Python binds the IPv4-mapped form [::ffff:a.b.c.d].
    hosts = {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}
    return {h.removeprefix("[::ffff:").strip("[]") for h in hosts}


def test_every_node_binds_its_hosts_address_only(hosted: tuple[HostLayout, FabricNet]) -> None:
    layout, net = hosted
    for name, pid in net.pids().items():
        label = ORDERER_MSP if not name.startswith("peer-") else name.removeprefix("peer-")
        host = layout.host(label)
        # It runs in its host's namespace...
        ns = subprocess.run(
            ["ip", "netns", "identify", str(pid)], capture_output=True, text=True, check=True
        ).stdout.split()
        assert ns == [host.netns], f"{name} runs in {ns}, not {host.netns}"
        # ...and nothing in its configuration names loopback.
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        settings = [e.decode() for e in environ if e.startswith((b"CORE_", b"ORDERER_"))]
        assert settings or name == "ccaas"
        assert not [s for s in settings if "127.0.0.1" in s or "localhost" in s], name
    for label, host in layout.hosts.items():
        listening = _listening(host.netns)
        assert listening, f"nothing listens on {label}'s host"
        assert listening == {host.address}, (label, listening)
    for msp in MSPS:
        cert = x509.load_pem_x509_certificate(
            (net.org_dir(msp) / "peer" / "tls" / "server.crt").read_bytes()
        )
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        assert ips == [layout.address(msp)]
        assert "localhost" not in san.get_values_for_type(x509.DNSName)
        profile = net.connection_profile_path(msp).read_text(encoding="utf-8")
        assert "127.0.0.1" not in profile and layout.address(msp) in profile
    assert "127.0.0.1" not in json.dumps(net.connection())


def test_a_cut_off_hospital_leaves_the_others_committing_and_catches_up(
    hosted: tuple[HostLayout, FabricNet],
) -> None:
    layout, net = hosted
    c = "HospitalCMSP"
    both = ["HospitalAMSP", "HospitalBMSP"]
    start = net.wait_synced()
    layout.cut(c)
    try:
        # The others keep committing: the peer CLI and the SDK, endorsed by A and B.
        ca_pem = (net.spec.root / "ca" / "HospitalAMSP" / "ca-cert.pem").read_text("utf-8")
        net.invoke("HospitalAMSP", ["RegisterOrgCA", ca_pem], endorsers=both)
        net.invoke("HospitalAMSP", ["RegisterIdentity"], endorsers=both)
        gateway = _gateway(net, "HospitalAMSP")
        try:
            contract = gateway.get_network("ehrshare").get_contract("ehrshare")
            member, _ = LocalCA.load(net.spec.root / "ca" / "HospitalAMSP").issue("during-cut")
            status = (
                contract.new_proposal("RegisterMember", member.credentials.decode(), "clinician")
                .endorse()
                .submit()
                .get_status()
            )
            assert status.code == "VALID", status
        finally:
            gateway.close()
        # They read what they committed...
        for msp in both:
            assert "BEGIN CERTIFICATE" in net.query(msp, ["GetOrgCA", "HospitalAMSP"])
        heights = {msp: net.height(msp) for msp in both}
        assert min(heights.values()) >= start + 3, heights
        # ...and a read on the cut-off hospital's peer fails, naming its address.
        started = time.monotonic()
        with pytest.raises(FabricNetError, match=layout.address(c).replace(".", r"\.")):
            net.query(c, ["GetOrgCA", "HospitalAMSP"])
        assert time.monotonic() - started < 30
    finally:
        layout.heal(c)
    # Back: its peer catches up with the blocks it missed and serves what they hold.
    target = max(heights.values())
    deadline = time.monotonic() + 60
    while True:
        try:
            if net.height(c) >= target:
                break
        except FabricNetError:
            pass
        assert time.monotonic() < deadline, f"{c}'s peer did not catch up to {target}"
        time.sleep(0.2)
    assert "BEGIN CERTIFICATE" in net.query(c, ["GetOrgCA", "HospitalAMSP"])
