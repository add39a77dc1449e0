"""A record's ``claim`` (the SDK's label of a conditional create's identifier): RegisterRecord
and WriteRecords take it for the owner, a second registration with it is refused naming the
record that holds it (also when both were endorsed before either committed: MVCC), FindClaim
answers who may register for the owner, and a pointer registered without one is unchanged."""

from __future__ import annotations

import json

import pytest
from chaincode_world import World, endorse_error, fails_without_change

from ehrshare_chaincode import canonical

ALICE = "Org1MSP/alice"
KIND = "k-" + "ab" * 16
CLAIM = "i-" + "cd" * 16
OTHER = "i-" + "ef" * 16


def _with_claim(w: World, record_id: str, claim: str = CLAIM) -> tuple[str, ...]:
    return (*w.record_args(record_id), "", KIND, claim)


def test_a_claim_is_taken_once_and_names_its_record(fresh_world: World) -> None:
    w = fresh_world
    alice, dave = w.m["owner"], w.m["grantee"]
    made = alice.submit("RegisterRecord", *_with_claim(w, "r-c1"))
    assert "claim" not in made  # the pointer does not carry it
    assert alice.evaluate("FindClaim", ALICE, CLAIM) == {"record_id": "r-c1", "record": made}
    # Another registration with the claim, by the patient or a clinician for her: refused.
    for member, rid in ((alice, "r-c2"), (dave, "r-c3")):
        reason = fails_without_change(w, member, "RegisterRecord", *_with_claim(w, rid))
        assert reason == f"claim {CLAIM} of {ALICE} is held by record r-c1", reason
    writes = json.dumps([["RegisterRecord", *_with_claim(w, "r-c4")]])
    reason = fails_without_change(w, alice, "WriteRecords", writes)
    assert reason == f"write 0: claim {CLAIM} of {ALICE} is held by record r-c1", reason
    # Another claim, or another owner's same claim, is free.
    alice.submit("RegisterRecord", *_with_claim(w, "r-c5", OTHER))
    assert alice.evaluate("FindClaim", ALICE, OTHER)["record_id"] == "r-c5"
    carol = w.m["other_patient"]
    carol.submit("RegisterRecord", *w.record_args("r-c6", carol.ibe_id), "", KIND, CLAIM)
    assert carol.evaluate("FindClaim", carol.ibe_id, CLAIM)["record_id"] == "r-c6"


def test_two_registrations_endorsed_at_once_one_commits(fresh_world: World) -> None:
    w = fresh_world
    alice, dave = w.m["owner"], w.m["grantee"]
    first = alice.contract.new_proposal("RegisterRecord", *_with_claim(w, "r-m1")).endorse()
    second = dave.contract.new_proposal("RegisterRecord", *_with_claim(w, "r-m2")).endorse()
    assert first.submit().get_status().successful
    status = second.submit().get_status()
    assert (status.code, status.successful) == ("MVCC_READ_CONFLICT", False)
    assert alice.evaluate("FindClaim", ALICE, CLAIM)["record_id"] == "r-m1"
    assert endorse_error(dave, "GetRecord", "r-m2") == "record r-m2 does not exist"
    # Re-sent (what a Fabric client does after a read conflict), it is refused by the claim.
    reason = endorse_error(dave, "RegisterRecord", *_with_claim(w, "r-m2"))
    assert reason == f"claim {CLAIM} of {ALICE} is held by record r-m1", reason


