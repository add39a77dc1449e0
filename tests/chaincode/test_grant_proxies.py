"""Grants name the proxy that holds their re-key; requesters name the grant they read under; a
proxy checks and reports only approvals whose grant chain names it (one proxy per hospital)."""

from __future__ import annotations

import pytest
from chaincode_world import CAPSULE, FAR, PROXY, SHA, World, endorse_error, fails_without_change

from ehrshare.ledger.sandbox import Member

ALICE = "Org1MSP/alice"
PROXY2 = "Org2MSP/paula"
OUT1 = "1" * 64
OUT2 = "2" * 64


@pytest.fixture
def two_proxies(fresh_world: World) -> tuple[World, Member]:
    """The fresh world plus a second hospital's proxy (Org2MSP/paula)."""
    paula = fresh_world.sandbox.member("Org2MSP", "paula", "proxy")
    return fresh_world, paula


def test_grant_names_its_proxy_and_logs_it(fresh_world: World) -> None:
    w = fresh_world
    grant = w.m["owner"].evaluate("GetGrant", w.grants["grantee"])
    assert grant["proxy"] == PROXY
    trail = w.m["owner"].evaluate("GetAuditTrail", "patient", ALICE)["entries"]
    granted = [e for e in trail if e["action"] == "GrantAccess"]
    assert granted and all(e["detail"]["proxy"] == PROXY for e in granted)


@pytest.mark.parametrize(
    ("proxy", "message"),
    [
        ("Org1MSP/nobody", "proxy Org1MSP/nobody is not registered"),
        ("Org1MSP/dave", "identity Org1MSP/dave is not a proxy"),
        ("Org1MSP/kim", "identity Org1MSP/kim is not a proxy"),
        ("pete", "proxy 'pete' is not of the form <msp id>/<enrollment id>"),
    ],
)
def test_grant_refuses_a_non_proxy(world: World, proxy: str, message: str) -> None:
    args = ("lab", "Org2MSP/zed", FAR, "0", "", "", proxy)
    assert fails_without_change(world, world.m["owner"], "GrantAccess", *args) == message


def test_forward_names_another_hospitals_proxy(two_proxies: tuple[World, Member]) -> None:
    w, paula = two_proxies
    dave, zed = w.m["grantee"], w.m["other_hospital_clinician"]
    fwd = dave.submit("GrantAccess", "lab", zed.ibe_id, FAR, "0", "", w.grants["grantee"], PROXY2)
    access = zed.submit("RequestAccess", "r-1", fwd["grant_id"])
    assert access["decision"] == "allow"
    assert access["chain"] == [
        {"grant_id": w.grants["grantee"], "proxy": PROXY},
        {"grant_id": fwd["grant_id"], "proxy": PROXY2},
    ]
    # Both proxies of the chain may check the approval; no report is there yet.
    for proxy in (w.m["proxy"], paula):
        assert proxy.evaluate("CheckApproval", access["access_id"])["reports"] == []


def test_a_proxy_not_named_by_the_chain_is_refused(two_proxies: tuple[World, Member]) -> None:
    w, paula = two_proxies
    a = w.access_id
    assert (
        endorse_error(paula, "CheckApproval", a) == f"no grant of access {a} names proxy {PROXY2}"
    )
    assert fails_without_change(w, paula, "ReportReencryption", a, "ok") == (
        f"no grant of access {a} names proxy {PROXY2}"
    )
    # An owner's own read has no grant chain: no proxy serves it.
    own = w.m["owner"].submit("RequestAccess", "r-1")["access_id"]
    assert endorse_error(w.m["proxy"], "CheckApproval", own) == (
        f"no grant of access {own} names proxy {PROXY}"
    )
    # An auditor still checks any approval.
    assert w.m["auditor"].evaluate("CheckApproval", a)["access_id"] == a


def test_a_grant_without_a_proxy_is_refused_without_change(world: World) -> None:
    # Such a grant would decide requests that no proxy could ever serve.
    args = ("lab", "Org2MSP/zed", FAR, "0", "", "", "")
    assert fails_without_change(world, world.m["owner"], "GrantAccess", *args) == (
        "grant needs the proxy that will hold its re-key"
    )


def test_a_forward_without_a_proxy_is_refused_without_change(world: World) -> None:
    dave, parent = world.m["grantee"], world.grants["grantee"]
    args = ("lab", "Org2MSP/zed", FAR, "0", "", parent, "")
    assert fails_without_change(world, dave, "GrantAccess", *args) == (
        "grant needs the proxy that will hold its re-key"
    )


@pytest.mark.parametrize(
    "args",
    [("lab", "Org2MSP/zed", FAR, "0"), ("lab", "Org2MSP/zed", FAR, "0", "", "")],
    ids=["four", "six"],
)
def test_a_grant_that_omits_the_proxy_argument_is_refused_without_change(
    world: World, args: tuple[str, ...]
) -> None:
    # No form of GrantAccess without its proxy argument ever shipped.
    assert fails_without_change(world, world.m["owner"], "GrantAccess", *args) == (
        f"GrantAccess takes 7 to 8 arguments, got {len(args)}"
    )


