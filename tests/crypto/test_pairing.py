"""The pairing adapter parses strictly, hashes with domain separation and computes correctly."""

from __future__ import annotations

import os

import _bls12_381_ref as ref
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ehrshare.hazmat.errors import EncodingError
from ehrshare.hazmat.pairing import (
    G1,
    G2,
    GT,
    ORDER,
    Scalar,
    frame,
    gt_generator,
    multi_pair,
    pair,
)

scalars = st.integers(min_value=1, max_value=ORDER - 1).map(Scalar.from_int)


def test_order_is_the_bls12_381_group_order() -> None:
    assert ref.R == ORDER


def test_pairing_is_bilinear() -> None:
    a, b = Scalar.random(), Scalar.random()
    p, q = G1.generator(), G2.generator()
    assert pair(a * p, b * q) == pair(p, q) ** (a * b)
    assert pair(p + p, q) == pair(p, q) * pair(p, q)
    assert not pair(p, q).is_one()


def test_multi_pair_is_the_product_of_pairings() -> None:
    a, b = Scalar.random(), Scalar.random()
    p, q = G1.generator(), G2.generator()
    assert multi_pair([(a * p, q), (b * p, q)]) == pair((a + b) * p, q)
    assert multi_pair([]).is_one()


@given(scalars)
def test_scalar_round_trip(k: Scalar) -> None:
    assert Scalar.from_bytes(k.to_bytes()) == k
    assert len(k.to_bytes()) == 32
    assert Scalar.from_int(int(k)) == k


@given(scalars)
def test_g1_and_g2_round_trip(k: Scalar) -> None:
    p = k * G1.generator()
    q = k * G2.generator()
    assert G1.from_bytes(p.to_bytes()) == p
    assert G2.from_bytes(q.to_bytes()) == q


@settings(max_examples=15)
@given(scalars)
def test_gt_round_trip(k: Scalar) -> None:
    x = gt_generator() ** k
    assert GT.from_bytes(x.to_bytes()) == x


def test_scalar_arithmetic() -> None:
    a, b = Scalar.random(), Scalar.random()
    assert (a + b) - b == a
    assert (a * b) / b == a
    assert a * a.inverse() == Scalar.from_int(1)
    assert -a + a == Scalar.from_int(0)
    assert Scalar.from_int(0).is_zero()
    with pytest.raises(ZeroDivisionError):
        Scalar.from_int(0).inverse()
    assert Scalar.from_int(-1) == Scalar.from_int(ORDER - 1)


def test_scalar_from_bytes_rejects_the_order_and_wrong_lengths() -> None:
    with pytest.raises(EncodingError, match="below the group order"):
        Scalar.from_bytes(ORDER.to_bytes(32, "big"))
    with pytest.raises(EncodingError, match="32 bytes, got 31"):
        Scalar.from_bytes(bytes(31))


def test_random_scalars_use_the_injected_rng_and_are_never_zero() -> None:
    calls = iter([bytes(64), (5).to_bytes(64, "big")])
    assert int(Scalar.random(lambda n: next(calls))) == 5


def test_secret_bearing_values_hide_their_repr_and_refuse_hashing() -> None:
    k = Scalar.from_int(123456789)
    assert "123456789" not in repr(k)
    m = GT.random()
    assert m.to_bytes().hex()[:16] not in repr(m)
    # G2 holds identity keys, partial keys and re-key components
    sk_like = k * G2.generator()
    assert repr(sk_like) == "G2(<hidden>)"
    assert sk_like.to_bytes().hex()[:8] not in repr(sk_like)
    with pytest.raises(TypeError):
        hash(k)
    with pytest.raises(TypeError):
        hash(m)


def test_hashes_are_domain_separated() -> None:
    assert G1.hash(b"A", b"x") != G1.hash(b"B", b"x")
    assert G2.hash(b"A", b"x") != G2.hash(b"B", b"x")
    assert Scalar.hash(b"A", b"x") != Scalar.hash(b"B", b"x")
    # length framing: moving a byte between parts changes the hash
    assert Scalar.hash(b"A", b"ab", b"c") != Scalar.hash(b"A", b"a", b"bc")
    assert frame(b"A", b"ab", b"c") != frame(b"A", b"a", b"bc")
    assert G2.hash(b"A", b"x") == G2.hash(b"A", b"x")