def test_write_records_takes_claims_and_refuses_one_twice(fresh_world: World) -> None:
    w = fresh_world
    alice = w.m["owner"]
    written = alice.submit(
        "WriteRecords",
        json.dumps(
            [
                ["RegisterRecord", *_with_claim(w, "r-w1")],
                ["RegisterRecord", *_with_claim(w, "r-w2", OTHER)],
                ["RegisterRecord", *w.record_args("r-w3")],
            ]
        ),
    )
    assert [r["record_id"] for r in written] == ["r-w1", "r-w2", "r-w3"]
    assert alice.evaluate("FindClaim", ALICE, OTHER)["record_id"] == "r-w2"
    twice = json.dumps(
        [
            ["RegisterRecord", *_with_claim(w, "r-w4", "i-" + "12" * 16)],
            ["RegisterRecord", *_with_claim(w, "r-w5", "i-" + "12" * 16)],
        ]
    )
    reason = fails_without_change(w, alice, "WriteRecords", twice)
    assert reason == "write 1: claim i-" + "12" * 16 + " is taken twice in one call", reason
    eleven = json.dumps([["RegisterRecord", *_with_claim(w, "r-w6"), "extra"]])
    assert "takes 7 to 10 arguments, got 11" in fails_without_change(
        w, alice, "WriteRecords", eleven
    )


def test_find_claim_tells_only_who_may_register_for_the_owner(fresh_world: World) -> None:
    w = fresh_world
    alice = w.m["owner"]
    alice.submit("RegisterRecord", *_with_claim(w, "r-f1"))
    # A grantee of her lab records reads the pointer; a clinician without a grant learns the
    # id only (what a registration with the claim would tell it).
    assert w.m["grantee"].evaluate("FindClaim", ALICE, CLAIM)["record"]["record_id"] == "r-f1"
    zed = w.m["other_hospital_clinician"].evaluate("FindClaim", ALICE, CLAIM)
    assert zed == {"record_id": "r-f1", "record": None}
    assert alice.evaluate("FindClaim", ALICE, OTHER) == {"record_id": "", "record": None}
    for role in ("other_patient", "org_admin", "auditor", "proxy"):
        reason = endorse_error(w.m[role], "FindClaim", ALICE, CLAIM)
        assert "may not look up claims of Org1MSP/alice" in reason, (role, reason)


@pytest.mark.parametrize("bad", ["i claim", "x" * 65, "i/../x", "é"])
def test_a_malformed_claim_is_refused_and_nothing_is_written(fresh_world: World, bad: str) -> None:
    w = fresh_world
    alice = w.m["owner"]
    reason = fails_without_change(w, alice, "RegisterRecord", *_with_claim(w, "r-b1", bad))
    assert "record claim" in reason and "is invalid" in reason, reason
    writes = json.dumps([["RegisterRecord", *_with_claim(w, "r-b1", bad)]])
    assert fails_without_change(w, alice, "WriteRecords", writes).startswith(
        "write 0: record claim"
    )
    assert "record claim" in endorse_error(alice, "FindClaim", ALICE, bad)


def test_without_a_claim_the_pointer_and_the_state_are_as_before(fresh_world: World) -> None:
    w = fresh_world
    alice = w.m["owner"]
    for rid, extra in (("r-n1", ()), ("r-n2", ("", KIND)), ("r-n3", ("", KIND, ""))):
        made = alice.submit("RegisterRecord", *w.record_args(rid), *extra)
        assert "claim" not in made
    # No claim key at all (the contract's other keys are as before: test_record_kind.py).
    keys = [key for key, _ in w.sandbox.ledger.state_items("ehrshare")]
    assert keys and not any(b"ehr.claim" in k for k in keys)


def test_a_claimed_pointer_is_byte_for_byte_an_unclaimed_one(fresh_world: World) -> None:
    """The claim lives in its own key: the pointer of a registration with one is the pointer
    the same registration without it makes (the record id and the transaction aside)."""
    w = fresh_world
    alice = w.m["owner"]
    alice.submit("RegisterRecord", *w.record_args("r-p1"), "", KIND)
    alice.submit("RegisterRecord", *_with_claim(w, "r-p2"))
    rows = dict(w.sandbox.ledger.state_items("ehrshare"))

    def pointer(record_id: str) -> bytes:
        key = next(k for k in rows if k.startswith(b"\x00ehr.rec\x00" + record_id.encode()))
        record = json.loads(rows[key])
        record["record_id"], record["tx_id"] = "r-?", "?"
        return canonical.dumps(record)

    assert pointer("r-p1") == pointer("r-p2")
