"""Guardians on chain: a patient registers a member with role guardian, who grants (forwards
the patient's grant to it), revokes and reads the audit trail for the patient within the
registration's limits; each change is logged with both identities."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaincode_world import FAR, PROXY, T0, World, build_world, fails_without_change

from ehrshare.ledger.sandbox import Member

ALICE, GWEN, ZED = "Org1MSP/alice", "Org1MSP/gwen", "Org2MSP/zed"
ALL = json.dumps(["audit", "grant", "revoke"])


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = build_world(tmp_path)
    world.m["guardian"] = world.sandbox.member("Org1MSP", "gwen", "guardian")
    yield world
    world.sandbox.close()


def delegate(w: World) -> str:
    """The patient's grant to the guardian that the guardian forwards from."""
    g = w.m["owner"].submit("GrantAccess", "lab", GWEN, FAR, "2", "", "", PROXY)
    return str(g["grant_id"])


def forward(gwen: Member, parent: str, grantee: str = ZED) -> dict[str, object]:
    return dict(gwen.submit("GrantAccess", "lab", grantee, FAR, "0", "", parent, PROXY))


def test_guardian_grants_revokes_and_audits_within_its_limits(w: World) -> None:
    alice, gwen = w.m["owner"], w.m["guardian"]
    parent = delegate(w)
    entry = alice.submit("RegisterGuardian", GWEN, ALL, json.dumps(["lab"]), FAR)
    assert (entry["actions"], entry["types"], entry["state"]) == (
        ["audit", "grant", "revoke"],
        ["lab"],
        "active",
    )
    g = forward(gwen, parent)
    assert (g["owner"], g["grantor"], g["grantee"]) == (ALICE, GWEN, ZED)
    assert w.m["other_hospital_clinician"].submit("RequestAccess", "r-1")["decision"] == "allow"
    gwen.submit("RevokeAccess", w.grants["grantee"])  # a grant alice made herself
    assert w.m["grantee"].submit("RequestAccess", "r-1")["decision"] == "deny"
    read = gwen.submit("LogAuditRead", ALICE)
    trail = gwen.evaluate("GetAuditTrail", "patient", ALICE, "100", "", read["read_id"])
    by_gwen = [
        (e["action"], e["actor"], e["detail"].get("on_behalf_of"))
        for e in trail["entries"]
        if e["actor"] == GWEN
    ]
    assert by_gwen == [
        ("GrantAccess", GWEN, ALICE),
        ("RevokeAccess", GWEN, ALICE),
        ("AuditRead", GWEN, ALICE),
    ]
    assert gwen.evaluate("GetGuardian", ALICE, GWEN)["expiry"] == int(FAR)


def test_guardian_is_refused_beyond_its_limits(w: World) -> None:
    alice, gwen = w.m["owner"], w.m["guardian"]
    parent = delegate(w)
    alice.submit("RegisterGuardian", GWEN, json.dumps(["audit"]), "", FAR)
    prefix = f"the guardianship of {GWEN} for {ALICE}"
    assert fails_without_change(
        w, gwen, "GrantAccess", "lab", ZED, FAR, "0", "", parent, PROXY
    ) == (f"{prefix} does not allow grant")
    assert fails_without_change(w, gwen, "RevokeAccess", w.grants["grantee"]) == (
        f"{prefix} does not allow revoke"
    )
    alice.submit("RegisterGuardian", GWEN, json.dumps(["revoke"]), json.dumps(["imaging"]), FAR)
    assert fails_without_change(w, gwen, "RevokeAccess", w.grants["grantee"]) == (
        f"{prefix} does not cover type lab"
    )
    with pytest.raises(Exception, match=f"{prefix} does not allow audit"):
        gwen.evaluate("GetAuditTrail", "patient", ALICE, "", "")
    assert fails_without_change(w, gwen, "LogAuditRead", ALICE) == f"{prefix} does not allow audit"
    # Expiry: the guardianship ends at its stated time.
    alice.submit("RegisterGuardian", GWEN, ALL, "", str(w.clock.seconds + 50))
    w.clock.advance(60)
    assert fails_without_change(w, gwen, "RevokeAccess", w.grants["grantee"]) == (
        f"{prefix} expired at {w.clock.seconds - 10}"
    )
    # Removed: the guardian is an ordinary member again.
    alice.submit("RegisterGuardian", GWEN, ALL, "", FAR)
    alice.submit("RemoveGuardian", GWEN)
    assert fails_without_change(w, gwen, "RevokeAccess", w.grants["grantee"]) == (
        f"identity {GWEN} may not revoke grant {w.grants['grantee']}"
    )
    assert fails_without_change(
        w, gwen, "GrantAccess", "lab", ZED, FAR, "0", "", parent, PROXY
    ) == (f"identity {GWEN} is not a guardian of {ALICE}")
    with pytest.raises(Exception, match=f"identity {GWEN} may not read the audit trail"):
        gwen.evaluate("GetAuditTrail", "patient", ALICE, "", "")


def test_registration_is_checked(w: World) -> None:
    alice = w.m["owner"]
    assert fails_without_change(w, alice, "RegisterGuardian", "Org1MSP/dave", ALL, "", FAR) == (
        "identity Org1MSP/dave has role clinician, not guardian"
    )
    assert fails_without_change(w, alice, "RegisterGuardian", GWEN, '["read"]', "", FAR) == (
        "action 'read' is not one of audit, grant, revoke"
    )
    assert fails_without_change(w, alice, "RegisterGuardian", GWEN, "[]", "", FAR) == (
        "a guardian needs at least one action"
    )
    assert fails_without_change(w, alice, "RegisterGuardian", GWEN, ALL, "", str(T0)) == (
        f"expiry {T0} is not after the transaction time {w.clock.seconds}"
    )
    assert fails_without_change(w, w.m["grantee"], "RegisterGuardian", GWEN, ALL, "", FAR) == (
        "identity Org1MSP/dave has role clinician; this needs role patient"
    )
    assert fails_without_change(w, alice, "RemoveGuardian", GWEN) == (
        f"identity {GWEN} is not a guardian of {ALICE}"
    )
    # A guardian of carol is nobody's guardian for alice.
    w.m["other_patient"].submit("RegisterGuardian", GWEN, ALL, "", FAR)
    assert fails_without_change(w, w.m["guardian"], "RevokeAccess", w.grants["grantee"]) == (
        f"identity {GWEN} may not revoke grant {w.grants['grantee']}"
    )
