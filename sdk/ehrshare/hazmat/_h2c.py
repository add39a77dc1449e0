"""RFC 9380 hash-to-curve for BLS12-381 G2, suite ``BLS12381G2_XMD:SHA-256_SSWU_RO_``.

Pure Python with integers, so the result does not depend on the pairing library's own
map-to-curve (mcl, as pymcl initialises it, maps in its legacy mode: not this suite). The point
is returned in affine coordinates over Fp2 = Fp[i]/(i² + 1); :mod:`ehrshare.hazmat.pairing`
encodes it in mcl's format and loads it there (mcl checks curve and subgroup membership again).

Inputs here are public (identities), so the code is not constant-time. It must not import the
pairing library, log, or be used for secret messages.

Steps (RFC 9380 §3, §5.3.1, §6.6.2, §6.6.3, Appendix E.3, Appendix G.3): expand_message_xmd with
SHA-256 → two Fp2 elements u0, u1 (L = 64) → simplified SWU on the 3-isogenous curve E2' → the
3-isogeny to E2 → Q0 + Q1 → clear_cofactor by the ψ method (equal to multiplication by h_eff).
"""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = ["SUITE", "P", "expand_message_xmd", "hash_to_field_fp2", "hash_to_g2_affine"]

SUITE: Final = b"BLS12381G2_XMD:SHA-256_SSWU_RO_"

P: Final = int(
    "1a0111ea397fe69a4b1ba7b6434bacd764774b84f38512bf6730d2a0f6b0f6241eabfffeb153ffffb9feffffffffaaab",
    16,
)
_L: Final = 64  # ceil((ceil(log2(p)) + k) / 8) with k = 128
_BLS_X: Final = -0xD201000000010000  # the BLS12-381 parameter x (negative)

Fp2 = tuple[int, int]
# A point in Jacobian coordinates (X, Y, Z): x = X/Z², y = Y/Z³; Z = 0 is the point at infinity.
_Jac = tuple[Fp2, Fp2, Fp2]


