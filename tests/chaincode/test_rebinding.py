"""Recovery of a lost wallet on chain: admins of a quorum of hospitals rebind an identity to a
new certificate; from that commit on the old certificate is refused by every function."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaincode_world import FAR, PROXY, World, build_world, fails_without_change
from cryptography.hazmat.primitives.serialization import Encoding

from ehrshare.ledger import EndorseError
from ehrshare.ledger.sandbox import Member
from ehrshare_chaincode import FUNCTIONS

ALICE = "Org1MSP/alice"


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = build_world(tmp_path)
    # A second hospital with its CA on chain and an admin: quorum 2 needs two hospitals.
    org2_admin = world.sandbox.member("Org2MSP", "admin2", node_ou="admin")
    org2_admin.submit("RegisterOrgCA", world.sandbox.cas["Org2MSP"].certificate_pem.decode())
    world.m["org2_admin"] = org2_admin
    world.m["org1_admin2"] = world.sandbox.member("Org1MSP", "admin-b", node_ou="admin")
    yield world
    world.sandbox.close()


def new_alice(w: World, msp: str = "Org1MSP", name: str = "alice") -> Member:
    """The wallet issued after identity proofing: a new key and certificate, not registered."""
    identity, signer = w.sandbox.cas[msp].issue(name, role="patient", now=w.sandbox.now())
    return w.sandbox.connect(identity, signer)


def cert(member: Member) -> str:
    return member.identity.credentials.decode()


def sha(member: Member) -> str:
    return hashlib.sha256(member.identity.certificate.public_bytes(Encoding.DER)).hexdigest()


def revoked_text(w: World, member: Member) -> str:
    ident = w.m["org_admin"].evaluate("GetIdentity", ALICE)
    return (
        f"certificate {sha(member)} of identity {ALICE} was revoked at {ident['rebound_at']}: "
        "the identity was rebound to a new certificate by recovery"
    )


def recover(w: World, new: Member) -> dict[str, object]:
    w.m["org_admin"].submit("ProposeRebinding", ALICE, cert(new), "")
    return dict(w.m["org2_admin"].submit("ApproveRebinding", ALICE, sha(new)))


def test_quorum_of_two_hospitals_rebinds_and_old_certificate_is_refused_everywhere(
    w: World,
) -> None:
    old, new = w.m["owner"], new_alice(w)
    proposal = w.m["org_admin"].submit("ProposeRebinding", ALICE, cert(new), "")
    assert proposal["status"] == "open" and len(proposal["approvals"]) == 1
    # Not yet in force: the old wallet still works, the new one is nobody.
    assert old.evaluate("GetIdentity", ALICE)["cert_sha256"] == sha(old)
    done = w.m["org2_admin"].submit("ApproveRebinding", ALICE, sha(new))
    assert done["status"] == "done"
    assert [a["msp_id"] for a in done["approvals"]] == ["Org1MSP", "Org2MSP"]
    ident = new.evaluate("GetIdentity", ALICE)
    assert (ident["cert_sha256"], ident["role"], ident["previous_cert_sha256"]) == (
        sha(new),
        "patient",
        sha(old),
    )
    expected = revoked_text(w, old)
    for function, spec in FUNCTIONS.items():
        with pytest.raises(EndorseError) as info:
            old.contract.new_proposal(function, *(["x"] * len(spec.required))).endorse()
        assert info.value.message == expected, function
    # Another certificate with the same subject (a second copy the thief had made) too.
    other = new_alice(w)
    with pytest.raises(EndorseError) as info:
        other.contract.new_proposal("GetOrgCA", "Org1MSP").endorse()
    assert info.value.message == revoked_text(w, other)


def test_recovered_patient_keeps_records_and_grants_and_revokes_an_old_grant(w: World) -> None:
    new = new_alice(w)
    recover(w, new)
    assert new.evaluate("GetRecord", "r-1")["owner"] == ALICE
    page = new.evaluate("ListGrants", ALICE, "owner", "", "")
    assert w.grants["grantee"] in {g["grant_id"] for g in page["grants"]}
    new.submit("RevokeAccess", w.grants["grantee"])
    denied = w.m["grantee"].submit("RequestAccess", "r-1")
    assert denied["decision"] == "deny"
    # A new grant from the new wallet works, and the log names the rebinding.
    g = new.submit("GrantAccess", "lab", w.m["grantee"].ibe_id, FAR, "1", "", "", PROXY)
    assert g["grantor"] == ALICE
    trail = new.evaluate("GetAuditTrail", "patient", ALICE, "100", "")
    actions = [e["action"] for e in trail["entries"]]
    assert [a for a in actions if "Rebind" in a or a == "Rebound"] == [
        "ProposeRebinding",
        "ApproveRebinding",
        "ApproveRebinding",
        "Rebound",
    ]


def test_one_hospital_cannot_reach_the_quorum(w: World) -> None:
    new = new_alice(w)
    w.m["org_admin"].submit("ProposeRebinding", ALICE, cert(new), "")
    # The same admin again, or another admin of the same hospital: counted once, refused.
    text = f"hospital Org1MSP already approved the rebinding of {ALICE} to certificate {sha(new)}"
    assert fails_without_change(w, w.m["org_admin"], "ApproveRebinding", ALICE, sha(new)) == text
    assert fails_without_change(w, w.m["org1_admin2"], "ApproveRebinding", ALICE, sha(new)) == text
    assert fails_without_change(w, w.m["org_admin"], "ProposeRebinding", ALICE, cert(new), "") == (
        text
    )
    # The old binding stays in force: the old wallet works, the KGC nodes' check still names it.
    assert w.m["owner"].evaluate("GetIdentity", ALICE)["cert_sha256"] == sha(w.m["owner"])
    assert w.m["owner"].evaluate("GetRebinding", ALICE, sha(new))["status"] == "open"


def test_quorum_larger_than_the_consortium_is_refused(w: World) -> None:
    new = new_alice(w)
    assert fails_without_change(w, w.m["org_admin"], "ProposeRebinding", ALICE, cert(new), "3") == (
        "quorum 3 needs more hospitals than the 2 with a registered ca"
    )
    assert fails_without_change(w, w.m["org_admin"], "ProposeRebinding", ALICE, cert(new), "1") == (
        "quorum 1 is out of range [2, 64]"
    )


def test_proposal_checks_the_certificate(w: World) -> None:
    admin = w.m["org_admin"]
    wrong_name = new_alice(w, name="mallory")
    assert fails_without_change(w, admin, "ProposeRebinding", ALICE, cert(wrong_name), "") == (
        f"certificate of mallory does not name identity {ALICE} (its common name must be alice)"
    )
    other_ca = new_alice(w, msp="Org2MSP")
    assert fails_without_change(w, admin, "ProposeRebinding", ALICE, cert(other_ca), "") == (
        "certificate of alice was not issued by the ca of Org1MSP"
    )
    assert fails_without_change(w, admin, "ProposeRebinding", ALICE, cert(w.m["owner"]), "") == (
        f"certificate {sha(w.m['owner'])} is already bound to {ALICE}"
    )
    assert fails_without_change(
        w, admin, "ProposeRebinding", "Org1MSP/pete", cert(new_alice(w, name="pete")), ""
    ) == (
        "identity Org1MSP/pete has role proxy; only patient, clinician, auditor identities "
        "are rebound by recovery"
    )
    assert fails_without_change(
        w, w.m["owner"], "ProposeRebinding", ALICE, cert(wrong_name), ""
    ) == (f"identity {ALICE} has role patient; this needs role admin")


def test_approval_of_a_proposal_made_against_an_earlier_binding_is_void(w: World) -> None:
    first, second = new_alice(w), new_alice(w)
    w.m["org_admin"].submit("ProposeRebinding", ALICE, cert(second), "")
    recover(w, first)
    assert fails_without_change(w, w.m["org2_admin"], "ApproveRebinding", ALICE, sha(second)) == (
        f"the rebinding of {ALICE} to certificate {sha(second)} is void (it expired or the "
        "identity was rebound since); propose it again"
    )
    assert fails_without_change(w, w.m["org2_admin"], "ApproveRebinding", ALICE, sha(first)) == (
        f"the rebinding of {ALICE} to certificate {sha(first)} already took effect"
    )
    assert w.m["org_admin"].evaluate("GetIdentity", ALICE)["cert_sha256"] == sha(first)


def test_an_expired_proposal_is_void(w: World) -> None:
    new = new_alice(w)
    w.m["org_admin"].submit("ProposeRebinding", ALICE, cert(new), "")
    w.clock.advance(7 * 24 * 3600 + 1)
    assert fails_without_change(w, w.m["org2_admin"], "ApproveRebinding", ALICE, sha(new)) == (
        f"the rebinding of {ALICE} to certificate {sha(new)} is void (it expired or the "
        "identity was rebound since); propose it again"
    )


def test_proposing_again_after_a_crash_approves_the_open_proposal(w: World) -> None:
    new = new_alice(w)
    w.m["org_admin"].submit("ProposeRebinding", ALICE, cert(new), "")
    # The second hospital's admin runs the same command (propose) rather than approve.
    done = w.m["org2_admin"].submit("ProposeRebinding", ALICE, cert(new), "")
    assert done["status"] == "done"
    assert new.evaluate("GetRebinding", ALICE, sha(new))["status"] == "done"
