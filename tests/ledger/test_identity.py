"""The local CA, identities and low-S ECDSA signers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import NameOID

from ehrshare.identity import ATTRIBUTE_OID, LocalCA, Signer, verify_signature

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def test_issued_certificate_carries_role_attribute_and_node_ou() -> None:
    ca = LocalCA.create("Org1MSP")
    identity, _ = ca.issue("alice", role="patient", node_ou="client")
    cert = identity.certificate
    ext = cert.extensions.get_extension_for_oid(ATTRIBUTE_OID).value
    assert isinstance(ext, x509.UnrecognizedExtension)
    assert json.loads(ext.value) == {"attrs": {"ehrshare.role": "patient"}}
    ous = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    assert ous == ["client"]
    assert identity.ibe_id == "Org1MSP/alice"
    cert.verify_directly_issued_by(ca.certificate)


def test_signatures_are_low_s_and_high_s_is_refused() -> None:
    identity, signer = LocalCA.create("Org1MSP").issue("bob")
    for i in range(40):
        msg = f"message {i}".encode()
        sig = signer.sign(msg)
        r, s = decode_dss_signature(sig)
        assert s <= N // 2
        assert verify_signature(identity, msg, sig)
        high = encode_dss_signature(r, N - s)  # the same signature, malleated
        assert not verify_signature(identity, msg, high)
        assert not verify_signature(identity, msg + b"!", sig)


def test_signer_does_not_leak_its_key() -> None:
    _, signer = LocalCA.create("Org1MSP").issue("bob")
    assert "PRIVATE" not in repr(signer)
    with pytest.raises(TypeError, match="not hashable"):
        hash(signer)
    again = Signer.from_secret_bytes(signer.to_secret_bytes())
    assert again.public_key.public_numbers() == signer.public_key.public_numbers()


def test_ca_saves_and_loads(tmp_path: Path) -> None:
    ca = LocalCA.create("Org2MSP")
    ca.save(tmp_path)
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o077 == 0
    loaded = LocalCA.load(tmp_path)
    identity, _ = loaded.issue("carol")
    identity.certificate.verify_directly_issued_by(ca.certificate)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"enrollment_id": ""}, "must be non-empty"),
        ({"enrollment_id": "a/b"}, "must be non-empty, without '/'"),
        ({"enrollment_id": "x", "node_ou": "boss"}, "is not client, admin, peer or orderer"),
    ],
)
def test_issue_rejects_bad_names(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalCA.create("Org1MSP").issue(**kwargs)
