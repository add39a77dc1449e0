"""Break-glass emergency access on chain: a patient's policy and pre-grants to its emergency
identity, a clinician's request, hospitals' approvals, reads logged with purpose emergency,
expiry, and the KGC nodes' check (CheckEmergencyExtraction)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaincode_world import (
    FAR,
    PROXY,
    T0,
    World,
    build_world,
    endorse_error,
    fails_without_change,
    type_key,
)

from ehrshare.ledger.sandbox import Member

ALICE = "Org1MSP/alice"
EMERGENCY = f"{ALICE}~emergency-1"
DAVE = "Org1MSP/dave"


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = build_world(tmp_path, organizations=("Org1MSP", "Org2MSP", "Org3MSP"))
    for msp, name in (("Org2MSP", "admin2"), ("Org3MSP", "admin3")):
        admin = world.sandbox.member(msp, name, node_ou="admin")
        admin.submit("RegisterOrgCA", world.sandbox.cas[msp].certificate_pem.decode())
        world.m[name] = admin
    world.m["org1_admin2"] = world.sandbox.member("Org1MSP", "admin-b", node_ou="admin")
    yield world
    world.sandbox.close()


def set_policy(
    w: World, *, approvals: int = 2, distinct: bool = True, duration: int = 3600
) -> dict[str, Any]:
    keys = json.dumps({"lab": type_key(EMERGENCY, "lab")})
    policy = w.m["owner"].submit(
        "SetEmergencyPolicy",
        '["lab"]',
        str(duration),
        str(approvals),
        "true" if distinct else "false",
        keys,
        "",
    )
    return dict(policy)


def pregrant(w: World) -> str:
    g = w.m["owner"].submit("GrantAccess", "lab", EMERGENCY, FAR, "0", "", "", PROXY)
    return str(g["grant_id"])


def request(w: World, who: str = "grantee") -> str:
    r = w.m[who].submit("RequestEmergency", ALICE, "unconscious in the emergency room")
    return str(r["request_id"])


def read(w: World, grant_id: str, who: str = "grantee") -> dict[str, Any]:
    return dict(w.m[who].submit("RequestAccess", "r-1", grant_id))


def trail(w: World) -> list[dict[str, Any]]:
    page = w.m["owner"].evaluate("GetAuditTrail", "patient", ALICE, "100", "")
    return list(page["entries"])


def test_short_by_one_approval_is_denied_and_logged_then_enough_reads(w: World) -> None:
    set_policy(w)
    grant_id = pregrant(w)
    rid = request(w)
    w.m["admin2"].submit("ApproveEmergency", rid)
    denied = read(w, grant_id)
    assert (denied["decision"], denied["reason"], denied["purpose"]) == (
        "deny",
        f"emergency {rid} has 1 of the 2 approvals it needs",
        "emergency",
    )
    assert endorse_error(w.m["kgc"], "CheckEmergencyExtraction", EMERGENCY, DAVE) == (
        f"emergency {rid} has 1 of the 2 approvals it needs"
    )
    done = w.m["admin3"].submit("ApproveEmergency", rid)
    assert done["status"] == "approved"
    assert done["expires_at"] == done["approved_at"] + 3600
    assert done["review"] == {"state": "pending"}
    allowed = read(w, grant_id)
    assert (allowed["decision"], allowed["purpose"], allowed["emergency_id"]) == (
        "allow",
        "emergency",
        rid,
    )
    assert allowed["chain"] == [{"grant_id": grant_id, "proxy": PROXY}]
    # The proxy sees the approval (its grant chain names it) while the emergency is in force.
    assert w.m["proxy"].evaluate("CheckApproval", allowed["access_id"])["requester"] == DAVE
    ok = w.m["kgc"].evaluate("CheckEmergencyExtraction", EMERGENCY, DAVE)
    assert (ok["request_id"], ok["owner"]) == (rid, False)
    decisions = [
        (e["outcome"], e["detail"].get("purpose"))
        for e in trail(w)
        if e["action"] == "AccessDecision" and e["detail"]["requester"] == DAVE
    ]
    assert decisions[-2:] == [("deny", "emergency"), ("allow", "emergency")]
    # The patient is told: the approving transaction's event carries EmergencyApproved.
    actions = [e["action"] for e in trail(w)]
    assert actions.count("RequestEmergency") == 1 and actions.count("EmergencyApproved") == 1


def test_emergency_expires_and_its_reads_and_extraction_stop(w: World) -> None:
    set_policy(w, duration=600)
    grant_id = pregrant(w)
    rid = request(w)
    w.m["admin2"].submit("ApproveEmergency", rid)
    approved = w.m["admin3"].submit("ApproveEmergency", rid)
    access = read(w, grant_id)
    assert access["decision"] == "allow"
    w.clock.advance(601)
    expired = read(w, grant_id)
    assert (expired["decision"], expired["reason"]) == (
        "deny",
        f"emergency {rid} expired at {approved['expires_at']}",
    )
    assert endorse_error(w.m["proxy"], "CheckApproval", access["access_id"]) == (
        f"emergency {rid} has expired"
    )
    assert endorse_error(w.m["kgc"], "CheckEmergencyExtraction", EMERGENCY, DAVE) == (
        f"emergency {rid} expired at {approved['expires_at']}"
    )
    assert endorse_error(w.m["grantee"], "ListEmergencyRecords", rid, "", "") == (
        f"emergency {rid} expired at {approved['expires_at']}"
    )


def test_own_hospital_approval_is_refused_when_the_policy_says_distinct_hospitals(
    w: World,
) -> None:
    set_policy(w)
    rid = request(w)  # dave is of Org1MSP
    text = (
        f"hospital Org1MSP is the requester's; the emergency policy of {ALICE} needs approvals "
        "from other hospitals"
    )
    assert fails_without_change(w, w.m["org_admin"], "ApproveEmergency", rid) == text
    w.m["admin2"].submit("ApproveEmergency", rid)
    assert fails_without_change(w, w.m["admin2"], "ApproveEmergency", rid) == (
        f"hospital Org2MSP already approved emergency {rid}"
    )


def test_without_distinct_hospitals_two_admins_of_one_hospital_suffice(w: World) -> None:
    set_policy(w, distinct=False)
    grant_id = pregrant(w)
    rid = request(w)
    w.m["org_admin"].submit("ApproveEmergency", rid)
    assert fails_without_change(w, w.m["org_admin"], "ApproveEmergency", rid) == (
        f"identity Org1MSP/admin already approved emergency {rid}"
    )
    w.m["org1_admin2"].submit("ApproveEmergency", rid)
    assert read(w, grant_id)["decision"] == "allow"


def test_only_the_requester_reads_under_the_emergency(w: World) -> None:
    set_policy(w)
    grant_id = pregrant(w)
    rid = request(w)
    for admin in ("admin2", "admin3"):
        w.m[admin].submit("ApproveEmergency", rid)
    other = read(w, grant_id, "other_hospital_clinician")
    assert (other["decision"], other["reason"]) == (
        "deny",
        f"identity Org2MSP/zed has no emergency request for {ALICE} covering grant {grant_id}",
    )
    assert endorse_error(w.m["kgc"], "CheckEmergencyExtraction", EMERGENCY, "Org2MSP/zed") == (
        f"identity Org2MSP/zed has no emergency request for {ALICE} ({EMERGENCY})"
    )
    assert endorse_error(w.m["other_hospital_clinician"], "ListEmergencyRecords", rid) == (
        f"identity Org2MSP/zed is not the requester of emergency {rid}"
    )
    records = w.m["grantee"].evaluate("ListEmergencyRecords", rid, "", "")
    assert [r["record_id"] for r in records["records"]] == ["r-1"]
    assert records["grants"] == {"lab": grant_id}
    # The patient may extract its own emergency identity's key (to make its type keys).
    own = w.m["kgc"].evaluate("CheckEmergencyExtraction", EMERGENCY, ALICE)
    assert own["owner"] is True


def test_policy_default_and_bad_input(w: World) -> None:
    default = w.m["grantee"].evaluate("GetEmergencyPolicy", ALICE)
    assert (default["default"], default["types"], default["approvals"]) == (True, [], 2)
    assert default["distinct_hospitals"] is True and default["duration_s"] == 86400
    alice = w.m["owner"]
    # No policy: the emergency identity is no grantee yet.
    assert fails_without_change(
        w, alice, "GrantAccess", "lab", EMERGENCY, FAR, "0", "", "", PROXY
    ) == (f"grantee {EMERGENCY} is not registered")
    good = json.dumps({"lab": type_key(EMERGENCY, "lab")})
    wrong_owner = json.dumps({"lab": type_key(ALICE, "lab")})
    cases = [
        (("[]", "60", "2", "true", "{}", ""), "an emergency policy names 1 to 32 types"),
        (('["lab"]', "10", "2", "true", good, ""), "duration 10 is out of range [60, 604800]"),
        (('["lab"]', "60", "0", "true", good, ""), "approvals 0 is out of range [1, 16]"),
        (('["lab"]', "60", "2", "yes", good, ""), "distinct hospitals 'yes' is not true or false"),
        (
            ('["lab", "x-ray"]', "60", "2", "true", good, ""),
            "type keys must be a json object with one key per policy type",
        ),
        (
            ('["lab"]', "60", "2", "true", wrong_owner, ""),
            f"type key lab is not bound to identity {EMERGENCY}",
        ),
    ]
    for args, text in cases:
        assert fails_without_change(w, alice, "SetEmergencyPolicy", *args) == text
    assert fails_without_change(w, w.m["grantee"], "RequestEmergency", ALICE, "") == (
        "reason must be 1 to 500 printable characters"
    )
    assert fails_without_change(w, w.m["grantee"], "RequestEmergency", DAVE, "x") == (
        f"identity {DAVE} is not a patient"
    )
    assert fails_without_change(w, w.m["owner"], "RequestEmergency", ALICE, "x") == (
        f"identity {ALICE} has role patient; this needs role clinician"
    )
    assert fails_without_change(w, w.m["admin2"], "ApproveEmergency", "e-none") == (
        "emergency e-none does not exist"
    )


def test_no_member_may_take_an_emergency_identity_name(w: World) -> None:
    ca = w.sandbox.cas["Org1MSP"]
    identity, signer = ca.issue("alice~emergency-1", role="clinician", now=w.sandbox.now())
    member: Member = w.sandbox.connect(identity, signer)
    assert fails_without_change(w, member, "RegisterIdentity") == (
        f"identity {EMERGENCY} names an emergency identity; no member may be registered so"
    )


def test_patient_reviews_an_approved_emergency_once(w: World) -> None:
    set_policy(w)
    rid = request(w)
    assert fails_without_change(w, w.m["owner"], "ReviewEmergency", rid, "") == (
        f"emergency {rid} was never approved; nothing to review"
    )
    for admin in ("admin2", "admin3"):
        w.m[admin].submit("ApproveEmergency", rid)
    pending = w.m["owner"].evaluate("ListEmergencies", ALICE, "", "")["emergencies"]
    assert [(e["request_id"], e["review"]) for e in pending] == [(rid, {"state": "pending"})]
    assert fails_without_change(w, w.m["other_patient"], "ReviewEmergency", rid, "") == (
        f"identity Org1MSP/carol may not review emergency {rid}"
    )
    done = w.m["owner"].submit("ReviewEmergency", rid, "seen; fine")
    assert done["review"] == {
        "state": "acknowledged",
        "by": ALICE,
        "at": T0 + 1000,
        "note": "seen; fine",
    }
    assert fails_without_change(w, w.m["owner"], "ReviewEmergency", rid, "") == (
        f"emergency {rid} is already reviewed"
    )
    assert endorse_error(w.m["other_patient"], "ListEmergencies", ALICE) == (
        f"identity Org1MSP/carol may not list emergencies of {ALICE}"
    )


def test_a_guardian_allowed_audit_lists_and_reviews_for_the_patient(w: World) -> None:
    gwen = w.sandbox.member("Org1MSP", "gwen", "guardian")
    gus = w.sandbox.member("Org1MSP", "gus", "guardian")
    alice = w.m["owner"]
    alice.submit("RegisterGuardian", gwen.ibe_id, '["audit"]', "", FAR)
    alice.submit("RegisterGuardian", gus.ibe_id, '["revoke"]', "", FAR)
    set_policy(w)
    rid = request(w)
    for admin in ("admin2", "admin3"):
        w.m[admin].submit("ApproveEmergency", rid)
    assert [e["request_id"] for e in gwen.evaluate("ListEmergencies", ALICE)["emergencies"]] == [
        rid
    ]
    assert fails_without_change(w, gus, "ReviewEmergency", rid, "") == (
        f"the guardianship of {gus.ibe_id} for {ALICE} does not allow audit"
    )
    assert endorse_error(gus, "ListEmergencies", ALICE) == (
        f"identity {gus.ibe_id} may not list emergencies of {ALICE}"
    )
    done = gwen.submit("ReviewEmergency", rid, "")
    assert done["review"]["by"] == gwen.ibe_id
    entry = trail(w)[-1]
    assert (entry["action"], entry["actor"], entry["detail"]["on_behalf_of"]) == (
        "ReviewEmergency",
        gwen.ibe_id,
        ALICE,
    )
