"""PublishTypeKey checks the key's tags and its proof of knowledge of h against the mpk of the
latest final DKG (issue 19.3); a refused key leaves the state as it was."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from chaincode_world import (
    ALICE_LAB_KEY,
    MPK,
    World,
    endorse_error,
    fails_without_change,
    type_key,
)

from ehrshare.hazmat.pairing import G1, Scalar
from ehrshare.hazmat.tipre import MasterSecret, TypePublicKey
from ehrshare.ledger.sandbox import ManualClock, Sandbox

ALICE = "Org1MSP/alice"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_a_key_without_a_valid_proof_is_refused_and_nothing_changes(fresh_world: World) -> None:
    w = fresh_world
    alice = w.m["owner"]
    honest = TypePublicKey.from_bytes(base64.b64decode(ALICE_LAB_KEY))
    # T = y·P1 for a y the publisher knows: a valid G1 point with alice's tags.
    forged = TypePublicKey(
        honest.owner_tag, honest.type_tag, Scalar.from_int(77) * G1.generator(), honest.proof
    )
    assert (
        fails_without_change(w, alice, "PublishTypeKey", "lab", _b64(forged.to_bytes()), "1")
        == "type key lab has no valid proof of knowledge"
    )
    assert alice.evaluate("GetTypeKey", ALICE, "lab")["key"] == ALICE_LAB_KEY


def test_a_key_proved_under_another_master_key_is_refused(fresh_world: World) -> None:
    w = fresh_world
    other = MasterSecret(Scalar.from_int(0xBAD))
    key = other.extract(ALICE).type_secret("lab").public_key(other.public_key())
    assert (
        fails_without_change(w, w.m["owner"], "PublishTypeKey", "lab", _b64(key.to_bytes()), "1")
        == "type key lab has no valid proof of knowledge"
    )


def test_the_tags_must_name_the_caller_and_the_type(world: World) -> None:
    alice, dave = world.m["owner"], world.m["grantee"]
    assert (
        endorse_error(dave, "PublishTypeKey", "lab", ALICE_LAB_KEY, "1")
        == "type key lab is not bound to identity Org1MSP/dave"
    )
    assert (
        endorse_error(alice, "PublishTypeKey", "imaging", ALICE_LAB_KEY, "1")
        == "type key imaging is bound to another record type"
    )
    ok = alice.contract.new_proposal(
        "PublishTypeKey", "imaging", type_key(ALICE, "imaging"), "1"
    ).endorse()
    assert json.loads(ok.endorsed.result)["type"] == "imaging"


def test_old_and_malformed_keys_say_what_is_wrong(world: World) -> None:
    alice = world.m["owner"]
    raw = base64.b64decode(ALICE_LAB_KEY)
    v1 = b"\x01" + raw[1:113]  # format version 1: no proof, 113 bytes
    assert (
        endorse_error(alice, "PublishTypeKey", "lab", _b64(v1), "1")
        == "type key lab is 113 bytes; a type key is 177 bytes"
    )
    assert endorse_error(alice, "PublishTypeKey", "lab", _b64(b"\x01" + raw[1:]), "1") == (
        "type key lab has format version 1; only version 2 (with a proof of knowledge) is accepted"
    )
    not_a_point = raw[:65] + b"\xff" * 48 + raw[113:]
    assert (
        endorse_error(alice, "PublishTypeKey", "lab", _b64(not_a_point), "1")
        == "type key lab is not a point of the order-r subgroup of G1"
    )
    big_z = raw[:-32] + b"\xff" * 32
    assert (
        endorse_error(alice, "PublishTypeKey", "lab", _b64(big_z), "1")
        == "type key lab has no valid proof of knowledge"
    )


def test_no_type_key_before_a_dkg_has_finished(tmp_path: Path) -> None:
    sb = Sandbox.open(tmp_path, clock=ManualClock(1_900_000_000))
    try:
        alice = sb.member("Org1MSP", "alice", "patient")
        assert endorse_error(alice, "PublishTypeKey", "lab", ALICE_LAB_KEY, "1") == (
            "no dkg session has finished; a type key is checked against its master public key"
        )
    finally:
        sb.close()


def test_the_world_mpk_is_what_keys_are_checked_against(world: World) -> None:
    assert world.m["owner"].evaluate("GetDKGResult", "")["mpk"] == MPK
