"""RegisterOrgCA / RotateOrgCA / RegisterMember: member certificates verify against the org's CA.

The attack these tests exist for: an org admin (or anyone who can reach one) hands RegisterMember
a certificate from a *different* CA that merely copies the real CA's subject name. Before the CA
went on chain the contract compared issuer names only and registered it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ehrshare.identity import LocalCA
from ehrshare.ledger import EndorseError
from ehrshare.ledger.sandbox import ManualClock, Member, Sandbox

T0 = 1_900_000_000
AT_T0 = dt.datetime.fromtimestamp(T0, dt.UTC)
CA_SUBJECT = "CN=ca.Org1MSP,O=Org1MSP"


@pytest.fixture
def sb(tmp_path: Path) -> Iterator[Sandbox]:
    with Sandbox.open(tmp_path, clock=ManualClock(T0)) as sandbox:
        yield sandbox


@pytest.fixture
def admin(sb: Sandbox) -> Member:
    return sb.member("Org1MSP", "admin", node_ou="admin")


def _pem(ca: LocalCA) -> str:
    return ca.certificate_pem.decode()


def _refused(sb: Sandbox, member: Member, function: str, *args: str) -> str:
    """Submit (the real path: endorse, then commit); the refusal changes no state."""
    before = (sb.ledger.state_digest(), sb.ledger.height())
    with pytest.raises(EndorseError) as info:
        member.contract.submit_transaction(function, *args)
    assert (sb.ledger.state_digest(), sb.ledger.height()) == before
    return info.value.message


def _cert(sb: Sandbox, name: str, ca: LocalCA | None = None, **kw: object) -> str:
    issuer = ca or sb.cas["Org1MSP"]
    kw.setdefault("now", AT_T0)
    identity, _ = issuer.issue(name, **kw)  # type: ignore[arg-type]
    return identity.credentials.decode()


def test_register_org_ca_then_member(sb: Sandbox, admin: Member) -> None:
    record = admin.submit("RegisterOrgCA", _pem(sb.cas["Org1MSP"]))
    assert (record["msp_id"], record["subject"], record["registered_by"]) == (
        "Org1MSP",
        CA_SUBJECT,
        "Org1MSP/admin",
    )
    assert record["ca_pem"] == _pem(sb.cas["Org1MSP"])
    assert admin.evaluate("GetOrgCA", "Org1MSP") == record
    reg = admin.submit("RegisterMember", _cert(sb, "nora"), "clinician")
    assert (reg["ibe_id"], reg["role"]) == ("Org1MSP/nora", "clinician")


def test_member_before_org_ca_is_refused(sb: Sandbox, admin: Member) -> None:
    assert _refused(sb, admin, "RegisterMember", _cert(sb, "nora"), "clinician") == (
        "the ca of Org1MSP is not registered; its org admin must run RegisterOrgCA first"
    )
    assert _refused(sb, admin, "GetOrgCA", "Org1MSP") == "the ca of Org1MSP is not registered"


def test_same_issuer_name_from_another_ca_is_refused(sb: Sandbox, admin: Member) -> None:
    admin.submit("RegisterOrgCA", _pem(sb.cas["Org1MSP"]))
    rogue = LocalCA.create("Org1MSP")  # same subject, its own key
    assert rogue.certificate.subject == sb.cas["Org1MSP"].certificate.subject
    forged = _cert(sb, "mallory", rogue, role="admin")
    assert _refused(sb, admin, "RegisterMember", forged, "clinician") == (
        "certificate of mallory is not signed by the registered ca of Org1MSP"
    )


def test_foreign_expired_future_and_ca_certificates_are_refused(sb: Sandbox, admin: Member) -> None:
    admin.submit("RegisterOrgCA", _pem(sb.cas["Org1MSP"]))
    foreign = _cert(sb, "yan", sb.cas["Org2MSP"])
    assert _refused(sb, admin, "RegisterMember", foreign, "clinician") == (
        "certificate of yan was not issued by the ca of Org1MSP"
    )
    old = _cert(sb, "old", now=AT_T0 - dt.timedelta(days=400), valid_days=365)
    not_after = int(x509.load_pem_x509_certificate(old.encode()).not_valid_after_utc.timestamp())
    assert _refused(sb, admin, "RegisterMember", old, "clinician") == (
        f"certificate of old expired at {not_after} (tx time {T0})"
    )
    early = _cert(sb, "early", now=AT_T0 + dt.timedelta(days=2))
    not_before = int(
        x509.load_pem_x509_certificate(early.encode()).not_valid_before_utc.timestamp()
    )
    assert _refused(sb, admin, "RegisterMember", early, "clinician") == (
        f"certificate of early is not valid before {not_before} (tx time {T0})"
    )
    assert _refused(sb, admin, "RegisterMember", _pem(sb.cas["Org1MSP"]), "clinician") == (
        "certificate of ca.Org1MSP is a ca certificate; only member certificates register"
    )


def test_org_ca_must_have_issued_the_admins_own_certificate(sb: Sandbox, admin: Member) -> None:
    rogue = LocalCA.create("Org1MSP")
    assert _refused(sb, admin, "RegisterOrgCA", _pem(rogue)) == (
        f"ca certificate {CA_SUBJECT} did not issue the certificate of Org1MSP/admin; "
        "an org admin registers the ca that issued its own certificate"
    )
    # Another organisation's (real) CA cannot be registered by this org's admin either.
    assert _refused(sb, admin, "RegisterOrgCA", _pem(sb.cas["Org2MSP"])) == (
        "ca certificate CN=ca.Org2MSP,O=Org2MSP did not issue the certificate of "
        "Org1MSP/admin; an org admin registers the ca that issued its own certificate"
    )
    leaf = admin.identity.credentials.decode()
    assert _refused(sb, admin, "RegisterOrgCA", leaf) == (
        "certificate CN=admin,OU=admin,O=Org1MSP is not a ca certificate"
    )
    clinician = sb.member("Org1MSP", "dave", "clinician")
    assert _refused(sb, clinician, "RegisterOrgCA", _pem(sb.cas["Org1MSP"])) == (
        "identity Org1MSP/dave is not an org admin"
    )
    assert _refused(sb, admin, "RegisterOrgCA", "not a pem") == (
        "certificate is not a valid pem x.509 certificate"
    )


def _renewed(ca: LocalCA, days: int) -> str:
    """The same CA (name and key) with a new validity period: a CA certificate renewal."""
    old = ca.certificate
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(old.subject)
        .public_key(old.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(AT_T0 - dt.timedelta(days=1))
        .not_valid_after(AT_T0 + dt.timedelta(days=days))
    )
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    cert = builder.sign(ca._key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_replacing_needs_an_explicit_rotation_naming_the_old_ca(sb: Sandbox, admin: Member) -> None:
    first = admin.submit("RegisterOrgCA", _pem(sb.cas["Org1MSP"]))
    renewed = _renewed(sb.cas["Org1MSP"], 7000)
    assert _refused(sb, admin, "RegisterOrgCA", renewed) == (
        f"the ca of Org1MSP is already registered (sha256 {first['sha256']}); "
        "replace it with RotateOrgCA"
    )
    assert _refused(sb, admin, "RotateOrgCA", renewed, "00" * 32) == (
        f"the registered ca of Org1MSP has sha256 {first['sha256']}, not '{'00' * 32}'"
    )
    assert _refused(sb, admin, "RotateOrgCA", _pem(LocalCA.create("Org1MSP")), first["sha256"])
    rotated = admin.submit("RotateOrgCA", renewed, first["sha256"])
    assert rotated["previous_sha256"] == first["sha256"]
    assert rotated["sha256"] != first["sha256"]
    assert admin.evaluate("GetOrgCA", "Org1MSP")["ca_pem"] == renewed
    assert admin.submit("RegisterMember", _cert(sb, "nora"), "clinician")["ibe_id"] == (
        "Org1MSP/nora"
    )


def test_expired_org_ca_refuses_members(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    with Sandbox.open(tmp_path, clock=clock) as sb:
        admin = sb.member("Org1MSP", "admin", node_ou="admin")
        admin.submit("RegisterOrgCA", _pem(sb.cas["Org1MSP"]))
        member = _cert(sb, "late", valid_days=20 * 365)
        ca_end = int(sb.cas["Org1MSP"].certificate.not_valid_after_utc.timestamp())
        clock.advance(ca_end - clock.seconds + 10)
        assert _refused(sb, admin, "RegisterMember", member, "clinician") == (
            f"the registered ca of Org1MSP expired at {ca_end}; rotate it with RotateOrgCA"
        )