def test_reports_are_kept_per_hop_for_the_next_proxy(two_proxies: tuple[World, Member]) -> None:
    w, paula = two_proxies
    pete, dave, zed = w.m["proxy"], w.m["grantee"], w.m["other_hospital_clinician"]
    fwd = dave.submit("GrantAccess", "lab", zed.ibe_id, FAR, "0", "", w.grants["grantee"], PROXY2)
    a = zed.submit("RequestAccess", "r-1", fwd["grant_id"])["access_id"]
    # Hop 2 is paula's: pete may not report it, nor paula hop 1.
    assert fails_without_change(w, pete, "ReportReencryption", a, "ok", "", "2", OUT2) == (
        f"hop 2 of access {a} is for proxy {PROXY2}, not {PROXY}"
    )
    assert fails_without_change(w, paula, "ReportReencryption", a, "ok", "", "1", OUT1) == (
        f"hop 1 of access {a} is for proxy {PROXY}, not {PROXY2}"
    )
    assert fails_without_change(w, pete, "ReportReencryption", a, "ok", "", "3", OUT1) == (
        "applied hops 3 is out of range [1, 2]"
    )
    assert fails_without_change(w, pete, "ReportReencryption", a, "ok", "", "1", "xyz") == (
        "capsule sha256 must be 64 lower-case hex digits"
    )
    assert fails_without_change(w, pete, "ReportReencryption", a, "failed", "", "1", OUT1) == (
        "only an ok re-encryption reports applied hops"
    )
    entry = pete.submit("ReportReencryption", a, "ok", "1 hop", "1", OUT1)
    assert (entry["detail"]["applied"], entry["detail"]["capsule_sha256"]) == (1, OUT1)
    assert fails_without_change(w, pete, "ReportReencryption", a, "ok", "", "1", OUT1) == (
        f"hop 1 of access {a} was already reported"
    )
    paula.submit("ReportReencryption", a, "ok", "", "2", OUT2)
    reports = paula.evaluate("CheckApproval", a)["reports"]
    assert [(r["applied"], r["proxy"], r["capsule_sha256"]) for r in reports] == [
        (1, PROXY, OUT1),
        (2, PROXY2, OUT2),
    ]


def test_requester_names_the_grant_it_reads_under(two_proxies: tuple[World, Member]) -> None:
    w, _ = two_proxies
    alice, dave, zed = w.m["owner"], w.m["grantee"], w.m["other_hospital_clinician"]
    # zed holds two grants for alice's lab records, at two proxies; each request picks one.
    direct = alice.submit("GrantAccess", "lab", zed.ibe_id, FAR, "0", "", "", PROXY)
    fwd = dave.submit("GrantAccess", "lab", zed.ibe_id, FAR, "0", "", w.grants["grantee"], PROXY2)
    for grant in (direct, fwd):
        access = zed.submit("RequestAccess", "r-1", grant["grant_id"])
        assert (access["decision"], access["grant_id"]) == ("allow", grant["grant_id"])
        assert access["chain"][-1] == {"grant_id": grant["grant_id"], "proxy": grant["proxy"]}
    # A named grant that no longer stands is a logged denial, not a fallback to another grant.
    alice.submit("RevokeAccess", direct["grant_id"])
    denied = zed.submit("RequestAccess", "r-1", direct["grant_id"])
    assert (denied["decision"], denied["reason"]) == (
        "deny",
        f"grant {direct['grant_id']} is revoked",
    )
    assert zed.submit("RequestAccess", "r-1")["grant_id"] == fwd["grant_id"]


def test_naming_someone_elses_grant_is_refused_without_change(fresh_world: World) -> None:
    w = fresh_world
    zed, g = w.m["other_hospital_clinician"], w.grants["grantee"]
    assert fails_without_change(w, zed, "RequestAccess", "r-1", g) == (
        f"identity {zed.ibe_id} is not the grantee of grant {g}"
    )
    # The owner naming a grant it gave is refused too: it reads as owner, under no grant.
    assert fails_without_change(w, w.m["owner"], "RequestAccess", "r-1", g) == (
        f"identity {ALICE} is not the grantee of grant {g}"
    )
    assert fails_without_change(w, zed, "RequestAccess", "r-1", "g-nope") == (
        "grant g-nope does not exist"
    )


def test_naming_a_grant_that_does_not_cover_the_record_is_refused(fresh_world: World) -> None:
    w = fresh_world
    alice, dave, carol = w.m["owner"], w.m["grantee"], w.m["other_patient"]
    carol.submit("RegisterRecord", "r-c", carol.ibe_id, "lab", "bafyrecord0002", SHA, CAPSULE, "1")
    alice.submit("RegisterRecord", "r-x", ALICE, "imaging", "bafyrecord0003", SHA, CAPSULE, "1")
    g = w.grants["grantee"]
    for record in ("r-c", "r-x"):
        assert fails_without_change(w, dave, "RequestAccess", record, g) == (
            f"grant {g} does not cover record {record}"
        )


def test_an_allowed_request_returns_the_record_pointer_decided_on(fresh_world: World) -> None:
    w = fresh_world
    dave, zed = w.m["grantee"], w.m["other_hospital_clinician"]
    access = dave.submit("RequestAccess", "r-1")
    assert access["record"] == dave.evaluate("GetRecord", "r-1", str(access["record_version"]))
    # Returned, not stored: the approval a proxy checks has no copy of it.
    assert "record" not in w.m["proxy"].evaluate("CheckApproval", access["access_id"])
    denied = zed.submit("RequestAccess", "r-1")
    assert denied["decision"] == "deny" and "record" not in denied
