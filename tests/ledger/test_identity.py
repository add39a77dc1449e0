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
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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


def test_issue_with_hosts_adds_sans_and_server_auth() -> None:
    ca = LocalCA.create("Org1MSP")
    identity, signer = ca.issue("proxy0", node_ou="peer", hosts=("127.0.0.1", "localhost"))
    cert = identity.certificate
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    cert.verify_directly_issued_by(ca.certificate)
    assert signer.public_key.public_numbers() == cert.public_key().public_numbers()
    # Without hosts a member certificate stays a plain client certificate.
    plain, _ = ca.issue("alice", role="patient")
    with pytest.raises(x509.ExtensionNotFound):
        plain.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        (("bad host",), "neither an IP address nor a valid DNS name"),
        (("",), "non-empty"),
        ("localhost", "not one string"),
    ],
)
def test_issue_rejects_bad_hosts(hosts: object, message: str) -> None:
    ca = LocalCA.create("Org1MSP")
    with pytest.raises((ValueError, TypeError), match=message):
        ca.issue("proxy0", hosts=hosts)  # type: ignore[arg-type]


def test_tls_certificates_no_longer_use_the_private_ca_key() -> None:
    import inspect

    from ehrshare.services import tls

    assert "._key" not in inspect.getsource(tls)
    ca = LocalCA.create("Org1MSP")
    cert_pem, key_pem = tls.issue_tls_certificate(ca, "kgc0", hosts=("::1",))
    cert = x509.load_pem_x509_certificate(cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["::1"]
    assert Signer.from_secret_bytes(key_pem).public_key.public_numbers() == (
        cert.public_key().public_numbers()
    )


def test_roots_are_low_s_with_a_subject_key_identifier() -> None:
    # Fabric 2.1 (Go >= 1.15) refuses a root whose self-signature has a high S. Without the
    # re-signing loop each root is high-S with probability 1/2, so 24 roots would all be low-S
    # by chance once in 16 million runs.
    for _ in range(24):
        ca = LocalCA.create("Org1MSP")
        _, s = decode_dss_signature(ca.certificate.signature)
        assert s <= N // 2
        ca.certificate.verify_directly_issued_by(ca.certificate)
        # Fabric's MSP also refuses a CA certificate without a subject key identifier.
        ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        assert ski.value == x509.SubjectKeyIdentifier.from_public_key(ca.certificate.public_key())


def test_client_auth_adds_client_usage_to_a_server_certificate() -> None:
    ca = LocalCA.create("Org1MSP")
    identity, _ = ca.issue("peer0", node_ou="peer", hosts=("127.0.0.1",), client_auth=True)
    usage = identity.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(ValueError, match="client_auth is for TLS server certificates"):
        ca.issue("peer0", node_ou="peer", client_auth=True)
