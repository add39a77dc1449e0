"""The exponentiation behind GT's subgroup check (``pairing._pow_int``, a sliding window) equals
plain square-and-multiply for any Fp12 element — in the subgroup or not — and any exponent, so
the faster check accepts and rejects exactly what the plain one did."""

from __future__ import annotations

import _bls12_381_ref as ref
import pymcl
from hypothesis import given, settings
from hypothesis import strategies as st

from ehrshare.hazmat.pairing import ORDER, _pow_int, gt_generator


def _square_and_multiply(x: pymcl.GT, n: int) -> pymcl.GT:
    result, base = pymcl.GT(), x
    while n:
        if n & 1:
            result = result * base
        base = base * base
        n >>= 1
    return result


def _fp12(coefficients: list[int]) -> pymcl.GT:
    return pymcl.GT.deserialize(b"".join((c % ref.P).to_bytes(48, "little") for c in coefficients))


_ELEMENT = st.lists(st.integers(0, ref.P - 1), min_size=12, max_size=12).map(_fp12)
_EXPONENT = st.one_of(
    st.integers(0, 2**12),
    st.integers(0, 2**300),
    st.sampled_from([ORDER, ORDER - 1, ORDER + 1, 2**255 - 1, 2**64 + 1]),
)


@settings(max_examples=40, deadline=None)
@given(x=_ELEMENT, n=_EXPONENT)
def test_window_pow_equals_square_and_multiply(x: pymcl.GT, n: int) -> None:
    assert _pow_int(x, n).serialize() == _square_and_multiply(x, n).serialize()


def test_the_subgroup_check_separates_members_from_non_members() -> None:
    member = (gt_generator() * gt_generator())._v
    assert _pow_int(member, ORDER).is_one()
    outside = _fp12([2] + [0] * 11)  # 2 ∈ Fp: its order divides p − 1, not r
    assert not _pow_int(outside, ORDER).is_one()
    assert _pow_int(outside, ORDER).serialize() == _square_and_multiply(outside, ORDER).serialize()
