"""A record's ``kind`` (the SDK's label of its FHIR resourceType): RegisterRecord and
WriteRecords keep it in the pointer, every later version keeps it, a malformed one is refused
with nothing written, and a pointer registered without one has no ``kind`` key at all."""

from __future__ import annotations

import json

from chaincode_world import CAPSULE, World, fails_without_change

ALICE = "Org1MSP/alice"
KIND = "k-" + "ab" * 16


def test_a_kind_is_kept_by_the_pointer_and_by_every_version(fresh_world: World) -> None:
    w = fresh_world
    alice = w.m["owner"]
    made = alice.submit("RegisterRecord", *w.record_args("r-k1"), "", KIND)
    assert made["kind"] == KIND
    assert alice.evaluate("GetRecord", "r-k1") == made
    amended = alice.submit("AmendRecord", "r-k1", "bafyrecord0002", "1" * 64, CAPSULE, "1")
    assert amended["version"] == 2 and amended["kind"] == KIND
    history = alice.evaluate("GetRecordHistory", "r-k1")
    assert [(r["version"], r["kind"]) for r in history] == [(1, KIND), (2, KIND)]
    listed = {r["record_id"]: r for r in alice.evaluate("ListRecords", ALICE, "", "")["records"]}
    assert listed["r-k1"]["kind"] == KIND


def test_without_a_kind_the_pointer_has_no_kind_key(fresh_world: World) -> None:
    w = fresh_world
    alice = w.m["owner"]
    for args in (
        w.record_args("r-k2"),
        (*w.record_args("r-k3"), ""),
        (*w.record_args("r-k4"), "", ""),
    ):
        assert "kind" not in alice.submit("RegisterRecord", *args)


def test_write_records_takes_the_kind_of_each_registration(fresh_world: World) -> None:
    w = fresh_world
    alice = w.m["owner"]
    written = alice.submit(
        "WriteRecords",
        json.dumps(
            [
                ["RegisterRecord", *w.record_args("r-k5"), "", KIND],
                ["RegisterRecord", *w.record_args("r-k6")],
            ]
        ),
    )
    assert [r.get("kind") for r in written] == [KIND, None]


def test_a_malformed_kind_is_refused_and_nothing_is_written(fresh_world: World) -> None:
    w = fresh_world
    alice = w.m["owner"]
    for bad in ("k kind", "x" * 65, "k/../x", "é"):
        reason = fails_without_change(w, alice, "RegisterRecord", *w.record_args("r-k7"), "", bad)
        assert "record kind" in reason and "is invalid" in reason, reason
        writes = json.dumps([["RegisterRecord", *w.record_args("r-k7"), "", bad]])
        reason = fails_without_change(w, alice, "WriteRecords", writes)
        assert reason.startswith("write 0: record kind"), reason
    # The 10th argument is a claim (test_record_claim.py); an 11th is one too many.
    eleven = json.dumps([["RegisterRecord", *w.record_args("r-k8"), "", KIND, "i-1", "extra"]])
    reason = fails_without_change(w, alice, "WriteRecords", eleven)
    assert "takes 7 to 10 arguments, got 11" in reason
