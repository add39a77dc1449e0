"""The chaincode's pure-Python type-key check (no pairing library) agrees with the SDK's."""

from __future__ import annotations

import _bls12_381_ref as ref
import pytest
from _keyring import IDENTITIES, TYPES, Keyring
from hypothesis import given, settings
from hypothesis import strategies as st

from ehrshare.hazmat.errors import EncodingError, VerificationError
from ehrshare.hazmat.tipre import TYPE_PUBLIC_KEY_SIZE, MasterPublicKey, TypePublicKey
from ehrshare_chaincode import typekey
from ehrshare_chaincode.stub import ChaincodeError

ALICE = IDENTITIES[0]
LAB = TYPES[0]


def _chaincode_accepts(raw: bytes, mpk: bytes, owner: str = ALICE, t: str = LAB) -> bool:
    point = typekey.parse_mpk(mpk)
    assert point is not None
    try:
        typekey.check_type_key(raw, owner=owner, record_type=t, mpk_point=point)
    except ChaincodeError:
        return False
    return True


def _sdk_accepts(raw: bytes, keys: Keyring, owner: str = ALICE, t: str = LAB) -> bool:
    try:
        TypePublicKey.from_bytes(raw).verify(owner=owner, type_label=t, mpk=keys.mpk)
    except (EncodingError, VerificationError, ValueError):
        return False
    return True


def test_both_accept_every_honest_key(keys: Keyring) -> None:
    assert typekey.KEY_SIZE == TYPE_PUBLIC_KEY_SIZE
    for owner in IDENTITIES[:3]:
        for t in TYPES:
            raw = keys.tpk[owner, t].to_bytes()
            assert _chaincode_accepts(raw, keys.mpk.to_bytes(), owner, t)
            assert _sdk_accepts(raw, keys, owner, t)


@settings(max_examples=40, deadline=None)
@given(bit=st.integers(min_value=0, max_value=TYPE_PUBLIC_KEY_SIZE * 8 - 1))
def test_both_refuse_every_flipped_bit(keys: Keyring, bit: int) -> None:
    raw = bytearray(keys.tpk[ALICE, LAB].to_bytes())
    raw[bit // 8] ^= 1 << (bit % 8)
    assert not _chaincode_accepts(bytes(raw), keys.mpk.to_bytes())
    assert not _sdk_accepts(bytes(raw), keys)


def test_both_refuse_a_point_outside_the_subgroup(keys: Keyring) -> None:
    raw = keys.tpk[ALICE, LAB].to_bytes()
    off = ref.encode_g1(ref.g1_point_off_subgroup())
    forged = raw[:65] + off + raw[113:]
    assert not _chaincode_accepts(forged, keys.mpk.to_bytes())
    assert not _sdk_accepts(forged, keys)


def test_the_chaincode_refuses_an_mpk_it_cannot_check_against(keys: Keyring) -> None:
    good = keys.mpk.to_bytes()
    assert typekey.parse_mpk(good) == good[1:]
    # format version 1 encoded the same point: a DKG result from before the change still serves
    assert typekey.parse_mpk(b"\x01" + good[1:]) == good[1:]
    assert MasterPublicKey.from_bytes(b"\x01" + good[1:]) == keys.mpk
    assert typekey.parse_mpk(b"\x03" + good[1:]) is None
    with pytest.raises(EncodingError, match="version 3, expected 2"):
        MasterPublicKey.from_bytes(b"\x03" + good[1:])
    assert typekey.parse_mpk(good[1:]) is None  # no version byte
    assert typekey.parse_mpk(b"\x02" + ref.encode_g1(ref.g1_point_off_subgroup())) is None


@pytest.mark.parametrize("owner", IDENTITIES[1:3])
def test_both_refuse_a_key_presented_for_another_owner(keys: Keyring, owner: str) -> None:
    raw = keys.tpk[ALICE, LAB].to_bytes()
    assert not _chaincode_accepts(raw, keys.mpk.to_bytes(), owner=owner)
    assert not _sdk_accepts(raw, keys, owner=owner)
