"""A slow, independent reference for BLS12-381 curve points, used only by tests.

It builds points that pymcl would never produce itself — on the curve but outside the order-r
subgroup — and encodes them in mcl's compressed format, so the tests can prove that the adapter
rejects them. Affine arithmetic with Python integers; never use it outside tests.
"""

from __future__ import annotations

P = int(
    "1A0111EA397FE69A4B1BA7B6434BACD764774B84F38512BF6730D2A0F6B0F6241EABFFFEB153FFFFB9FEFFFFFFFFAAAB",
    16,
)
R = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001
H1 = 0x396C8C005555E1568C00AAAB0000AAAB
H2 = int(
    "5D543A95414E7F1091D50792876A202CD91DE4547085ABAA68A205B2E5A7DDFA"
    "628F1CB4D9E82EF21537E293A6691AE1616EC6E786F0C70CF1C38E31C7238E5",
    16,
)

Fp2 = tuple[int, int]


class _Fp:
    zero = 0
    one = 1

    @staticmethod
    def add(a: int, b: int) -> int:
        return (a + b) % P

    @staticmethod
    def sub(a: int, b: int) -> int:
        return (a - b) % P

    @staticmethod
    def mul(a: int, b: int) -> int:
        return a * b % P

    @staticmethod
    def inv(a: int) -> int:
        return pow(a, P - 2, P)

    @staticmethod
    def from_int(v: int) -> int:
        return v % P


class _Fp2:
    zero = (0, 0)
    one = (1, 0)

    @staticmethod
    def add(a: Fp2, b: Fp2) -> Fp2:
        return ((a[0] + b[0]) % P, (a[1] + b[1]) % P)

    @staticmethod
    def sub(a: Fp2, b: Fp2) -> Fp2:
        return ((a[0] - b[0]) % P, (a[1] - b[1]) % P)

    @staticmethod
    def mul(a: Fp2, b: Fp2) -> Fp2:
        return ((a[0] * b[0] - a[1] * b[1]) % P, (a[0] * b[1] + a[1] * b[0]) % P)

    @staticmethod
    def inv(a: Fp2) -> Fp2:
        norm_inv = pow((a[0] * a[0] + a[1] * a[1]) % P, P - 2, P)
        return (a[0] * norm_inv % P, -a[1] * norm_inv % P)

    @staticmethod
    def from_int(v: int) -> Fp2:
        return (v % P, 0)


def _scalar_mul(field, pt, k):  # type: ignore[no-untyped-def]
    """k·pt on y² = x³ + b in affine coordinates; None is the point at infinity."""

    def add(p1, p2):  # type: ignore[no-untyped-def]
        if p1 is None:
            return p2
        if p2 is None:
            return p1
        (x1, y1), (x2, y2) = p1, p2
        if x1 == x2:
            if field.add(y1, y2) == field.zero:
                return None
            three_x2 = field.mul(field.from_int(3), field.mul(x1, x1))
            lam = field.mul(three_x2, field.inv(field.mul(field.from_int(2), y1)))
        else:
            lam = field.mul(field.sub(y2, y1), field.inv(field.sub(x2, x1)))
        x3 = field.sub(field.sub(field.mul(lam, lam), x1), x2)
        y3 = field.sub(field.mul(lam, field.sub(x1, x3)), y1)
        return (x3, y3)

    result = None
    addend = pt
    while k:
        if k & 1:
            result = add(result, addend)
        addend = add(addend, addend)
        k >>= 1
    return result


def _fp2_pow(a: Fp2, e: int) -> Fp2:
    out: Fp2 = (1, 0)
    while e:
        if e & 1:
            out = _Fp2.mul(out, a)
        a = _Fp2.mul(a, a)
        e >>= 1
    return out


def _fp2_sqrt(a: Fp2) -> Fp2 | None:
    # p² ≡ 9 (mod 16): a candidate root times some 8th root of unity is the root, if any.
    cand = _fp2_pow(a, (P * P + 7) // 16)
    roots = {_fp2_pow((z, 1), (P * P - 1) // 8) for z in range(1, 20)}
    for w in roots:
        c = _Fp2.mul(cand, w)
        if _Fp2.mul(c, c) == (a[0] % P, a[1] % P):
            return c
    return None


def g1_point_off_subgroup() -> tuple[int, int]:
    """A point on E(Fp): y² = x³ + 4 that is not in the order-r subgroup."""
    for x in range(1, 1000):
        rhs = (x**3 + 4) % P
        y = pow(rhs, (P + 1) // 4, P)
        if y * y % P == rhs:
            pt = (x, y)
            if g1_mul(pt, R) is not None:
                return pt
    raise AssertionError("no point found")


def g2_point_off_subgroup() -> tuple[Fp2, Fp2]:
    """A point on E'(Fp2): y² = x³ + 4(1 + i) that is not in the order-r subgroup."""
    for x0 in range(1, 1000):
        x = (x0, 0)
        rhs = _Fp2.add(_Fp2.mul(_Fp2.mul(x, x), x), (4, 4))
        y = _fp2_sqrt(rhs)
        if y is not None:
            pt = (x, y)
            if g2_mul(pt, R) is not None:
                return pt
    raise AssertionError("no point found")


def g1_mul(pt: tuple[int, int], k: int) -> tuple[int, int] | None:
    return _scalar_mul(_Fp, pt, k)  # type: ignore[no-any-return]


def g2_mul(pt: tuple[Fp2, Fp2], k: int) -> tuple[Fp2, Fp2] | None:
    return _scalar_mul(_Fp2, pt, k)  # type: ignore[no-any-return]


def encode_g1(pt: tuple[int, int]) -> bytes:
    """mcl's compressed G1 encoding: x little-endian, top bit of the last byte = y odd."""
    x, y = pt
    out = bytearray(x.to_bytes(48, "little"))
    if y & 1:
        out[-1] |= 0x80
    return bytes(out)


def encode_g2(pt: tuple[Fp2, Fp2]) -> bytes:
    """mcl's compressed G2 encoding: x.a ‖ x.b little-endian, top bit of the last byte = y odd."""
    (xa, xb), (ya, _yb) = pt
    out = bytearray(xa.to_bytes(48, "little") + xb.to_bytes(48, "little"))
    if ya & 1:
        out[-1] |= 0x80
    return bytes(out)
