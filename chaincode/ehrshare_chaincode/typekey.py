"""The chaincode's check of a published type public key: tags and proof of knowledge.

A type key ``T = h·mpk`` carries a Schnorr proof (c, z) of knowledge of h in base mpk whose
challenge binds mpk, T, the commitment and the owner's and type's tags (the format is in
docs/crypto-format.md §5; ``ehrshare.hazmat.tipre`` makes and checks the same proof). Without it
anyone able to write the entry could publish ``T = y·P1`` and read new records with ``y·Q_i``.

The chaincode must not import the SDK or a pairing library, so this module carries the little
of BLS12-381 G1 it needs in pure Python: decoding mcl's compressed encoding (with curve and
subgroup checks), scalar multiplication, and the SDK's hash to a scalar. Everything here is
public data, so it is not constant-time. It must not read state: the contract passes it bytes.
"""

from __future__ import annotations

import hashlib

from .stub import ChaincodeError

__all__ = ["KEY_SIZE", "KEY_VERSION", "check_type_key", "parse_mpk"]

KEY_VERSION = 2
_TAG = 32
_G1 = 48
KEY_SIZE = 1 + 2 * _TAG + _G1 + 64
_MPK_SIZE = 1 + _G1

_P = int(
    "1a0111ea397fe69a4b1ba7b6434bacd764774b84f38512bf6730d2a0f6b0f6241eabfffeb153ffffb9feffffffffaaab",
    16,
)
_R = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001

# Domain-separation tags, byte for byte those of ehrshare.hazmat.tipre / pairing.
_DST_ID_TAG = b"ehrshare/v1/tipre/identity-tag"
_DST_TYPE_TAG = b"ehrshare/v1/tipre/type-tag"
_DST_TPK_PROOF = b"ehrshare/v2/tipre/type-key-proof/challenge"
_DST_HASH_TO_SCALAR = b"ehrshare/v1/hash-to-scalar"

_Jac = tuple[int, int, int]
_INF: _Jac = (1, 1, 0)


def _frame(dst: bytes, *parts: bytes) -> bytes:
    out = bytearray([len(dst)]) + dst
    for part in parts:
        out += len(part).to_bytes(8, "big") + part
    return bytes(out)


def _tag(dst: bytes, label: str) -> bytes:
    return hashlib.sha256(_frame(dst, label.encode("utf-8"))).digest()


def _hash_to_scalar(dst: bytes, *parts: bytes) -> int:
    msg = _frame(_DST_HASH_TO_SCALAR, _frame(dst, *parts))
    counter = 0
    while True:
        v = int.from_bytes(hashlib.sha512(msg + bytes([counter])).digest(), "big") % _R
        if v:
            return v
        counter += 1  # pragma: no cover - probability 2^-255


def _double(pt: _Jac) -> _Jac:
    x, y, z = pt
    if z == 0 or y == 0:
        return _INF
    a = x * x % _P
    b = y * y % _P
    c = b * b % _P
    d = 2 * ((x + b) * (x + b) - a - c) % _P
    e = 3 * a % _P
    x3 = (e * e - 2 * d) % _P
    return (x3, (e * (d - x3) - 8 * c) % _P, 2 * y * z % _P)


def _add(p1: _Jac, p2: _Jac) -> _Jac:
    if p1[2] == 0:
        return p2
    if p2[2] == 0:
        return p1
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    z1z1 = z1 * z1 % _P
    z2z2 = z2 * z2 % _P
    u1 = x1 * z2z2 % _P
    u2 = x2 * z1z1 % _P
    s1 = y1 * z2 * z2z2 % _P
    s2 = y2 * z1 * z1z1 % _P
    if u1 == u2:
        return _double(p1) if s1 == s2 else _INF
    h = (u2 - u1) % _P
    r = (s2 - s1) % _P
    hh = h * h % _P
    hhh = h * hh % _P
    v = u1 * hh % _P
    x3 = (r * r - hhh - 2 * v) % _P
    return (x3, (r * (v - x3) - s1 * hhh) % _P, z1 * z2 * h % _P)


