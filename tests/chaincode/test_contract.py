"""Behaviour of the contract's functions: records and versions, grants and forwarding, access at a
time, the proxy's approval check, the DKG board, argument errors and determinism."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from chaincode_world import (
    ALICE_LAB_KEY,
    CAPSULE,
    FAR,
    PROXY,
    SHA,
    T0,
    World,
    endorse_error,
    fails_without_change,
    type_key,
)

from ehrshare.ledger.envelope import new_proposal, sign_proposal

ALICE = "Org1MSP/alice"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("r-1", ALICE, "lab", "bafyrecord0001", SHA, CAPSULE, "1"), "record r-1 already exists"),
        (
            ("r 2", ALICE, "lab", "bafyrecord0001", SHA, CAPSULE, "1"),
            "record id 'r 2' is invalid: use 1-64 letters, digits, '.', '_' or '-'",
        ),
        (
            ("r-2", "Org1MSP/nobody", "lab", "bafyrecord0001", SHA, CAPSULE, "1"),
            "patient Org1MSP/nobody is not registered",
        ),
        (
            ("r-2", "Org1MSP/dave", "lab", "bafyrecord0001", SHA, CAPSULE, "1"),
            "identity Org1MSP/dave is not a patient",
        ),
        (
            ("r-2", "alice", "lab", "bafyrecord0001", SHA, CAPSULE, "1"),
            "owner 'alice' is not of the form <msp id>/<enrollment id>",
        ),
        (
            ("r-2", ALICE, "lab", "bafy", SHA, CAPSULE, "1"),
            "cid 'bafy' is not a content identifier",
        ),
        (
            ("r-2", ALICE, "lab", "bafyrecord0001", "XYZ", CAPSULE, "1"),
            "sha256 must be 64 lower-case hex digits",
        ),
        (("r-2", ALICE, "lab", "bafyrecord0001", SHA, "***", "1"), "capsule is not valid base64"),
        (
            (
                "r-2",
                ALICE,
                "lab",
                "bafyrecord0001",
                SHA,
                base64.b64encode(b"x" * 70000).decode(),
                "1",
            ),
            "capsule is 70000 bytes; the limit is 65536",
        ),
        (
            ("r-2", ALICE, "lab", "bafyrecord0001", SHA, CAPSULE, "0"),
            "format version 0 is out of range [1, 255]",
        ),
        (
            ("r-2", ALICE, "lab", "bafyrecord0001", SHA, CAPSULE, "1.5"),
            "format version '1.5' is not an integer",
        ),
        (
            ("r-2", ALICE, "lab type", "bafyrecord0001", SHA, CAPSULE, "1"),
            "record type 'lab type' is invalid: use 1-64 letters, digits, '.', '_', ':' or '-'",
        ),
    ],
)
def test_register_record_rejects_bad_arguments_and_changes_nothing(
    world: World, args: tuple[str, ...], message: str
) -> None:
    assert fails_without_change(world, world.m["grantee"], "RegisterRecord", *args) == message


def test_clinician_of_another_hospital_creates_for_patient_and_is_the_creator(
    fresh_world: World,
) -> None:
    zed = fresh_world.m["other_hospital_clinician"]
    rec = zed.submit("RegisterRecord", *fresh_world.record_args("r-zed"))
    assert rec["creator"] == "Org2MSP/zed" and rec["creator_msp"] == "Org2MSP"
    assert rec["owner"] == ALICE and rec["version"] == 1
    # The creator may read and amend what it created, without any grant.
    assert zed.evaluate("GetRecord", "r-zed")["cid"] == "bafyrecord0001"
    assert zed.submit("AmendRecord", "r-zed", "bafyrecord0002", SHA, CAPSULE, "1")["version"] == 2


def test_amended_record_keeps_every_version(fresh_world: World) -> None:
    alice = fresh_world.m["owner"]
    alice.submit("AmendRecord", "r-1", "bafyrecord0002", "1" * 64, CAPSULE, "2")
    alice.submit("AmendRecord", "r-1", "bafyrecord0003", "2" * 64, CAPSULE, "2")
    assert alice.evaluate("GetRecord", "r-1")["version"] == 3
    assert alice.evaluate("GetRecord", "r-1", "1")["cid"] == "bafyrecord0001"
    history = alice.evaluate("GetRecordHistory", "r-1")
    assert [(h["version"], h["cid"]) for h in history] == [
        (1, "bafyrecord0001"),
        (2, "bafyrecord0002"),
        (3, "bafyrecord0003"),
    ]
    assert endorse_error(alice, "GetRecord", "r-1", "4") == "version 4 is out of range [1, 3]"
    assert endorse_error(alice, "GetRecord", "r-17") == "record r-17 does not exist"


def test_amend_with_an_expected_version_refuses_a_stale_one(fresh_world: World) -> None:
    alice = fresh_world.m["owner"]
    amend = ("AmendRecord", "r-1", "bafyrecord0002", "1" * 64, CAPSULE, "2")
    assert endorse_error(alice, *amend, "", "2") == "record r-1 is at version 1, not 2"
    assert endorse_error(alice, *amend, "", "x") == "record r-1 is at version 1, not x"
    assert alice.evaluate("GetRecord", "r-1")["version"] == 1  # nothing written
    assert alice.submit(*amend, "", "1")["version"] == 2
    assert endorse_error(alice, *amend, "", "1") == "record r-1 is at version 2, not 1"
    assert alice.submit(*amend, "")["version"] == 3  # without one: as before


def test_list_records_paginates_in_key_order(fresh_world: World) -> None:
    alice = fresh_world.m["owner"]
    for i in range(5):
        alice.submit("RegisterRecord", *fresh_world.record_args(f"r-p{i}"))
    seen: list[str] = []
    bookmark = ""
    pages = 0
    while True:
        page = alice.evaluate("ListRecords", ALICE, "2", bookmark)
        seen += [r["record_id"] for r in page["records"]]
        pages += 1
        bookmark = page["bookmark"]
        if not bookmark:
            break
    assert seen == sorted(["r-1", "r-p0", "r-p1", "r-p2", "r-p3", "r-p4"])
    assert pages == 3
    carol_key = "\x00ehr.rec~owner\x00Org1MSP/carol\x00"
    assert endorse_error(alice, "ListRecords", ALICE, "2", carol_key) == (
        "bookmark does not belong to this query"
    )
    assert (
        endorse_error(alice, "ListRecords", ALICE, "101")
        == "page size 101 is out of range [1, 100]"
    )


def test_list_record_versions_pages_through_every_version_for_admins_and_auditors(
    fresh_world: World,
) -> None:
    w = fresh_world
    alice, auditor, admin = w.m["owner"], w.m["auditor"], w.m["org_admin"]
    alice.submit("AmendRecord", "r-1", "bafyrecord0002", "1" * 64, CAPSULE, "2")
    for i in range(3):
        alice.submit("RegisterRecord", *w.record_args(f"r-v{i}"))
    seen: list[tuple[str, int, str, str]] = []
    bookmark, pages = "", 0
    while True:
        page = auditor.evaluate("ListRecordVersions", "2", bookmark)
        seen += [(v["record_id"], v["version"], v["cid"], v["sha256"]) for v in page["versions"]]
        pages += 1
        bookmark = page["bookmark"]
        if not bookmark:
            break
    assert pages == 3
    assert seen == [
        ("r-1", 1, "bafyrecord0001", SHA),
        ("r-1", 2, "bafyrecord0002", "1" * 64),
        *[(f"r-v{i}", 1, "bafyrecord0001", SHA) for i in range(3)],
    ]
    assert [v["record_id"] for v in admin.evaluate("ListRecordVersions")["versions"]] == [
        s[0] for s in seen
    ]
    # The origin hospital of every version, the amended one included, is the registrar's.
    assert {v["creator_msp"] for v in admin.evaluate("ListRecordVersions")["versions"]} == {
        "Org1MSP"
    }
    owner_key = "\x00ehr.rec~owner\x00Org1MSP/alice\x00"
    assert endorse_error(auditor, "ListRecordVersions", "2", owner_key) == (
        "bookmark does not belong to this query"
    )
    assert endorse_error(auditor, "ListRecordVersions", "0") == (
        "page size 0 is out of range [1, 100]"
    )
    assert endorse_error(alice, "ListRecordVersions") == (
        "identity Org1MSP/alice has role patient; this needs role admin or auditor"
    )


def _grant_pins(member: Any, page_size: str = "") -> dict[str, tuple[str, list[Any]]]:
    out: dict[str, tuple[str, list[Any]]] = {}
    bookmark = ""
    while True:
        page = member.evaluate("ListGrantPins", page_size, bookmark)
        for g in page["grants"]:  # a grant split across pages: its parts, merged
            recs = [(r["record_id"], r["version"], r["cid"]) for r in g["records"]]
            msp, before = out.get(g["grant_id"], (g["grantee_msp"], []))
            out[g["grant_id"]] = (msp, before + recs)
        bookmark = page["bookmark"]
        if not bookmark:
            return out


def test_list_grant_pins_names_each_valid_grants_hospital_and_latest_versions(
    fresh_world: World,
) -> None:
    w = fresh_world
    alice, dave, zed = w.m["owner"], w.m["grantee"], w.m["other_hospital_clinician"]
    admin, auditor = w.m["org_admin"], w.m["auditor"]
    root = w.grants["grantee"]
    # Revoked and expired grants are left out; the valid one names its grantee's hospital.
    assert _grant_pins(admin) == {root: ("Org1MSP", [("r-1", 1, "bafyrecord0001")])}
    alice.submit("AmendRecord", "r-1", "bafyrecord0002", "1" * 64, CAPSULE, "2", "1")
    alice.submit("RegisterRecord", *w.record_args("r-2"))
    hop = dave.submit("GrantAccess", "lab", zed.ibe_id, FAR, "0", "", root, PROXY)["grant_id"]
    latest = [("r-1", 2, "bafyrecord0002"), ("r-2", 1, "bafyrecord0001")]
    pins = _grant_pins(auditor, "1")  # one record a page, walked to the end
    assert pins == {root: ("Org1MSP", latest), hop: ("Org2MSP", latest)}
    assert _grant_pins(admin) == pins
    # Revoking the root ends the forward below it too.
    alice.submit("RevokeAccess", root)
    assert _grant_pins(admin) == {}
    assert endorse_error(alice, "ListGrantPins") == (
        "identity Org1MSP/alice has role patient; this needs role admin or auditor"
    )
    assert endorse_error(admin, "ListGrantPins", "", "\x00ehr.rec~owner\x00Org1MSP/alice\x00") == (
        "bookmark does not belong to this query"
    )


# --- grants, forwarding, time -------------------------------------------------------------


def test_multi_hop_forwarding_respects_hops_expiry_allow_list_and_revocation(
    fresh_world: World,
) -> None:
    w = fresh_world
    alice, dave, zed = w.m["owner"], w.m["grantee"], w.m["other_hospital_clinician"]
    erin = w.sandbox.member("Org2MSP", "hugo", "clinician")
    root = alice.submit("GrantAccess", "lab", dave.ibe_id, FAR, "2", '["Org2MSP/zed"]', "", PROXY)[
        "grant_id"
    ]
    assert endorse_error(dave, "GrantAccess", "lab", erin.ibe_id, FAR, "1", "", root, PROXY) == (
        f"grant {root} does not allow forwarding to Org2MSP/hugo"
    )
    assert endorse_error(dave, "GrantAccess", "lab", zed.ibe_id, FAR, "2", "", root, PROXY) == (
        f"max hops 2 exceeds the 1 left by grant {root}"
    )
    assert endorse_error(
        dave, "GrantAccess", "lab", zed.ibe_id, str(T0 + 10**8), "1", "", root, PROXY
    ) == (f"expiry {T0 + 10**8} is later than grant {root} allows")
    assert endorse_error(dave, "GrantAccess", "imaging", zed.ibe_id, FAR, "1", "", root, PROXY) == (
        f"grant {root} does not cover type imaging"
    )
    hop1 = dave.submit("GrantAccess", "lab", zed.ibe_id, FAR, "1", "", root, PROXY)
    assert (hop1["owner"], hop1["grantor"], hop1["hop"]) == (ALICE, dave.ibe_id, 1)
    hop2 = zed.submit("GrantAccess", "lab", erin.ibe_id, FAR, "0", "", hop1["grant_id"], PROXY)
    assert hop2["hop"] == 2
    assert endorse_error(
        erin, "GrantAccess", "lab", dave.ibe_id, FAR, "0", "", hop2["grant_id"], PROXY
    ) == (f"grant {hop2['grant_id']} allows no further hops")
    access = erin.submit("RequestAccess", "r-1")
    assert (access["decision"], access["grant_id"], access["hop"]) == (
        "allow",
        hop2["grant_id"],
        2,
    )
    # Revoking the root cuts every grant forwarded below it.
    alice.submit("RevokeAccess", root)
    denied = erin.submit("RequestAccess", "r-1")
    assert (denied["decision"], denied["reason"]) == ("deny", f"grant {root} is revoked")


def test_access_is_decided_at_the_transaction_time(fresh_world: World) -> None:
    w = fresh_world
    alice, zed = w.m["owner"], w.m["other_hospital_clinician"]
    expiry = w.clock.seconds + 50
    g = alice.submit("GrantAccess", "lab", zed.ibe_id, str(expiry), "0", "", "", PROXY)["grant_id"]
    w.clock.advance(48)
    assert zed.submit("RequestAccess", "r-1")["decision"] == "allow"
    w.clock.advance(2)
    denied = zed.submit("RequestAccess", "r-1")
    assert (denied["decision"], denied["reason"]) == ("deny", f"grant {g} expired at {expiry}")
    assert endorse_error(
        alice, "GrantAccess", "lab", zed.ibe_id, str(w.clock.seconds), "0", "", "", PROXY
    ).startswith(f"expiry {w.clock.seconds} is not after the transaction time")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("lab", "Org1MSP/alice", FAR, "0"),
            "identity Org1MSP/alice may not be granted its own records",
        ),
        (("lab", "Org1MSP/ghost", FAR, "0"), "grantee Org1MSP/ghost is not registered"),
        (("lab", "Org1MSP/dave", "-5", "0"), "expiry -5 is out of range [0, 4611686018427387904]"),
        (("lab", "Org1MSP/dave", FAR, "17"), "max hops 17 is out of range [0, 16]"),
        (
            ("lab", "Org1MSP/dave", FAR, "0", "[1.5]"),
            "allowed next grantees contains a floating-point number",
        ),
        (
            ("lab", "Org1MSP/dave", FAR, "0", '{"a": 1}'),
            "allowed next grantees must be a json list of strings",
        ),
        (("lab", "Org1MSP/dave", FAR, "0", "", "g-nope"), "grant g-nope does not exist"),
    ],
)
def test_grant_rejects_bad_arguments(world: World, args: tuple[str, ...], message: str) -> None:
    # Padded to the full argument list with a valid proxy, so each case fails on its own fault.
    full = (*args, *[""] * (6 - len(args)), PROXY)
    assert fails_without_change(world, world.m["owner"], "GrantAccess", *full) == message


def test_grant_takes_the_id_its_grantor_chose(fresh_world: World) -> None:
    # The grantor delivers the re-key under this id before the grant commits (atomic grants).
    w = fresh_world
    alice, zed = w.m["owner"], w.m["other_hospital_clinician"]
    gid = "g-" + "5a" * 16
    args = ("lab", zed.ibe_id, FAR, "0", "", "", PROXY)
    row = alice.submit("GrantAccess", *args, gid)
    assert (row["grant_id"], row["state"]) == (gid, "active")
    assert zed.submit("RequestAccess", "r-1")["grant_id"] == gid
    assert fails_without_change(w, alice, "GrantAccess", *args, gid) == (
        f"grant {gid} already exists"
    )
    for bad in ("g-" + "5A" * 16, "g-" + "5a" * 15, "x-" + "5a" * 16, "g-5a"):
        assert fails_without_change(w, alice, "GrantAccess", *args, bad) == (
            f"grant id {bad!r} is invalid: use 'g-' and 32 lower-case hex digits"
        )
    # Without an id it is derived from the transaction id, as before.
    derived = alice.submit("GrantAccess", *args)
    assert derived["grant_id"] == "g-" + derived["tx_id"][:32]


def test_revoke_twice_and_unknown(fresh_world: World) -> None:
    alice = fresh_world.m["owner"]
    g = fresh_world.grants["revoked_grantee"]
    assert endorse_error(alice, "RevokeAccess", g) == f"grant {g} is already revoked"
    assert endorse_error(alice, "RevokeAccess", "g-nope") == "grant g-nope does not exist"


def test_list_grants_by_owner_and_by_grantee(world: World) -> None:
    alice, dave = world.m["owner"], world.m["grantee"]
    owned = alice.evaluate("ListGrants", ALICE, "owner")["grants"]
    assert sorted(g["grant_id"] for g in owned) == sorted(world.grants.values())
    received = dave.evaluate("ListGrants", dave.ibe_id, "grantee")["grants"]
    assert [g["grant_id"] for g in received] == [world.grants["grantee"]]
    assert (
        endorse_error(dave, "ListGrants", dave.ibe_id, "friend")
        == "side 'friend' is not owner, grantor or grantee"
    )


def test_a_forwarder_lists_the_grants_it_forwarded(fresh_world: World) -> None:
    w = fresh_world
    alice, dave, zed = w.m["owner"], w.m["grantee"], w.m["other_hospital_clinician"]
    fwd = dave.submit("GrantAccess", "lab", zed.ibe_id, FAR, "0", "", w.grants["grantee"], PROXY)
    assert [
        g["grant_id"] for g in dave.evaluate("ListGrants", dave.ibe_id, "grantor")["grants"]
    ] == [fwd["grant_id"]]
    # A patient's own grants are listed by owner, not again by grantor.
    assert alice.evaluate("ListGrants", ALICE, "grantor")["grants"] == []
    assert endorse_error(zed, "ListGrants", dave.ibe_id, "grantor") == (
        f"identity {zed.ibe_id} may not list grants of {dave.ibe_id}"
    )


# --- the proxy's checks ---------------------------------------------------------------------


def test_check_approval_needs_a_committed_allow_that_still_stands(fresh_world: World) -> None:
    w = fresh_world
    proxy, alice, dave, zed = (
        w.m["proxy"],
        w.m["owner"],
        w.m["grantee"],
        w.m["other_hospital_clinician"],
    )
    g = w.grants["grantee"]
    approval = proxy.evaluate("CheckApproval", w.access_id)
    assert approval["access_id"] == w.access_id and approval["decision"] == "allow"
    assert (approval["record_id"], approval["requester"], approval["grant_id"]) == (
        "r-1",
        dave.ibe_id,
        g,
    )
    # The proxy can tell the approved record's capsule from any other.
    assert approval["capsule_sha256"] == hashlib.sha256(base64.b64decode(CAPSULE)).hexdigest()
    assert approval["record_version"] == 1
    # A denied request creates no approval.
    denied = zed.submit("RequestAccess", "r-1")["access_id"]
    assert endorse_error(proxy, "CheckApproval", denied) == (
        f"access {denied} has no committed approval"
    )
    assert endorse_error(proxy, "CheckApproval", "a/b") == (
        "access id 'a/b' is invalid: use 1-64 letters, digits, '.', '_' or '-'"
    )
    entry = proxy.submit("ReportReencryption", w.access_id, "ok")
    assert (entry["action"], entry["outcome"], entry["record_id"]) == (
        "ReportReencryption",
        "ok",
        "r-1",
    )
    alice.submit("RevokeAccess", g)
    assert endorse_error(proxy, "CheckApproval", w.access_id) == f"grant {g} is revoked"
    assert endorse_error(proxy, "ReportReencryption", denied, "ok") == f"access {denied} was denied"
    assert endorse_error(proxy, "ReportReencryption", w.access_id, "maybe") == (
        "outcome 'maybe' is not ok or failed"
    )


def test_concurrent_requests_of_one_record_keep_their_own_approvals(fresh_world: World) -> None:
    w = fresh_world
    proxy, dave = w.m["proxy"], w.m["grantee"]
    first = dave.submit("RequestAccess", "r-1")["access_id"]
    second = dave.submit("RequestAccess", "r-1")["access_id"]
    assert len({first, second, w.access_id}) == 3
    # A later request of the same record by the same member supersedes no earlier approval.
    for access_id in (w.access_id, first, second):
        approval = proxy.evaluate("CheckApproval", access_id)
        assert (approval["access_id"], approval["requester"]) == (access_id, dave.ibe_id)


# --- identities and type keys ----------------------------------------------------------------


def test_roles_come_from_the_certificate_or_an_org_admin(fresh_world: World) -> None:
    sb = fresh_world.sandbox
    plain = sb.member("Org1MSP", "nora", register=False)
    assert endorse_error(plain, "RegisterIdentity") == (
        "certificate of Org1MSP/nora carries no ehrshare.role attribute; an org admin must "
        "register it"
    )
    assert endorse_error(plain, "RegisterIdentity", "clinician") == (
        "RegisterIdentity takes 0 arguments, got 1"
    )
    admin = fresh_world.m["org_admin"]
    cert = plain.identity.credentials.decode()
    assert endorse_error(admin, "RegisterMember", cert, "boss") == (
        "role 'boss' is not one of patient, clinician, admin, kgc, proxy, auditor, guardian"
    )
    foreign, _ = sb.cas["Org2MSP"].issue("yan")
    assert endorse_error(admin, "RegisterMember", foreign.credentials.decode(), "clinician") == (
        "certificate of yan was not issued by the ca of Org1MSP"
    )
    reg = admin.submit("RegisterMember", cert, "clinician")
    assert (reg["ibe_id"], reg["role"], reg["registered_by"]) == (
        "Org1MSP/nora",
        "clinician",
        "Org1MSP/admin",
    )
    # Now nora acts as a clinician.
    assert plain.submit("RegisterRecord", *fresh_world.record_args("r-nora"))["creator"] == (
        "Org1MSP/nora"
    )
    assert endorse_error(admin, "RegisterMember", cert, "clinician") == (
        "identity Org1MSP/nora is already registered"
    )


def test_reenrolled_certificate_keeps_the_identity_and_a_new_subject_cannot_take_it(
    fresh_world: World,
) -> None:
    sb = fresh_world.sandbox
    # Same subject and issuer, new key: the same client (Fabric's x509::subject::issuer id).
    again = sb.connect(*sb.cas["Org1MSP"].issue("alice", role="patient"))
    assert again.evaluate("ListRecords", ALICE)["records"][0]["record_id"] == "r-1"
    # A different subject with the same common name cannot take alice's IBE identity.
    other = sb.member("Org1MSP", "alice", "patient", node_ou="peer", register=False)
    assert endorse_error(other, "RegisterIdentity") == "ibe identity Org1MSP/alice is already taken"


def test_type_keys_are_published_by_their_owner_only(world: World) -> None:
    dave, alice = world.m["grantee"], world.m["owner"]
    endorsed = dave.contract.new_proposal(
        "PublishTypeKey", "lab", type_key(dave.ibe_id), "1"
    ).endorse()
    assert json.loads(endorsed.result)["ibe_id"] == dave.ibe_id
    assert alice.evaluate("GetTypeKey", ALICE, "lab")["key"] == ALICE_LAB_KEY
    assert (
        endorse_error(alice, "GetTypeKey", dave.ibe_id, "lab")
        == "type key lab of Org1MSP/dave does not exist"
    )
    assert endorse_error(alice, "PublishTypeKey", "lab", "", "1") == "type key is empty"


# --- DKG board: tests/chaincode/test_dkg_session.py ----------------------------------------


# --- dispatcher and determinism ----------------------------------------------------------------


def test_dispatcher_errors(world: World) -> None:
    alice = world.m["owner"]
    assert endorse_error(alice, "Nope") == "function Nope does not exist"
    assert endorse_error(alice, "GetRecord") == "GetRecord takes 1 to 2 arguments, got 0"
    assert (
        endorse_error(alice, "GetRecord", b"\xff") == "argument 1 of GetRecord is not valid utf-8"
    )


def test_simulation_is_deterministic(world: World) -> None:
    """Two endorsements of the same signed proposal produce identical read/write sets."""
    dave = world.m["grantee"]
    proposal = new_proposal(
        dave.identity,
        channel="ehrshare",
        chaincode="ehrshare",
        function="RequestAccess",
        args=(b"r-1",),
        timestamp_ns=world.clock(),  # within the ledger's clock-skew limit
    )
    signed = sign_proposal(proposal, dave.signer)
    a = world.sandbox.ledger.endorse(signed)
    b = world.sandbox.ledger.endorse(signed)
    assert (a.writes, a.result, a.event, a.reads) == (b.writes, b.result, b.event, b.reads)
    assert a.writes and json.loads(a.result)["decision"] == "allow"
