"""WriteRecords: several record writes in one transaction, all or nothing, with exactly the
checks, keys and log entries of RegisterRecord and AmendRecord one at a time."""

from __future__ import annotations

import json

import pytest
from chaincode_world import CAPSULE, SHA, World, fails_without_change

from ehrshare.ledger import ChaincodeEvent
from ehrshare_chaincode.contract.records import MAX_WRITES

ALICE = "Org1MSP/alice"


def _writes(*items: tuple[str, ...]) -> str:
    return json.dumps([list(i) for i in items])


def _trail(w: World, chain: str = ALICE) -> list[dict[str, object]]:
    return list(w.m["auditor"].evaluate("GetAuditTrail", "patient", chain, "100", "")["entries"])


def test_one_transaction_writes_what_the_single_functions_write(fresh_world: World) -> None:
    w = fresh_world
    alice = w.m["owner"]
    events: list[ChaincodeEvent] = []
    remove = w.sandbox.ledger.add_listener(events.append)
    height = w.sandbox.ledger.height()
    before = _trail(w)
    written = alice.submit(
        "WriteRecords",
        _writes(
            ("RegisterRecord", *w.record_args("r-a")),
            ("AmendRecord", "r-1", "bafyrecord0002", "1" * 64, CAPSULE, "1", "", "1"),
            ("RegisterRecord", "r-b", ALICE, "lab", "bafyrecord0003", SHA, CAPSULE, "1"),
        ),
    )
    remove()
    assert w.sandbox.ledger.height() == height + 1  # one block, one transaction
    assert [(r["record_id"], r["version"]) for r in written] == [("r-a", 1), ("r-1", 2), ("r-b", 1)]
    assert len({r["tx_id"] for r in written}) == 1
    for r in written:
        assert alice.evaluate("GetRecord", r["record_id"]) == r
    assert [x["record_id"] for x in alice.evaluate("ListRecords", ALICE, "", "")["records"]] == [
        "r-1",
        "r-a",
        "r-b",
    ]
    new = _trail(w)[len(before) :]
    assert [(e["action"], e["record_id"], e["outcome"]) for e in new] == [
        ("RegisterRecord", "r-a", "ok"),
        ("AmendRecord", "r-1", "ok"),
        ("RegisterRecord", "r-b", "ok"),
    ]
    assert [e["seq"] for e in new] == [len(before) + 1, len(before) + 2, len(before) + 3]
    assert len(events) == 1 and events[0].event_name == "WriteRecords"
    assert json.loads(events[0].payload)["entries"] == new
    assert w.m["auditor"].evaluate("VerifyAuditTrail", ALICE)["valid"] is True
    record_trail = w.m["auditor"].evaluate("GetAuditTrail", "record", "r-1")["entries"]
    assert [e["action"] for e in record_trail][-1] == "AmendRecord"


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (
            [
                ("RegisterRecord", "r-new", ALICE, "lab", "bafyrecord0009", SHA, CAPSULE, "1"),
                ("RegisterRecord", "r-1", ALICE, "lab", "bafyrecord0009", SHA, CAPSULE, "1"),
            ],
            "write 1: record r-1 already exists",
        ),
        (
            [
                ("RegisterRecord", "r-new", ALICE, "lab", "bafyrecord0009", SHA, CAPSULE, "1"),
                ("AmendRecord", "r-1", "bafyrecord0002", SHA, CAPSULE, "1", "", "7"),
            ],
            "write 1: record r-1 is at version 1, not 7",
        ),
        (
            [("AmendRecord", "r-404", "bafyrecord0002", SHA, CAPSULE, "1")],
            "write 0: record r-404 does not exist",
        ),
        (
            [
                ("RegisterRecord", "r-new", ALICE, "lab", "bafyrecord0009", SHA, CAPSULE, "1"),
                ("RegisterRecord", "r-new", ALICE, "lab", "bafyrecord0008", SHA, CAPSULE, "1"),
            ],
            "write 1: record r-new is written twice in one call",
        ),
        (
            [("RegisterRecord", "r-new", ALICE, "lab", "not a cid", SHA, CAPSULE, "1")],
            "write 0: cid 'not a cid' is not a content identifier",
        ),
        ([("GrantAccess", "lab")], "write 0: 'GrantAccess' is not RegisterRecord or AmendRecord"),
        ([("AmendRecord", "r-1")], "write 0: AmendRecord takes 5 to 7 arguments, got 1"),
        ([["RegisterRecord", 5]], "write 0 is not a json list of strings"),
        ([], "writes must be a non-empty json list"),
        (
            [
                ("AmendRecord", f"r-{i}", "bafyrecord0002", SHA, CAPSULE, "1")
                for i in range(MAX_WRITES + 1)
            ],
            f"at most {MAX_WRITES} writes per transaction, got {MAX_WRITES + 1}",
        ),
    ],
    ids=lambda v: str(v)[:30],
)
def test_one_bad_write_writes_nothing(
    world: World, items: list[tuple[object, ...]], message: str
) -> None:
    alice = world.m["owner"]
    assert fails_without_change(world, alice, "WriteRecords", json.dumps(items)) == message


def test_malformed_json_and_callers_are_refused(world: World) -> None:
    assert fails_without_change(world, world.m["owner"], "WriteRecords", "{") == (
        "writes is not valid json"
    )
    carol = world.m["other_patient"]  # a patient may create only her own records
    register = ("RegisterRecord", "r-c", ALICE, "lab", "bafyrecord0009", SHA, CAPSULE, "1")
    assert fails_without_change(world, carol, "WriteRecords", _writes(register)) == (
        f"write 0: identity {carol.ibe_id} may not create records for {ALICE}"
    )
