"""A guardian's read of the patient's audit trail is logged first: without a logged read of its
own nothing is served, and under one it sees nothing written after that read's own entry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaincode_world import FAR, World, build_world, fails_without_change

ALICE, GWEN = "Org1MSP/alice", "Org1MSP/gwen"


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = build_world(tmp_path)
    world.m["guardian"] = world.sandbox.member("Org1MSP", "gwen", "guardian")
    world.m["guardian2"] = world.sandbox.member("Org1MSP", "gus", "guardian")
    alice = world.m["owner"]
    for who in (GWEN, "Org1MSP/gus"):
        alice.submit("RegisterGuardian", who, json.dumps(["audit"]), "", FAR)
    yield world
    world.sandbox.close()


def refused(w: World, role: str, function: str, *args: str) -> str:
    with pytest.raises(Exception) as info:
        w.m[role].evaluate(function, *args)
    return str(getattr(info.value, "message", info.value))


def test_an_unlogged_read_is_refused(w: World) -> None:
    need = (
        f"identity {GWEN} reads the audit trail of {ALICE} as a guardian: log the read first "
        "(LogAuditRead) and name its read id"
    )
    assert refused(w, "guardian", "GetAuditTrail", "patient", ALICE, "", "") == need
    assert refused(w, "guardian", "GetAuditTrail", "record", "r-1", "", "") == need
    assert refused(w, "guardian", "VerifyAuditTrail", ALICE) == need


def test_a_logged_read_names_both_identities_and_bounds_what_is_shown(w: World) -> None:
    gwen = w.m["guardian"]
    read = gwen.submit("LogAuditRead", ALICE)
    rid = read["read_id"]
    trail = gwen.evaluate("GetAuditTrail", "patient", ALICE, "100", "", rid)["entries"]
    last = trail[-1]
    assert (last["action"], last["actor"], last["detail"]) == (
        "AuditRead",
        GWEN,
        {"on_behalf_of": ALICE, "read_id": rid},
    )
    assert last["seq"] == read["upto_seq"]
    assert gwen.evaluate("VerifyAuditTrail", ALICE, rid)["valid"] is True
    # Later entries are not shown under the old read, on any page or through the record index.
    w.m["owner"].submit("GrantAccess", "lab", "Org2MSP/zed", FAR, "0", "", "", "Org1MSP/pete")
    w.m["grantee"].submit("RequestAccess", "r-1")
    again = gwen.evaluate("GetAuditTrail", "patient", ALICE, "100", "", rid)["entries"]
    assert again == trail
    paged = gwen.evaluate("GetAuditTrail", "patient", ALICE, "5", "", rid)
    seen, bookmark = list(paged["entries"]), paged["bookmark"]
    while bookmark:
        page = gwen.evaluate("GetAuditTrail", "patient", ALICE, "5", bookmark, rid)
        seen += page["entries"]
        bookmark = page["bookmark"]
    assert seen == trail
    by_record = gwen.evaluate("GetAuditTrail", "record", "r-1", "100", "", rid)["entries"]
    assert by_record and max(e["seq"] for e in by_record) <= read["upto_seq"]
    owner_view = w.m["owner"].evaluate("GetAuditTrail", "record", "r-1", "100", "")["entries"]
    assert len(owner_view) == len(by_record) + 2  # the RequestAccess after the read, decided
    assert gwen.evaluate("VerifyAuditTrail", ALICE, rid)["length"] == read["upto_seq"]
    # A new logged read shows the rest.
    rid2 = gwen.submit("LogAuditRead", ALICE)["read_id"]
    fresh = gwen.evaluate("GetAuditTrail", "patient", ALICE, "100", "", rid2)["entries"]
    assert [e["action"] for e in fresh[len(trail) :]] == [
        "GrantAccess",
        "RequestAccess",
        "AccessDecision",
        "AuditRead",
    ]


def test_a_read_id_serves_only_its_guardian_and_patient(w: World) -> None:
    rid = w.m["guardian"].submit("LogAuditRead", ALICE)["read_id"]
    assert refused(w, "guardian2", "GetAuditTrail", "patient", ALICE, "", "", rid) == (
        f"read {rid} is not a logged read of {ALICE} by Org1MSP/gus"
    )
    w.m["other_patient"].submit("RegisterGuardian", GWEN, json.dumps(["audit"]), "", FAR)
    carol = "Org1MSP/carol"
    assert refused(w, "guardian", "GetAuditTrail", "patient", carol, "", "", rid) == (
        f"read {rid} is not a logged read of {carol} by {GWEN}"
    )
    assert refused(w, "guardian", "VerifyAuditTrail", ALICE, "ar-0") == (
        f"read ar-0 is not a logged read of {ALICE} by {GWEN}"
    )
    # The patient and auditors read as before, with no read id.
    assert w.m["owner"].evaluate("GetAuditTrail", "patient", ALICE, "", "")["entries"]
    assert w.m["auditor"].evaluate("VerifyAuditTrail", ALICE)["valid"] is True


def test_logging_a_read_needs_an_audit_guardianship(w: World) -> None:
    w.m["owner"].submit("RegisterGuardian", GWEN, json.dumps(["revoke"]), "", FAR)
    assert fails_without_change(w, w.m["guardian"], "LogAuditRead", ALICE) == (
        f"the guardianship of {GWEN} for {ALICE} does not allow audit"
    )
    assert fails_without_change(w, w.m["grantee"], "LogAuditRead", ALICE) == (
        "identity Org1MSP/dave has role clinician; this needs role guardian"
    )
    assert fails_without_change(w, w.m["guardian"], "LogAuditRead", "Org1MSP/carol") == (
        f"identity {GWEN} is not a guardian of Org1MSP/carol"
    )