def expand_message_xmd(msg: bytes, dst: bytes, len_in_bytes: int) -> bytes:
    """RFC 9380 §5.3.1 with SHA-256 (b_in_bytes 32, s_in_bytes 64)."""
    if len(dst) > 255:
        raise ValueError(f"a DST must be at most 255 bytes, got {len(dst)}")
    ell = -(-len_in_bytes // 32)
    if ell > 255 or len_in_bytes > 65535:
        raise ValueError(f"expand_message_xmd cannot produce {len_in_bytes} bytes")
    dst_prime = dst + bytes([len(dst)])
    msg_prime = bytes(64) + msg + len_in_bytes.to_bytes(2, "big") + b"\x00" + dst_prime
    b0 = hashlib.sha256(msg_prime).digest()
    blocks = [hashlib.sha256(b0 + b"\x01" + dst_prime).digest()]
    for i in range(2, ell + 1):
        mixed = bytes(x ^ y for x, y in zip(b0, blocks[-1], strict=True))
        blocks.append(hashlib.sha256(mixed + bytes([i]) + dst_prime).digest())
    return b"".join(blocks)[:len_in_bytes]


def hash_to_field_fp2(msg: bytes, dst: bytes, count: int) -> list[Fp2]:
    """RFC 9380 §5.2 for Fp2 (m = 2, L = 64)."""
    uniform = expand_message_xmd(msg, dst, count * 2 * _L)
    out: list[Fp2] = []
    for i in range(count):
        off = i * 2 * _L
        e0 = int.from_bytes(uniform[off : off + _L], "big") % P
        e1 = int.from_bytes(uniform[off + _L : off + 2 * _L], "big") % P
        out.append((e0, e1))
    return out


# --- Fp2 arithmetic ------------------------------------------------------------------------


def _add(a: Fp2, b: Fp2) -> Fp2:
    return ((a[0] + b[0]) % P, (a[1] + b[1]) % P)


def _sub(a: Fp2, b: Fp2) -> Fp2:
    return ((a[0] - b[0]) % P, (a[1] - b[1]) % P)


def _mul(a: Fp2, b: Fp2) -> Fp2:
    t0 = a[0] * b[0]
    t1 = a[1] * b[1]
    return ((t0 - t1) % P, ((a[0] + a[1]) * (b[0] + b[1]) - t0 - t1) % P)


def _sqr(a: Fp2) -> Fp2:
    return ((a[0] + a[1]) * (a[0] - a[1]) % P, 2 * a[0] * a[1] % P)


def _neg(a: Fp2) -> Fp2:
    return (-a[0] % P, -a[1] % P)


def _inv(a: Fp2) -> Fp2:
    n = pow((a[0] * a[0] + a[1] * a[1]) % P, -1, P)
    return (a[0] * n % P, -a[1] * n % P)


def _conj(a: Fp2) -> Fp2:
    return (a[0], -a[1] % P)


def _pow(a: Fp2, e: int) -> Fp2:
    out: Fp2 = (1, 0)
    while e:
        if e & 1:
            out = _mul(out, a)
        a = _sqr(a)
        e >>= 1
    return out


def _is_zero(a: Fp2) -> bool:
    return a[0] == 0 and a[1] == 0


def _fp_is_square(v: int) -> bool:
    return v % P == 0 or pow(v, (P - 1) // 2, P) == 1


def _fp_sqrt(v: int) -> int:
    return pow(v, (P + 1) // 4, P)  # p ≡ 3 (mod 4); caller ensures v is a square


def _is_square(a: Fp2) -> bool:
    # a is a square in Fp2 exactly when its norm a0² + a1² is a square in Fp.
    return _fp_is_square(a[0] * a[0] + a[1] * a[1])


def _sqrt(a: Fp2) -> Fp2:
    """A square root of a square a (either of the two; the caller fixes the sign)."""
    a0, a1 = a
    if a1 == 0:
        if _fp_is_square(a0):
            return (_fp_sqrt(a0), 0)
        return (0, _fp_sqrt(-a0 % P))  # -1 is not a square mod p, so -a0 is
    n = _fp_sqrt((a0 * a0 + a1 * a1) % P)
    half = pow(2, -1, P)
    x0sq = (a0 + n) * half % P
    if not _fp_is_square(x0sq):
        x0sq = (a0 - n) * half % P
    x0 = _fp_sqrt(x0sq)
    x1 = a1 * pow(2 * x0, -1, P) % P
    root = (x0, x1)
    if _sqr(root) != (a0 % P, a1 % P):  # pragma: no cover - would be an arithmetic bug
        raise ArithmeticError("Fp2 square root failed")
    return root


def _sgn0(a: Fp2) -> int:
    # RFC 9380 §4.1, m = 2.
    sign_0 = a[0] & 1
    zero_0 = a[0] == 0
    sign_1 = a[1] & 1
    return sign_0 | (zero_0 & sign_1)


# --- simplified SWU on E2': y² = x³ + A'x + B', and the 3-isogeny to E2: y² = x³ + 4(1 + i) ---

_A: Final[Fp2] = (0, 240)
_B: Final[Fp2] = (1012, 1012)
_Z: Final[Fp2] = (-2 % P, -1 % P)
_B_OVER_ZA: Final = _mul(_B, _inv(_mul(_Z, _A)))
_MINUS_B_OVER_A: Final = _neg(_mul(_B, _inv(_A)))


def _map_to_curve_sswu(u: Fp2) -> tuple[Fp2, Fp2]:
    """RFC 9380 §6.6.2, straight from its definition (not constant-time: inputs are public)."""
    zu2 = _mul(_Z, _sqr(u))
    tv1 = _add(_sqr(zu2), zu2)
    x1 = _B_OVER_ZA if _is_zero(tv1) else _mul(_MINUS_B_OVER_A, _add((1, 0), _inv(tv1)))
    gx1 = _add(_mul(_add(_sqr(x1), _A), x1), _B)
    if _is_square(gx1):
        x, y = x1, _sqrt(gx1)
    else:
        x = _mul(zu2, x1)
        gx2 = _add(_mul(_add(_sqr(x), _A), x), _B)
        y = _sqrt(gx2)
    if _sgn0(u) != _sgn0(y):
        y = _neg(y)
    return x, y


def _k(c0: str, c1: str) -> Fp2:
    return (int(c0, 16), int(c1, 16))


# RFC 9380 Appendix E.3: coefficients of the 3-isogeny map E2' → E2, lowest degree first;
# x_den and y_den are monic (their leading 1 is appended).
_XNUM: Final = (
    _k(
        "5c759507e8e333ebb5b7a9a47d7ed8532c52d39fd3a042a88b58423c50ae15d5c2638e343d9c71c6238aaaaaaaa97d6",
        "5c759507e8e333ebb5b7a9a47d7ed8532c52d39fd3a042a88b58423c50ae15d5c2638e343d9c71c6238aaaaaaaa97d6",
    ),
    _k(
        "0",
        "11560bf17baa99bc32126fced787c88f984f87adf7ae0c7f9a208c6b4f20a4181472aaa9cb8d555526a9ffffffffc71a",
    ),
    _k(
        "11560bf17baa99bc32126fced787c88f984f87adf7ae0c7f9a208c6b4f20a4181472aaa9cb8d555526a9ffffffffc71e",
        "8ab05f8bdd54cde190937e76bc3e447cc27c3d6fbd7063fcd104635a790520c0a395554e5c6aaaa9354ffffffffe38d",
    ),
    _k(
        "171d6541fa38ccfaed6dea691f5fb614cb14b4e7f4e810aa22d6108f142b85757098e38d0f671c7188e2aaaaaaaa5ed1",
        "0",
    ),
)
_XDEN: Final = (
    _k(
        "0",
        "1a0111ea397fe69a4b1ba7b6434bacd764774b84f38512bf6730d2a0f6b0f6241eabfffeb153ffffb9feffffffffaa63",
    ),
    _k(
        "c",
        "1a0111ea397fe69a4b1ba7b6434bacd764774b84f38512bf6730d2a0f6b0f6241eabfffeb153ffffb9feffffffffaa9f",
    ),
    (1, 0),
)
_YNUM: Final = (
    _k(
        "1530477c7ab4113b59a4c18b076d11930f7da5d4a07f649bf54439d87d27e500fc8c25ebf8c92f6812cfc71c71c6d706",
        "1530477c7ab4113b59a4c18b076d11930f7da5d4a07f649bf54439d87d27e500fc8c25ebf8c92f6812cfc71c71c6d706",
    ),
    _k(
        "0",
        "5c759507e8e333ebb5b7a9a47d7ed8532c52d39fd3a042a88b58423c50ae15d5c2638e343d9c71c6238aaaaaaaa97be",
    ),
    _k(
        "11560bf17baa99bc32126fced787c88f984f87adf7ae0c7f9a208c6b4f20a4181472aaa9cb8d555526a9ffffffffc71c",
        "8ab05f8bdd54cde190937e76bc3e447cc27c3d6fbd7063fcd104635a790520c0a395554e5c6aaaa9354ffffffffe38f",
    ),
    _k(
        "124c9ad43b6cf79bfbf7043de3811ad0761b0f37a1e26286b0e977c69aa274524e79097a56dc4bd9e1b371c71c718b10",
        "0",
    ),
)
_YDEN: Final = (
    _k(
        "1a0111ea397fe69a4b1ba7b6434bacd764774b84f38512bf6730d2a0f6b0f6241eabfffeb153ffffb9feffffffffa8fb",
        "1a0111ea397fe69a4b1ba7b6434bacd764774b84f38512bf6730d2a0f6b0f6241eabfffeb153ffffb9feffffffffa8fb",
    ),
    _k(
        "0",
        "1a0111ea397fe69a4b1ba7b6434bacd764774b84f38512bf6730d2a0f6b0f6241eabfffeb153ffffb9feffffffffa9d3",
    ),
    _k(
        "12",
        "1a0111ea397fe69a4b1ba7b6434bacd764774b84f38512bf6730d2a0f6b0f6241eabfffeb153ffffb9feffffffffaa99",
    ),
    (1, 0),
)


def _poly(coeffs: tuple[Fp2, ...], x: Fp2) -> Fp2:
    acc: Fp2 = (0, 0)
    for c in reversed(coeffs):
        acc = _add(_mul(acc, x), c)
    return acc


def _iso_map(x: Fp2, y: Fp2) -> _Jac:
    x_den = _poly(_XDEN, x)
    y_den = _poly(_YDEN, x)
    if _is_zero(x_den) or _is_zero(y_den):  # pragma: no cover - exceptional inputs, RFC §6.6.3
        return ((1, 0), (1, 0), (0, 0))
    xa = _mul(_poly(_XNUM, x), _inv(x_den))
    ya = _mul(y, _mul(_poly(_YNUM, x), _inv(y_den)))
    return (xa, ya, (1, 0))


# --- E2 arithmetic in Jacobian coordinates (a = 0) ---------------------------------------------

_INF: Final[_Jac] = ((1, 0), (1, 0), (0, 0))


def _double(pt: _Jac) -> _Jac:
    x, y, z = pt
    if _is_zero(z) or _is_zero(y):
        return _INF
    a = _sqr(x)
    b = _sqr(y)
    c = _sqr(b)
    d = _sub(_sqr(_add(x, b)), _add(a, c))
    d = _add(d, d)
    e = _add(_add(a, a), a)
    f = _sqr(e)
    x3 = _sub(f, _add(d, d))
    c8 = _add(c, c)
    c8 = _add(c8, c8)
    c8 = _add(c8, c8)
    y3 = _sub(_mul(e, _sub(d, x3)), c8)
    yz = _mul(y, z)
    return (x3, y3, _add(yz, yz))


def _add_pts(p1: _Jac, p2: _Jac) -> _Jac:
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    if _is_zero(z1):
        return p2
    if _is_zero(z2):
        return p1
    z1z1 = _sqr(z1)
    z2z2 = _sqr(z2)
    u1 = _mul(x1, z2z2)
    u2 = _mul(x2, z1z1)
    s1 = _mul(_mul(y1, z2), z2z2)
    s2 = _mul(_mul(y2, z1), z1z1)
    if u1 == u2:
        if s1 == s2:
            return _double(p1)
        return _INF
    h = _sub(u2, u1)
    r = _sub(s2, s1)
    hh = _sqr(h)
    hhh = _mul(h, hh)
    v = _mul(u1, hh)
    x3 = _sub(_sub(_sqr(r), hhh), _add(v, v))
    y3 = _sub(_mul(r, _sub(v, x3)), _mul(s1, hhh))
    z3 = _mul(_mul(z1, z2), h)
    return (x3, y3, z3)


def _neg_pt(pt: _Jac) -> _Jac:
    return (pt[0], _neg(pt[1]), pt[2])


def _mul_pt(pt: _Jac, k: int) -> _Jac:
    if k < 0:
        return _mul_pt(_neg_pt(pt), -k)
    result = _INF
    for bit in bin(k)[2:]:
        result = _double(result)
        if bit == "1":
            result = _add_pts(result, pt)
    return result


# ψ (RFC 9380 Appendix G.3): ψ(x, y) = (c1·conj(x), c2·conj(y)) with
# c1 = 1 / (1 + i)^((p − 1)/3) and c2 = 1 / (1 + i)^((p − 1)/2).
_PSI_C1: Final = _inv(_pow((1, 1), (P - 1) // 3))
_PSI_C2: Final = _inv(_pow((1, 1), (P - 1) // 2))


def _psi(pt: _Jac) -> _Jac:
    x, y, z = pt
    return (_mul(_PSI_C1, _conj(x)), _mul(_PSI_C2, _conj(y)), _conj(z))


def _clear_cofactor(pt: _Jac) -> _Jac:
    # RFC 9380 Appendix G.3 (Budroni–Pintore): h_eff·P = [x² − x − 1]P + [x − 1]ψ(P) + ψ²(2P).
    t1 = _mul_pt(pt, _BLS_X)
    t2 = _psi(pt)
    t3 = _psi(_psi(_double(pt)))
    t3 = _add_pts(t3, _neg_pt(t2))
    t2 = _add_pts(t1, t2)
    t2 = _mul_pt(t2, _BLS_X)
    t3 = _add_pts(t3, t2)
    t3 = _add_pts(t3, _neg_pt(t1))
    return _add_pts(t3, _neg_pt(pt))


def _to_affine(pt: _Jac) -> tuple[Fp2, Fp2] | None:
    x, y, z = pt
    if _is_zero(z):
        return None
    zi = _inv(z)
    zi2 = _sqr(zi)
    return (_mul(x, zi2), _mul(y, _mul(zi2, zi)))


def hash_to_g2_affine(msg: bytes, dst: bytes) -> tuple[Fp2, Fp2] | None:
    """hash_to_curve(msg) for ``BLS12381G2_XMD:SHA-256_SSWU_RO_``: affine (x, y), None = ∞.

    Coordinates are pairs (c0, c1) meaning c0 + c1·i, each an integer below p.
    """
    if not isinstance(msg, bytes | bytearray) or not isinstance(dst, bytes | bytearray):
        raise TypeError("hash_to_g2 takes bytes")
    if not dst:
        raise ValueError("a DST must not be empty")
    u0, u1 = hash_to_field_fp2(bytes(msg), bytes(dst), 2)
    q0 = _iso_map(*_map_to_curve_sswu(u0))
    q1 = _iso_map(*_map_to_curve_sswu(u1))
    return _to_affine(_clear_cofactor(_add_pts(q0, q1)))
