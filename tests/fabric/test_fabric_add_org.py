"""A hospital's organisation added to a running Fabric channel the real way: the config block
fetched from the orderer, the update computed in Python (``network.fabric.config_update``),
signed by the member hospitals' admins one by one, submitted with ``peer channel update``; the
orderer enforces the channel's ``MAJORITY Admins`` policy on it. Too few signatures, or the
joining hospital's own, are refused and the channel's config stays as it was. The peers' blocks
then verify with the config block checked as the orderer checked it, and the new hospital may
witness heads from its admission on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ehrshare.hospital import init_hospital
from ehrshare.identity import Identity, LocalCA, Signer
from ehrshare.ledger.errors import LedgerIntegrityError
from ehrshare.ledger.fabric_blocks import block_hash, fetch_blocks, verify_copies
from ehrshare.ledger.witness import sign_head
from ehrshare.network.fabric import FabricNet, FabricNetError, FabricNetSpec
from ehrshare.network.fabric.config_update import (
    application_orgs,
    channel_config,
    compute_update,
    config_signature,
    update_envelope,
    with_organization,
)
from ehrshare.wallet import Wallet

pytestmark = [pytest.mark.fabric, pytest.mark.slow]

MSPS = ("HospitalAMSP", "HospitalBMSP", "HospitalCMSP")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FabricNet]:
    root = tmp_path_factory.mktemp("addorg") / "consortium"
    for msp in MSPS:
        LocalCA.create(msp).save(root / "ca" / msp)
    network = FabricNet.create(FabricNetSpec(root=root, msp_ids=MSPS))
    try:
        network.start()
        yield network
    finally:
        network.stop()


def _config(net: FabricNet, tmp_path: Path) -> Any:
    out = tmp_path / f"config-{time.monotonic_ns()}.block"
    fetch = ["channel", "fetch", "config", str(out), *net.orderer_args(), "-c", net.spec.channel]
    net.peer_cli("HospitalAMSP", fetch)
    return channel_config(out.read_bytes())


def _fabric_admin(net: FabricNet, msp: str) -> tuple[bytes, Signer]:
    msp_dir = net.admin_msp(msp)
    key = serialization.load_pem_private_key(
        (msp_dir / "keystore" / "key.pem").read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return (msp_dir / "signcerts" / "cert.pem").read_bytes(), Signer(key)


def _submit(net: FabricNet, tmp_path: Path, envelope: bytes, as_msp: str) -> None:
    path = tmp_path / f"update-{time.monotonic_ns()}.pb"
    path.write_bytes(envelope)
    update = ["channel", "update", "-f", str(path), "-c", net.spec.channel, *net.orderer_args()]
    net.peer_cli(as_msp, update)


def test_an_org_is_added_by_a_majority_of_admins_and_refused_with_fewer(
    net: FabricNet, tmp_path: Path
) -> None:
    hospital = init_hospital(tmp_path / "hd", "HospitalD")
    ca_pem = (hospital.ca_dir / "ca-cert.pem").read_bytes()
    original = _config(net, tmp_path)
    assert application_orgs(original) == list(MSPS)
    updated = with_organization(original, "HospitalDMSP", ca_pem)
    update = compute_update(net.spec.channel, original, updated).SerializeToString()
    now = int(time.time())

    # Only the submitting admin (B): 1 of 3, MAJORITY needs 2.
    with pytest.raises(FabricNetError, match="policy") as refused:
        _submit(
            net,
            tmp_path,
            update_envelope(net.spec.channel, update, [], timestamp_s=now),
            "HospitalBMSP",
        )
    # The joining hospital's own admin does not count: it is not a member yet.
    own_identity, own_signer = Wallet(hospital.wallet("admin")).load_identity()
    own = config_signature(update, "HospitalDMSP", own_identity.credentials, own_signer.sign)
    with pytest.raises(FabricNetError, match="policy") as refused:
        _submit(
            net,
            tmp_path,
            update_envelope(net.spec.channel, update, [own], timestamp_s=now),
            "HospitalBMSP",
        )
    assert "1 sub-policies were satisfied, but this policy requires 2" in str(refused.value)
    assert application_orgs(_config(net, tmp_path)) == list(MSPS)

    # HospitalA's admin signs (in its own process, from its own key), B submits: 2 of 3.
    cert_a, signer_a = _fabric_admin(net, "HospitalAMSP")
    sig_a = config_signature(update, "HospitalAMSP", cert_a, signer_a.sign)
    _submit(
        net,
        tmp_path,
        update_envelope(net.spec.channel, update, [sig_a], timestamp_s=now),
        "HospitalBMSP",
    )
    after = _config(net, tmp_path)
    assert application_orgs(after) == [*MSPS, "HospitalDMSP"]
    assert after.sequence == original.sequence + 1
    # The same update again is stale: its read set's versions moved.
    with pytest.raises(FabricNetError, match="version"):
        _submit(
            net,
            tmp_path,
            update_envelope(net.spec.channel, update, [sig_a], timestamp_s=now),
            "HospitalBMSP",
        )

    # `ledger verify`'s block check follows the config block: the update it carries satisfies
    # MAJORITY Admins under the config before it, the new config is that update applied, and a
    # head the new hospital witnesses afterwards is a member's.
    net.wait_synced()
    ident_a = Identity("HospitalAMSP", cert_a)
    tls_cert, tls_key = net.admin_tls("HospitalAMSP")
    copies = {
        msp: fetch_blocks(
            address=net.peer_address(msp),
            tls_ca_pem=net.tls_ca(msp).read_bytes(),
            server_name=net.server_name(msp),
            channel=net.spec.channel,
            identity=ident_a,
            signer=signer_a,
            client_tls=(tls_cert.read_bytes(), tls_key.read_bytes()),
        )
        for msp in ("HospitalAMSP", "HospitalBMSP")
    }
    report = verify_copies(copies)
    [change] = report["config_updates"]
    assert change["added"] == ["HospitalDMSP"] and change["removed"] == []
    # A's signature, and B's own added by `peer channel update`: 2 of 3.
    assert change["signed_by"] == ["HospitalAMSP", "HospitalBMSP"]
    assert report["organisations"] == [*MSPS, "HospitalDMSP"]
    head = sign_head(
        channel=net.spec.channel,
        height=report["height"],
        head=bytes.fromhex(report["head"]),
        orderer=report["orderer"],
        identity=own_identity,
        signer=own_signer,
        signed_at=int(time.time()),
    )
    assert verify_copies(copies, against=[head])["witnesses"][0]["height"] == report["height"]
    # The same head claimed at the height before the config block: D was no member then.
    early = sign_head(
        channel=net.spec.channel,
        height=change["block"],
        head=bytes.fromhex(block_hash(copies["HospitalAMSP"][change["block"] - 1]).hex()),
        orderer=report["orderer"],
        identity=own_identity,
        signer=own_signer,
        signed_at=int(time.time()),
    )
    with pytest.raises(LedgerIntegrityError, match="HospitalDMSP is not a channel member"):
        verify_copies(copies, against=[early])
