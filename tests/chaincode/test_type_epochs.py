"""Type-key epochs on chain (docs/chaincode.md "Type-key epochs"): a patient's revocation rotates
the type, records wait for the new epoch's key and are stamped with it, a root grant covers the
epochs its proxy holds re-keys for, and every refusal names the object and changes nothing."""

from __future__ import annotations

import pytest
from chaincode_world import (
    ALICE_LAB_KEY,
    ALICE_LAB_KEY_1,
    ALICE_LAB_KEY_2,
    CAPSULE,
    FAR,
    PROXY,
    SHA,
    World,
    fails_without_change,
    type_key,
)

ALICE = "Org1MSP/alice"


def _state(w: World) -> dict[str, object]:
    result: dict[str, object] = w.m["auditor"].evaluate("GetTypeKeyEpoch", ALICE, "lab")
    return result


def test_the_world_is_in_epoch_1_after_alices_revocation(world: World) -> None:
    state = _state(world)
    assert state["type_epoch"] == 1 and state["key"] == ALICE_LAB_KEY_1
    old = world.m["auditor"].evaluate("GetRecord", "r-1")
    assert old["type_epoch"] == 0  # created before: keeps its epoch


def test_a_patients_revocation_holds_new_records_until_the_next_key(fresh_world: World) -> None:
    w = fresh_world
    alice, zed = w.m["owner"], w.m["other_hospital_clinician"]
    revoked = alice.submit("RevokeAccess", w.grants["grantee"])
    assert revoked["type_epoch"] == 2
    assert _state(w) == _state(w) | {"type_epoch": 2, "key": ""}
    assert fails_without_change(w, zed, "RegisterRecord", *w.record_args("r-2")) == (
        f"type key lab of {ALICE} is being rotated (epoch 2 has no key yet); {ALICE} must "
        "finish it with RotateTypeKey first"
    )
    alice.submit("RotateTypeKey", "lab", "2", ALICE_LAB_KEY_2, "1")
    stated = (*w.record_args("r-2"), "2")
    assert zed.submit("RegisterRecord", *stated)["type_epoch"] == 2
    # A writer that sealed under an older epoch's key is told to encrypt again.
    assert fails_without_change(w, zed, "RegisterRecord", *w.record_args("r-3"), "1") == (
        f"type key lab of {ALICE} is in epoch 2, not 1; encrypt the record again under the "
        "current type key"
    )
    amended = alice.submit("AmendRecord", "r-1", "bafyrecord0002", SHA, CAPSULE, "1", "2")
    assert amended["type_epoch"] == 2


def test_a_root_grant_covers_the_epochs_it_was_rekeyed_for(fresh_world: World) -> None:
    w = fresh_world
    alice, dave = w.m["owner"], w.m["grantee"]
    g = w.grants["grantee"]  # made in epoch 0; the world is in epoch 1 now
    assert w.m["auditor"].evaluate("GetGrant", g)["type_epochs"] == [0]
    w.m["other_hospital_clinician"].submit("RegisterRecord", *w.record_args("r-new"), "1")
    denied = dave.submit("RequestAccess", "r-new")
    assert denied["decision"] == "deny"
    assert denied["reason"] == (
        f"grant {g} holds no re-key for type-key epoch 1 of {ALICE}; the owner delivers it "
        "with grant repair"
    )
    assert dave.submit("RequestAccess", "r-1")["decision"] == "allow"  # epoch 0: covered
    rekeyed = alice.submit("RekeyGrant", g, "1")
    assert rekeyed["type_epochs"] == [0, 1]
    allowed = dave.submit("RequestAccess", "r-new")
    assert allowed["decision"] == "allow" and allowed["type_epoch"] == 1
    assert fails_without_change(w, alice, "RekeyGrant", g, "1") == (
        f"grant {g} covers type epoch 1 already"
    )
    # A grant made now covers every epoch so far (its owner delivered a re-key for each).
    fresh = alice.submit("GrantAccess", "lab", "Org2MSP/zed", FAR, "0", "", "", PROXY)
    assert fresh["type_epochs"] == [0, 1]


def test_rekeying_goes_up_to_the_current_epoch_with_a_key(fresh_world: World) -> None:
    w = fresh_world
    alice = w.m["owner"]
    g = w.grants["grantee"]
    alice.submit("RotateTypeKey", "lab", "2", ALICE_LAB_KEY_2, "1")
    assert fails_without_change(w, alice, "RekeyGrant", g, "3") == (
        f"type key lab of {ALICE} is in epoch 2; grant {g} cannot be re-keyed for epoch 3"
    )
    # An epoch a rotation skipped for this grant is caught up on.
    assert alice.submit("RekeyGrant", g, "2")["type_epochs"] == [0, 2]
    assert alice.submit("RekeyGrant", g, "1")["type_epochs"] == [0, 1, 2]
    revoked = w.grants["revoked_grantee"]
    assert fails_without_change(w, alice, "RekeyGrant", revoked, "2") == (
        f"grant {revoked} is revoked"
    )
    other = alice.submit("GrantAccess", "lab", "Org2MSP/zed", FAR, "0", "", "", PROXY)
    alice.submit("RevokeAccess", other["grant_id"])  # epoch 3, no key yet
    assert fails_without_change(w, alice, "RekeyGrant", g, "3") == (
        f"type key lab of {ALICE} is in epoch 3 with no key yet; grant {g} is re-keyed for it "
        "once RotateTypeKey published it"
    )


def test_a_grantor_revoking_a_forward_does_not_rotate_the_owners_type(fresh_world: World) -> None:
    w = fresh_world
    dave, zed = w.m["grantee"], w.m["other_hospital_clinician"]
    fwd = dave.submit("GrantAccess", "lab", zed.ibe_id, FAR, "0", "", w.grants["grantee"], PROXY)
    assert "type_epochs" not in fwd  # a forward hangs off its root's re-keys
    assert "type_epoch" not in dave.submit("RevokeAccess", fwd["grant_id"])
    assert _state(w)["type_epoch"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("lab", "3", type_key(ALICE, type_epoch=3), "1"),
            f"type key lab of {ALICE} is in epoch 1; epoch 3 is neither the next one nor the "
            "current one without a key",
        ),
        (
            ("lab", "2", ALICE_LAB_KEY_1, "1"),
            f"type key lab of {ALICE} for epoch 2 is a key already used",
        ),
        (
            ("lab", "2", ALICE_LAB_KEY, "1"),
            f"type key lab of {ALICE} for epoch 2 is a key already used",
        ),
        (("imaging", "1", ALICE_LAB_KEY_2, "1"), f"type key imaging of {ALICE} does not exist"),
        (("lab", "0", ALICE_LAB_KEY_2, "1"), "type epoch 0 is out of range [1, 2147483648]"),
        (
            ("lab!", "2", ALICE_LAB_KEY_2, "1"),
            "record type 'lab!' is invalid: use 1-64 letters, digits, '.', '_', ':' or '-'",
        ),
        (
            ("lab", "2", type_key("Org1MSP/carol", type_epoch=2), "1"),
            f"type key lab is not bound to identity {ALICE}",
        ),
    ],
)
def test_a_bad_rotation_is_refused_and_changes_nothing(
    world: World, args: tuple[str, ...], message: str
) -> None:
    assert fails_without_change(world, world.m["owner"], "RotateTypeKey", *args) == message
