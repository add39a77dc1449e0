"""A minor's guardian on chain: the registering hospital's admin proposes, admins of two other
hospitals approve; the guardianship acts only from the approval that reaches two, and one
hospital (or two, one of them the proposer) can never make it effective."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaincode_world import FAR, World, build_world, fails_without_change

from ehrshare.identity import LocalCA

ALICE, GWEN = "Org1MSP/alice", "Org1MSP/gwen"
ALL = json.dumps(["audit", "grant", "revoke"])
AUDIT = json.dumps(["audit", "revoke"])


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = build_world(tmp_path)
    world.m["guardian"] = world.sandbox.member("Org1MSP", "gwen", "guardian")
    ca3 = LocalCA.create("Org3MSP")
    world.sandbox.ledger.add_organization("Org3MSP", ca3.certificate_pem)
    world.sandbox.cas["Org3MSP"] = ca3
    for msp, name in (("Org2MSP", "admin2"), ("Org3MSP", "admin3")):
        admin = world.sandbox.member(msp, name, node_ou="admin")
        admin.submit("RegisterOrgCA", world.sandbox.cas[msp].certificate_pem.decode())
        world.m[name] = admin
    world.m["org1_admin2"] = world.sandbox.member("Org1MSP", "admin-b", node_ou="admin")
    yield world
    world.sandbox.close()


def propose(w: World, actions: str = AUDIT) -> dict[str, object]:
    return dict(w.m["org_admin"].submit("ProposeMinorGuardian", ALICE, GWEN, actions, "", FAR))


def test_two_other_hospitals_make_it_effective_and_only_then(w: World) -> None:
    gwen = w.m["guardian"]
    entry = propose(w)
    assert (entry["state"], entry["kind"], entry["registering_msp"]) == (
        "proposed",
        "minor",
        "Org1MSP",
    )
    not_yet = f"identity {GWEN} is not a guardian of {ALICE}"
    assert fails_without_change(w, gwen, "LogAuditRead", ALICE) == not_yet
    assert fails_without_change(w, gwen, "RevokeAccess", w.grants["grantee"]) == (
        f"identity {GWEN} may not revoke grant {w.grants['grantee']}"
    )
    one = w.m["admin2"].submit("ApproveMinorGuardian", ALICE, GWEN)
    assert (one["state"], [a["msp_id"] for a in one["approvals"]]) == ("proposed", ["Org2MSP"])
    assert fails_without_change(w, gwen, "LogAuditRead", ALICE) == not_yet
    two = w.m["admin3"].submit("ApproveMinorGuardian", ALICE, GWEN)
    assert (two["state"], two["activated_at"]) == ("active", w.clock.seconds)
    # Now the guardian acts within the limits: it revokes and reads the trail, not grants.
    gwen.submit("RevokeAccess", w.grants["grantee"])
    assert w.m["grantee"].submit("RequestAccess", "r-1")["decision"] == "deny"
    read = gwen.submit("LogAuditRead", ALICE)
    trail = gwen.evaluate("GetAuditTrail", "patient", ALICE, "100", "", read["read_id"])
    actions = [(e["action"], e["actor"]) for e in trail["entries"][-8:]]
    assert actions == [
        ("ProposeMinorGuardian", "Org1MSP/admin"),
        ("ApproveMinorGuardian", "Org2MSP/admin2"),
        ("ApproveMinorGuardian", "Org3MSP/admin3"),
        ("MinorGuardianActive", "Org3MSP/admin3"),
        ("RevokeAccess", GWEN),
        ("RequestAccess", "Org1MSP/dave"),
        ("AccessDecision", "Org1MSP/dave"),
        ("AuditRead", GWEN),
    ]
    assert trail["entries"][-1]["detail"]["on_behalf_of"] == ALICE
    assert fails_without_change(w, w.m["admin2"], "ApproveMinorGuardian", ALICE, GWEN) == (
        f"the guardianship of {GWEN} for {ALICE} is already active"
    )
    # The patient, once able to act, ends it like any guardianship.
    w.m["owner"].submit("RemoveGuardian", GWEN)
    assert fails_without_change(w, gwen, "LogAuditRead", ALICE) == not_yet


def test_the_proposing_hospital_and_repeated_approvals_do_not_count(w: World) -> None:
    propose(w)
    assert fails_without_change(w, w.m["org1_admin2"], "ApproveMinorGuardian", ALICE, GWEN) == (
        f"hospital Org1MSP proposed the guardianship of {GWEN} for {ALICE}; admins of other "
        "hospitals approve it"
    )
    w.m["admin2"].submit("ApproveMinorGuardian", ALICE, GWEN)
    again = w.sandbox.member("Org2MSP", "admin2b", node_ou="admin")
    assert fails_without_change(w, again, "ApproveMinorGuardian", ALICE, GWEN) == (
        f"hospital Org2MSP already approved the guardianship of {GWEN} for {ALICE}"
    )
    assert w.m["auditor"].evaluate("GetGuardian", ALICE, GWEN)["state"] == "proposed"
    assert fails_without_change(
        w, w.m["org_admin"], "ProposeMinorGuardian", ALICE, GWEN, AUDIT, "", FAR
    ) == (
        f"a guardianship of {GWEN} for {ALICE} is already proposed; admins of other "
        "hospitals approve it with ApproveMinorGuardian"
    )


def test_a_lapsed_proposal_is_void_and_can_be_proposed_again(w: World) -> None:
    entry = propose(w)
    w.m["admin2"].submit("ApproveMinorGuardian", ALICE, GWEN)
    w.clock.advance(7 * 24 * 3600 + 1)
    assert fails_without_change(w, w.m["admin3"], "ApproveMinorGuardian", ALICE, GWEN) == (
        f"the proposed guardianship of {GWEN} for {ALICE} expired at "
        f"{entry['proposal_expires_at']}; propose it again"
    )
    fresh = propose(w)
    assert fresh["approvals"] == []  # the old approval does not carry over
    w.m["admin3"].submit("ApproveMinorGuardian", ALICE, GWEN)
    assert w.m["admin2"].submit("ApproveMinorGuardian", ALICE, GWEN)["state"] == "active"


def test_proposals_are_checked(w: World) -> None:
    admin, admin2 = w.m["org_admin"], w.m["admin2"]
    args = (GWEN, AUDIT, "", FAR)
    assert fails_without_change(w, admin2, "ProposeMinorGuardian", ALICE, *args) == (
        f"identity Org2MSP/admin2 is not an admin of Org1MSP, which registered {ALICE}"
    )
    assert fails_without_change(w, w.m["owner"], "ProposeMinorGuardian", ALICE, *args) == (
        f"identity {ALICE} has role patient; this needs role admin"
    )
    assert fails_without_change(w, admin, "ProposeMinorGuardian", "Org1MSP/dave", *args) == (
        "identity Org1MSP/dave has role clinician, not patient"
    )
    assert fails_without_change(
        w, admin, "ProposeMinorGuardian", ALICE, "Org1MSP/dave", AUDIT, "", FAR
    ) == ("identity Org1MSP/dave has role clinician, not guardian")
    assert fails_without_change(
        w, admin, "ProposeMinorGuardian", ALICE, GWEN, '["read"]', "", FAR
    ) == ("action 'read' is not one of audit, grant, revoke")
    assert fails_without_change(w, admin, "ApproveMinorGuardian", ALICE, GWEN) == (
        f"no guardianship of {GWEN} for {ALICE} was proposed"
    )
    w.m["owner"].submit("RegisterGuardian", GWEN, ALL, "", FAR)
    assert fails_without_change(w, admin, "ProposeMinorGuardian", ALICE, *args) == (
        f"identity {GWEN} is already a guardian of {ALICE}"
    )
    # A patient-made guardianship is not a proposal anyone approves.
    assert fails_without_change(w, admin2, "ApproveMinorGuardian", ALICE, GWEN) == (
        f"no guardianship of {GWEN} for {ALICE} was proposed"
    )


def test_fewer_than_two_other_hospitals_cannot_register_a_minors_guardian(
    tmp_path: Path,
) -> None:
    w = build_world(tmp_path)
    try:
        w.sandbox.member("Org1MSP", "gwen", "guardian")
        assert fails_without_change(
            w, w.m["org_admin"], "ProposeMinorGuardian", ALICE, GWEN, AUDIT, "", FAR
        ) == (
            "a minor's guardian needs approvals by admins of 2 other hospitals; 0 other "
            "hospitals have a registered ca"
        )
    finally:
        w.sandbox.close()