def _mul(pt: _Jac, k: int) -> _Jac:
    result = _INF
    for bit in bin(k)[2:]:
        result = _double(result)
        if bit == "1":
            result = _add(result, pt)
    return result


def _neg(pt: _Jac) -> _Jac:
    return (pt[0], -pt[1] % _P, pt[2])


def _encode(pt: _Jac) -> bytes:
    """mcl's compressed G1 encoding: x little-endian, top bit of the last byte = y odd."""
    x, y, z = pt
    if z == 0:
        return bytes(_G1)
    zi = pow(z, -1, _P)
    zi2 = zi * zi % _P
    ax, ay = x * zi2 % _P, y * zi2 * zi % _P
    out = bytearray(ax.to_bytes(_G1, "little"))
    if ay & 1:
        out[-1] |= 0x80
    return bytes(out)


def _decode(b: bytes) -> _Jac | None:
    """A non-identity point of the order-r subgroup, or None for anything else."""
    if len(b) != _G1 or not any(b):
        return None
    odd = b[-1] >> 7
    x = int.from_bytes(b[:-1] + bytes([b[-1] & 0x7F]), "little")
    if x >= _P:
        return None
    rhs = (x * x * x + 4) % _P
    y = pow(rhs, (_P + 1) // 4, _P)
    if y * y % _P != rhs:
        return None
    if y & 1 != odd:
        y = _P - y
    pt = (x, y, 1)
    if _mul(pt, _R)[2] != 0:
        return None
    return pt


def parse_mpk(raw: bytes) -> bytes | None:
    """The 48-byte point of a serialised master public key, or None. Versions 1 and 2 encode
    the mpk alike (it does not involve H1), so a DKG finished before version 2 still serves."""
    if len(raw) != _MPK_SIZE or raw[0] not in (1, KEY_VERSION) or _decode(raw[1:]) is None:
        return None
    return raw[1:]


def check_type_key(raw: bytes, *, owner: str, record_type: str, mpk_point: bytes) -> None:
    """Raise ChaincodeError unless ``raw`` is ``owner``'s key for ``record_type`` with a valid
    proof of knowledge under the master public key ``mpk_point`` (48 bytes, already parsed)."""
    what = f"type key {record_type}"
    if len(raw) != KEY_SIZE:
        raise ChaincodeError(f"{what} is {len(raw)} bytes; a type key is {KEY_SIZE} bytes")
    if raw[0] != KEY_VERSION:
        raise ChaincodeError(
            f"{what} has format version {raw[0]}; only version {KEY_VERSION} (with a proof of "
            "knowledge) is accepted"
        )
    owner_tag, type_tag = raw[1 : 1 + _TAG], raw[1 + _TAG : 1 + 2 * _TAG]
    if owner_tag != _tag(_DST_ID_TAG, owner):
        raise ChaincodeError(f"{what} is not bound to identity {owner}")
    if type_tag != _tag(_DST_TYPE_TAG, record_type):
        raise ChaincodeError(f"{what} is bound to another record type")
    t_bytes = raw[1 + 2 * _TAG : 1 + 2 * _TAG + _G1]
    t = _decode(t_bytes)
    if t is None:
        raise ChaincodeError(f"{what} is not a point of the order-r subgroup of G1")
    c = int.from_bytes(raw[-64:-32], "big")
    z = int.from_bytes(raw[-32:], "big")
    mpk = _decode(mpk_point)
    if c >= _R or z >= _R or mpk is None:
        raise ChaincodeError(f"{what} has no valid proof of knowledge")
    commitment = _add(_mul(mpk, z), _neg(_mul(t, c)))
    expected = _hash_to_scalar(
        _DST_TPK_PROOF, mpk_point, t_bytes, _encode(commitment), owner_tag, type_tag
    )
    if expected != c:
        raise ChaincodeError(f"{what} has no valid proof of knowledge")
