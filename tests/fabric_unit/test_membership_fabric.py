"""A membership update for a Fabric channel, without a network: ``sign-update`` gives each admin's
Fabric ConfigSignature beside the signature over the file (same key, over the update's bytes),
the file round-trips both, and a signature counts only when both verify and the certificate
carries the admin NodeOU that Fabric's Admins policies count. The orderer's own check of the
same signatures is in tests/fabric/test_fabric_join.py."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from ehrshare.hospital import init_hospital
from ehrshare.identity import LocalCA
from ehrshare.membership import MembershipUpdate, NotAnAdmin, sign_update
from ehrshare.network.fabric.config_update import verify_config_signature

MSPS = ("HospitalAMSP", "HospitalBMSP", "HospitalCMSP")


@pytest.fixture
def cas() -> dict[str, LocalCA]:
    return {msp: LocalCA.create(msp) for msp in MSPS}


@pytest.fixture
def update(tmp_path: Path, cas: dict[str, LocalCA]) -> MembershipUpdate:
    request = init_hospital(tmp_path / "hd", "HospitalD").request()
    orgs = {msp: ca.certificate_pem for msp, ca in cas.items()}
    return MembershipUpdate.compute(
        "c-1",
        "ehrshare",
        orgs,
        request,
        config_update=b"\x0a\x08ehrshare-config-update-bytes",
        anchor_peer="127.0.0.1:7051",
    )


def _orgs(cas: dict[str, LocalCA]) -> dict[str, bytes]:
    return {msp: ca.certificate_pem for msp, ca in cas.items()}


def test_each_signature_carries_a_config_signature_that_round_trips_and_counts(
    update: MembershipUpdate, cas: dict[str, LocalCA], tmp_path: Path
) -> None:
    for msp in ("HospitalAMSP", "HospitalBMSP"):
        identity, signer = cas[msp].issue("admin", role="admin", node_ou="admin")
        update = sign_update(update, identity, signer)
        sig = update.signatures[-1]
        assert sig.config_signature is not None
        parts = verify_config_signature(update.config_update or b"", sig.config_signature)
        assert parts is not None and parts[0] == msp and parts[1] == identity.credentials
    path = tmp_path / "u.json"
    update.save(path)
    loaded = MembershipUpdate.load(path)
    assert loaded.config_update == update.config_update
    assert loaded.anchor_peer == "127.0.0.1:7051"
    assert loaded.signers(_orgs(cas)) == ["HospitalAMSP", "HospitalBMSP"]
    assert len(loaded.config_signatures(["HospitalAMSP", "HospitalBMSP"])) == 2
    # The file's payload covers the update's bytes: another update is another digest.
    other = MembershipUpdate.compute(
        "c-1",
        "ehrshare",
        _orgs(cas),
        update.request,
        config_update=b"\x0a\x05other",
        anchor_peer="127.0.0.1:7051",
    )
    assert other.digest() != update.digest()


def test_an_admin_without_the_admin_node_ou_is_refused_on_fabric(
    update: MembershipUpdate, cas: dict[str, LocalCA]
) -> None:
    identity, signer = cas["HospitalAMSP"].issue("old-admin", role="admin", node_ou="client")
    with pytest.raises(NotAnAdmin, match="lacks the admin NodeOU"):
        sign_update(update, identity, signer)


def test_a_config_signature_by_another_key_or_over_other_bytes_does_not_count(
    update: MembershipUpdate, cas: dict[str, LocalCA], tmp_path: Path
) -> None:
    identity, signer = cas["HospitalAMSP"].issue("admin", role="admin", node_ou="admin")
    update = sign_update(update, identity, signer)
    path = tmp_path / "u.json"
    update.save(path)
    assert MembershipUpdate.load(path).signers(_orgs(cas)) == ["HospitalAMSP"]

    # The same admin's ConfigSignature over other bytes (another update) replaces it.
    data = json.loads(path.read_text(encoding="utf-8"))
    forged = sign_update(
        MembershipUpdate.compute(
            "c-1",
            "ehrshare",
            _orgs(cas),
            update.request,
            config_update=b"\x0a\x05other",
            anchor_peer="127.0.0.1:7051",
        ),
        identity,
        signer,
    ).signatures[0]
    assert forged.config_signature is not None
    data["signatures"][0]["config_signature"] = base64.b64encode(forged.config_signature).decode()
    path.write_text(json.dumps(data), encoding="utf-8")
    assert MembershipUpdate.load(path).signers(_orgs(cas)) == []

    # Another key's ConfigSignature (a stranger's admin of the same MSP name) does not count.
    stranger = LocalCA.create("HospitalAMSP")
    s_identity, s_signer = stranger.issue("admin", role="admin", node_ou="admin")
    theirs = sign_update(update, s_identity, s_signer).signatures[0]
    assert theirs.config_signature is not None
    data["signatures"][0]["config_signature"] = base64.b64encode(theirs.config_signature).decode()
    path.write_text(json.dumps(data), encoding="utf-8")
    assert MembershipUpdate.load(path).signers(_orgs(cas)) == []

    # Missing altogether: on a Fabric update the file's signature alone does not count.
    del data["signatures"][0]["config_signature"]
    path.write_text(json.dumps(data), encoding="utf-8")
    assert MembershipUpdate.load(path).signers(_orgs(cas)) == []


def test_a_signer_of_the_embedded_form_still_counts_without_a_config_signature(
    update: MembershipUpdate, cas: dict[str, LocalCA], tmp_path: Path
) -> None:
    request = update.request
    embedded = MembershipUpdate.compute("c-1", "ehrshare", _orgs(cas), request)
    identity, signer = cas["HospitalBMSP"].issue("admin", role="admin")
    signed = sign_update(embedded, identity, signer)
    assert signed.signatures[0].config_signature is None
    assert "fabric" not in signed.payload()
    assert signed.signers(_orgs(cas)) == ["HospitalBMSP"]
