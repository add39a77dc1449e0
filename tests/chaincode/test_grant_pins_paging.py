"""ListGrantPins pages the records of a grant, not only the grants (issue 16).

A page reads at most ``page_size`` grants and ``page_size`` entries of the owners' record
indexes, so it holds at most ``page_size`` records; a grant with more is split across pages
(each part names the same grant, grantee hospital and expiry), and the bookmark resumes inside
its records. Walked to the end, every covered record of every valid grant is seen exactly once,
on the embedded ledger and under a stub with a Fabric peer's semantics.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from chaincode_world import CAPSULE, FAR, PROXY, SHA, World, build_world, endorse_error, type_key
from test_backend_independence import FabricSemanticsStub

from ehrshare.contract import EhrContract
from ehrshare.contract.types import GrantPins
from ehrshare.ledger.envelope import Proposal, new_proposal, sign_proposal
from ehrshare.ledger.sandbox import Member
from ehrshare.storemaint import merge_grant_parts
from ehrshare_chaincode.contract import invoke
from ehrshare_chaincode.stub import create_composite_key

ALICE, CAROL = "Org1MSP/alice", "Org1MSP/carol"
ALICE_LAB = [f"r-a{i:02d}" for i in range(40)]  # with r-1: 41 records under one grant
ALICE_RAD = [f"r-a{i:02d}x" for i in range(0, 40, 7)]  # interleaved, of another type
CAROL_LAB = [f"r-c{i:02d}" for i in range(12)]

Page = dict[str, Any]


def _write(member: Member, owner: str, record_type: str, ids: list[str]) -> None:
    writes = [
        ["RegisterRecord", rid, owner, record_type, "bafyrecord0001", SHA, CAPSULE, "1"]
        for rid in ids
    ]
    member.submit("WriteRecords", json.dumps(writes))


@pytest.fixture(scope="module")
def pins_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, dict[str, Any]]]:
    """alice: 41 lab records granted to dave (Org1MSP) and 6 rad records granted to zed
    (Org2MSP); carol: 12 lab records granted to zed, and to dave by a grant she revoked; the
    world's revoked and expired grants of alice's."""
    w = build_world(tmp_path_factory.mktemp("pins"))
    alice, carol = w.m["owner"], w.m["other_patient"]
    dave, zed = w.m["grantee"], w.m["other_hospital_clinician"]
    alice.submit("PublishTypeKey", "rad", type_key(ALICE, "rad"), "1")
    carol.submit("PublishTypeKey", "lab", type_key(CAROL), "1")
    _write(alice, ALICE, "lab", ALICE_LAB)
    _write(alice, ALICE, "rad", ALICE_RAD)
    _write(carol, CAROL, "lab", CAROL_LAB)
    # Ids chosen so that the revoked grant lies between two valid ones in key order.
    rad, gone, to_zed = ("g-" + c * 32 for c in "159")
    alice.submit("GrantAccess", "rad", zed.ibe_id, FAR, "1", "", "", PROXY, rad)
    carol.submit("GrantAccess", "lab", zed.ibe_id, FAR, "1", "", "", PROXY, to_zed)
    carol.submit("GrantAccess", "lab", dave.ibe_id, FAR, "1", "", "", PROXY, gone)
    carol.submit("RevokeAccess", gone)
    expected = {
        w.grants["grantee"]: ("Org1MSP", int(FAR), {"r-1", *ALICE_LAB}),
        rad: ("Org2MSP", int(FAR), set(ALICE_RAD)),
        to_zed: ("Org2MSP", int(FAR), set(CAROL_LAB)),
    }
    yield w, expected
    w.sandbox.close()


def _walk(evaluate: Callable[[str, str], Page], page_size: str) -> list[Page]:
    pages, bookmark = [], ""
    while True:
        page = evaluate(page_size, bookmark)
        pages.append(page)
        bookmark = page["bookmark"]
        if not bookmark:
            return pages
        assert len(pages) < 1000, "the walk does not end"


def _merged(pages: list[Page]) -> dict[str, tuple[str, int, set[str]]]:
    """Every grant's parts merged; asserts each entry is seen once and the parts agree."""
    out: dict[str, tuple[str, int, set[str]]] = {}
    seen: list[tuple[str, str]] = []
    for page in pages:
        for part in page["grants"]:
            gid = part["grant_id"]
            head = (part["grantee_msp"], part["expiry"])
            msp, expiry, recs = out.setdefault(gid, (*head, set()))
            assert (msp, expiry) == head
            for r in part["records"]:
                assert (r["version"], r["cid"]) == (1, "bafyrecord0001")
                recs.add(r["record_id"])
                seen.append((gid, r["record_id"]))
    assert len(seen) == len(set(seen)), "an entry was given twice"
    return out


