"""The exact collusion bound of MH-TIPRE (docs/security.md §3.2) and what rotating a type label
protects: any downstream reader of a multi-hop capsule learns the X of every upstream re-key, so
it and the proxy holding any one upstream re-key recover that delegator's type key h·sk.

These tests reach into tipre's internals on purpose: they play the attacker.
"""

from __future__ import annotations

import pytest
from _keyring import Keyring

from ehrshare.hazmat import tipre
from ehrshare.hazmat.errors import WrongTypeError
from ehrshare.hazmat.pairing import G2, GT, Scalar, pair
from ehrshare.hazmat.tipre import (
    TypeSecretKey,
    VerifiedCapsule,
    VerifiedReKey,
    decrypt,
    encrypt,
    generate_rekey,
    reencrypt,
)

ALICE, BOB, CAROL = "patient:alice", "doctor:bob", "doctor:carol"


def _upstream_xs(capsule: VerifiedCapsule, reader: TypeSecretKey) -> list[GT]:
    """What the holder of the innermost layer learns by decrypting: the X of every re-key on
    the path, innermost first (the same unwinding tipre.decrypt does, keeping each X)."""
    layers = capsule.layers
    inner = layers[-1]
    x = inner.v * pair(-inner.u, reader._d)
    xs = [x]
    for i in range(len(layers) - 2, 0, -1):
        h3 = tipre._h3(x, capsule.type_tag, layers[i].recipient_tag, layers[i + 1].recipient_tag)
        x = layers[i].v * pair(-h3 * layers[i].u, G2.generator())
        xs.append(x)
    return xs


def _type_key_from(x: GT, rekey: VerifiedReKey, owner: str, t: str) -> TypeSecretKey:
    """The proxy's K = H3'(X)·P2 − h·sk and the re-key's X give h·sk."""
    h3 = tipre._h3(x, rekey.type_tag, rekey.delegator_tag, rekey.delegatee_tag)
    d = h3 * G2.generator() - rekey._k
    # h itself is not needed to decrypt (Dec uses d = h·sk only), so a dummy h will do.
    return TypeSecretKey(owner, t, Scalar.from_int(1), d)


def _two_hops(keys: Keyring, t: str) -> tuple[VerifiedCapsule, VerifiedReKey, VerifiedReKey]:
    capsule = encrypt(GT.random(), keys.tpk[ALICE, t])
    rk_ab = generate_rekey(keys.tsk[ALICE, t], keys.tpk[BOB, t])  # held by proxy 1
    rk_bc = generate_rekey(keys.tsk[BOB, t], keys.tpk[CAROL, t])  # held by proxy 2
    return reencrypt(reencrypt(capsule, rk_ab), rk_bc), rk_ab, rk_bc


@pytest.mark.parametrize("t", ["lab-result"])
def test_a_hop_2_reader_and_the_upstream_proxy_recover_the_owners_type_key(
    keys: Keyring, t: str
) -> None:
    hop2, rk_ab, rk_bc = _two_hops(keys, t)
    x_bc, x_ab = _upstream_xs(hop2, keys.tsk[CAROL, t])
    stolen = _type_key_from(x_ab, rk_ab, ALICE, t)
    # It is alice's type-t key itself ...
    assert stolen._d == keys.tsk[ALICE, t]._d
    # ... so it opens a record alice creates later, which nobody granted to anyone.
    m = GT.random()
    assert decrypt(encrypt(m, keys.tpk[ALICE, t]), stolen) == m
    # Carol with proxy 2 (rk bob→carol) gets bob's type key the same way: the classic bound.
    assert _type_key_from(x_bc, rk_bc, BOB, t)._d == keys.tsk[BOB, t]._d


def test_rotating_the_type_label_protects_later_records_not_earlier_ones(keys: Keyring) -> None:
    # Type-key epochs: the label carries the epoch ("lab-result#1" → "lab-result#2"), so
    # h = H2(sk, label) and the type key change with it.
    old, new = "lab-result#1", "lab-result#2"
    old_record_m = GT.random()
    old_record = encrypt(old_record_m, keys.tsk[ALICE, "lab-result"].public_key(keys.mpk))
    sk_alice = keys.sk[ALICE]
    old_key = sk_alice.type_secret(old)
    epoch1 = encrypt(old_record_m, old_key.public_key(keys.mpk))

    # The leak happened in epoch 1 (as in the test above).
    capsule = encrypt(GT.random(), old_key.public_key(keys.mpk))
    rk_ab = generate_rekey(old_key, keys.sk[BOB].type_secret(old).public_key(keys.mpk))
    rk_bc = generate_rekey(
        keys.sk[BOB].type_secret(old), keys.sk[CAROL].type_secret(old).public_key(keys.mpk)
    )
    hop2 = reencrypt(reencrypt(capsule, rk_ab), rk_bc)
    _, x_ab = _upstream_xs(hop2, keys.sk[CAROL].type_secret(old))
    stolen = _type_key_from(x_ab, rk_ab, ALICE, old)

    # Not protected: every record of the old epoch, whatever the chain says about revocation.
    assert decrypt(epoch1, stolen) == old_record_m
    # Protected: a record made after rotating. The stolen key is refused for the new label,
    # and forcing it under the new label's name yields a wrong key (AES-GCM would reject it).
    new_m = GT.random()
    epoch2 = encrypt(new_m, sk_alice.type_secret(new).public_key(keys.mpk))
    with pytest.raises(WrongTypeError):
        decrypt(epoch2, stolen)
    forced = TypeSecretKey(ALICE, new, stolen._h, stolen._d)
    assert decrypt(epoch2, forced) != new_m
    # The unrotated label is a different key again (records of "lab-result" stay as they were).
    assert decrypt(old_record, keys.tsk[ALICE, "lab-result"]) == old_record_m
