"""The peers' discovery service, asked for the channel's membership (what the launcher's gossip
wait polls on Fabric >= 2.4, :mod:`ehrshare.ledger.fabric.discovery`).

The shared network (tests/fabric/conftest.py: three hospitals, one peer each, anchor peers):
each peer, asked as its hospital's admin, names every hospital's peer by its gossip endpoint;
an identity of no member organisation is refused by the peer; the launcher's wait decides from
discovery alone, without the peers' logs. Marker ``fabric_gateway``: the wait only runs where
the peers have a Gateway service, and the test is skipped with the reason on 2.3 (whose peers
have discovery too).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from ehrshare.identity import Identity, LocalCA, Signer
from ehrshare.ledger.fabric.discovery import (
    DiscoveryFailed,
    missing_orgs,
    peer_membership,
)
from ehrshare.network.binaries import fabric_bin_dir
from ehrshare.network.fabric import GATEWAY_SINCE, FabricNet, fabric_version
from ehrshare.network.fabric import launcher as launcher_module

pytestmark = [pytest.mark.fabric, pytest.mark.fabric_gateway, pytest.mark.slow]

Admins = Callable[[str], tuple[Identity, Signer]]


@pytest.fixture(scope="module")
def net(request: pytest.FixtureRequest) -> FabricNet:
    """The shared network, once the binaries are known to be 2.4 or later (checked first)."""
    version = fabric_version() if (fabric_bin_dir() / "peer").is_file() else None
    if version is None or version[:2] < GATEWAY_SINCE:
        pytest.skip(
            "the launcher asks discovery for gossip only where peers have a Gateway service "
            f"(Fabric 2.4 or later); EHRSHARE_FABRIC_BIN has "
            f"{'.'.join(map(str, version)) if version else 'no peer binary'}"
        )
    network: FabricNet = request.getfixturevalue("fabric_net")
    return network


def _ask(
    net: FabricNet,
    msp: str,
    identity: Identity,
    signer: Signer,
    *,
    tls: tuple[bytes, bytes] | None = None,
) -> dict[str, set[str]]:
    cert, key = net.admin_tls(msp)
    return peer_membership(
        net.peer_address(msp),
        tls_ca_pem=net.tls_ca(msp).read_bytes(),
        server_name=net.server_name(msp),
        channel=net.spec.channel,
        msp_id=identity.msp_id,
        certificate_pem=identity.credentials,
        sign=signer.sign,
        client_tls=tls or (cert.read_bytes(), key.read_bytes()),
    )


def test_every_peer_names_every_hospitals_peer_by_its_gossip_endpoint(
    net: FabricNet, admin_of: Admins
) -> None:
    msps = list(net.spec.msp_ids)
    views = {}
    for msp in msps:
        started = time.monotonic()
        views[msp] = _ask(net, msp, *admin_of(msp))
        assert time.monotonic() - started < 5.0
    assert missing_orgs(views, msps) == {}
    for msp, view in views.items():
        assert set(view) == set(msps), msp
        others = {view[org].pop() for org in msps if org != msp}
        assert others == {net.peer_address(org) for org in msps if org != msp}


def test_an_identity_of_no_member_organisation_is_refused(net: FabricNet) -> None:
    stranger_ca = LocalCA.create("StrangerMSP")
    identity, signer = stranger_ca.issue("mallory", role="admin")
    # Its TLS certificate is one the peer accepts (the hospital admin's): only the signed
    # request's identity is foreign.
    with pytest.raises(DiscoveryFailed, match="access denied"):
        _ask(net, "HospitalAMSP", identity, signer)


def test_the_launchers_wait_decides_from_discovery_without_reading_logs(
    net: FabricNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_logs(_proc: object) -> str:
        raise AssertionError("the gossip wait read a peer's log although discovery answered")

    monkeypatch.setattr(launcher_module, "_read_from", no_logs)
    by_log: set[str] = set()
    missing, errors = net._gossip_missing(list(net.spec.msp_ids), by_log, time.monotonic() + 30)
    assert (missing, errors, by_log) == ({}, {}, set())