@pytest.mark.parametrize("page_size", ["1", "2", "3", "7", "100"])
def test_every_covered_record_once_in_pages_of_at_most_page_size(
    pins_world: tuple[World, dict[str, Any]], page_size: str
) -> None:
    w, expected = pins_world
    admin = w.m["org_admin"]
    pages = _walk(lambda ps, bm: admin.evaluate("ListGrantPins", ps, bm), page_size)
    for page in pages:
        assert sum(len(g["records"]) for g in page["grants"]) <= int(page_size)
        assert len(page["grants"]) <= int(page_size)
    assert _merged(pages) == expected
    # Parts come in key order: a grant's parts follow one another.
    order = [g["grant_id"] for p in pages for g in p["grants"]]
    assert order == sorted(order)


def _fabric_evaluate(w: World, member: Member) -> Callable[[str, str], Page]:
    """ListGrantPins run on the committed state through a stub with a Fabric peer's
    pagination (the next page's first key as the bookmark, read-only)."""
    committed = {k.decode(): bytes(v) for k, v in w.sandbox.ledger.state_items("ehrshare")}

    def evaluate(page_size: str, bookmark: str) -> Page:
        proposal: Proposal = new_proposal(
            member.identity,
            channel="ehrshare",
            chaincode="ehrshare",
            function="ListGrantPins",
            args=(page_size.encode(), bookmark.encode()),
            timestamp_ns=w.clock(),
        )
        stub = FabricSemanticsStub(committed, proposal)
        result: Page = json.loads(invoke(stub, "ListGrantPins", list(proposal.args)))
        assert stub.writes == {}
        return result

    return evaluate


@pytest.mark.parametrize("page_size", ["1", "5"])
def test_fabric_semantics_give_the_same_pages(
    pins_world: tuple[World, dict[str, Any]], page_size: str
) -> None:
    w, expected = pins_world
    auditor = w.m["auditor"]
    embedded = _walk(lambda ps, bm: auditor.evaluate("ListGrantPins", ps, bm), page_size)
    fabric = _walk(_fabric_evaluate(w, auditor), page_size)
    assert fabric == embedded
    assert _merged(fabric) == expected


def test_a_page_reads_at_most_page_size_records(
    pins_world: tuple[World, dict[str, Any]],
) -> None:
    """A page reads no more record pointers than its size, however many a grant covers."""
    w, _ = pins_world
    admin = w.m["org_admin"]
    bookmark = ""
    for _ in range(4):
        proposal = new_proposal(
            admin.identity,
            channel="ehrshare",
            chaincode="ehrshare",
            function="ListGrantPins",
            args=(b"5", bookmark.encode()),
            timestamp_ns=w.clock(),
        )
        endorsed = w.sandbox.ledger.endorse(sign_proposal(proposal, admin.signer))
        pointers = [k for _, k in endorsed.reads if k.startswith(b"\x00ehr.rec\x00")]
        assert 0 < len(pointers) <= 5
        bookmark = json.loads(endorsed.result)["bookmark"]


def _grant_key(*attrs: str) -> str:
    return create_composite_key("ehr.grant", list(attrs))