@pytest.mark.parametrize(("cls", "size"), [(G1, 48), (G2, 96)])
def test_points_reject_wrong_lengths(cls: type[G1] | type[G2], size: int) -> None:
    good = cls.generator().to_bytes()
    with pytest.raises(EncodingError, match=f"must be {size} bytes, got {size - 1}"):
        cls.from_bytes(good[:-1])
    # pymcl itself would accept a trailing byte
    with pytest.raises(EncodingError, match=f"must be {size} bytes, got {size + 1}"):
        cls.from_bytes(good + b"\x00")


@pytest.mark.parametrize("cls", [G1, G2])
def test_points_reject_the_identity(cls: type[G1] | type[G2]) -> None:
    with pytest.raises(EncodingError, match="identity"):
        cls.from_bytes(bytes(cls.SIZE))
    assert cls.identity().is_identity()


def test_g2_rejects_g1_bytes_and_g1_rejects_g2_halves() -> None:
    g1 = G1.generator().to_bytes()
    with pytest.raises(EncodingError, match="not a valid G2"):
        G2.from_bytes(g1 + g1)
    with pytest.raises(EncodingError):
        G1.from_bytes(G2.generator().to_bytes()[:48])


def test_points_reject_bytes_not_on_the_curve() -> None:
    # x = 1: 1 + 4 = 5 is not a square mod p, so no point has this x
    assert pow(5, (ref.P - 1) // 2, ref.P) == ref.P - 1
    with pytest.raises(EncodingError, match="not a valid G1"):
        G1.from_bytes((1).to_bytes(48, "little"))


def test_g1_rejects_a_curve_point_outside_the_subgroup() -> None:
    pt = ref.g1_point_off_subgroup()
    with pytest.raises(EncodingError, match="not in the order-r subgroup"):
        G1.from_bytes(ref.encode_g1(pt))
    # the same encoder on the cofactor-cleared point is accepted, so the rejection above is
    # about the subgroup, not about the encoding
    cleared = ref.g1_mul(pt, ref.H1)
    assert cleared is not None
    assert G1.from_bytes(ref.encode_g1(cleared)).to_bytes() == ref.encode_g1(cleared)


def test_g2_rejects_a_curve_point_outside_the_subgroup() -> None:
    pt = ref.g2_point_off_subgroup()
    with pytest.raises(EncodingError, match="not in the order-r subgroup"):
        G2.from_bytes(ref.encode_g2(pt))
    cleared = ref.g2_mul(pt, ref.H2)
    assert cleared is not None
    assert G2.from_bytes(ref.encode_g2(cleared)).to_bytes() == ref.encode_g2(cleared)


def test_gt_rejects_one_zero_wrong_length_and_non_members() -> None:
    with pytest.raises(EncodingError, match="is 1"):
        GT.from_bytes(GT.one().to_bytes())
    with pytest.raises(EncodingError, match="zero"):
        GT.from_bytes(bytes(576))
    with pytest.raises(EncodingError, match="576 bytes, got 575"):
        GT.from_bytes(gt_generator().to_bytes()[:-1])
    # 2 ∈ Fp ⊂ Fp12 is a valid field element but its order does not divide r
    with pytest.raises(EncodingError, match="not in the order-r subgroup"):
        GT.from_bytes((2).to_bytes(48, "little") + bytes(528))
    with pytest.raises(EncodingError):
        GT.from_bytes(os.urandom(576))


@given(st.integers(min_value=0, max_value=48 * 8 - 1))
def test_any_flipped_bit_of_a_g1_point_is_rejected_or_a_different_point(bit: int) -> None:
    good = G1.generator().to_bytes()
    bad = bytearray(good)
    bad[bit // 8] ^= 1 << (bit % 8)
    try:
        parsed = G1.from_bytes(bytes(bad))
    except EncodingError:
        return
    assert parsed != G1.generator()


def test_points_are_immutable() -> None:
    p = G1.generator()
    with pytest.raises(AttributeError):
        p._v = None  # type: ignore[misc]