def test_a_bookmark_resumes_inside_a_grants_records(
    pins_world: tuple[World, dict[str, Any]],
) -> None:
    w, expected = pins_world
    admin, root = w.m["org_admin"], w.grants["grantee"]
    # Written by hand, a bookmark inside alice's lab grant starts at that record.
    page = admin.evaluate("ListGrantPins", "3", _grant_key(root, "r-a13"))
    assert [g["grant_id"] for g in page["grants"]] == [root]
    # r-a14x (rad) is read but not covered: the page read 3 index entries, holds 2 records.
    assert [r["record_id"] for r in page["grants"][0]["records"]] == ["r-a13", "r-a14"]
    assert page["bookmark"] == _grant_key(root, "r-a15")
    # A plain grant key (what a scan of grants gives) starts at that grant's first record.
    first = admin.evaluate("ListGrantPins", "2", _grant_key(root))
    assert [r["record_id"] for r in first["grants"][0]["records"]] == ["r-1", "r-a00"]
    assert expected[root][2] >= {"r-a13", "r-a14"}


@pytest.mark.parametrize(
    ("bookmark", "message"),
    [
        ("\x00ehr.rec~owner\x00Org1MSP/alice\x00", "bookmark does not belong to this query"),
        ("not a key", "bookmark does not belong to this query"),
        ("\x00ehr.grant\x00", "bookmark does not belong to this query"),
        ("\x00ehr.grant\x00g-1\x00r-1", "bookmark does not belong to this query"),
        (_grant_key("g-1", "r-1", "x"), "bookmark does not belong to this query"),
        (_grant_key("g-1", "r 1"), "bookmark does not belong to this query"),
        (_grant_key("g 1", "r-1"), "bookmark does not belong to this query"),
        (
            _grant_key("g-" + "0" * 32, "r-1"),
            f"bookmark names grant g-{'0' * 32}, which does not exist",
        ),
    ],
)
def test_tampered_bookmarks_are_refused(
    pins_world: tuple[World, dict[str, Any]], bookmark: str, message: str
) -> None:
    w, _ = pins_world
    assert endorse_error(w.m["auditor"], "ListGrantPins", "2", bookmark) == message


def test_a_grant_revoked_between_pages_gives_no_more_records(tmp_path: Path) -> None:
    w = build_world(tmp_path)
    try:
        alice, admin, root = w.m["owner"], w.m["org_admin"], w.grants["grantee"]
        _write(alice, ALICE, "lab", ALICE_LAB[:10])
        first = admin.evaluate("ListGrantPins", "4", "")
        assert [r["record_id"] for r in first["grants"][0]["records"]] == [
            "r-1",
            "r-a00",
            "r-a01",
            "r-a02",
        ]
        assert first["bookmark"] == _grant_key(root, "r-a03")
        alice.submit("RevokeAccess", root)
        assert admin.evaluate("ListGrantPins", "4", first["bookmark"]) == {
            "grants": [],
            "bookmark": "",
        }
    finally:
        w.sandbox.close()


@pytest.mark.parametrize("page_size", [1, 4, 100])
def test_the_sdk_merges_the_parts_of_a_grant(
    pins_world: tuple[World, dict[str, Any]], page_size: int
) -> None:
    """EhrContract.list_grant_pins followed to the end and merged (what ``store status`` and
    ``store repair`` read through :func:`ehrshare.storemaint.grant_pins`): one GrantPins per
    valid grant with every record it covers, in the owner's index order."""
    w, expected = pins_world
    chain = EhrContract(w.m["auditor"].contract)
    parts: list[GrantPins] = []
    bookmark = ""
    while True:
        page = chain.list_grant_pins(page_size=page_size, bookmark=bookmark)
        assert sum(len(g.records) for g in page.items) <= page_size
        parts += page.items
        bookmark = page.bookmark
        if not bookmark:
            break
    merged = merge_grant_parts(parts)
    assert len(merged) == len(expected)
    for g in merged:
        msp, expiry, records = expected[g.grant_id]
        assert (g.grantee_msp, g.expiry) == (msp, expiry)
        assert [r[0] for r in g.records] == sorted(records)
