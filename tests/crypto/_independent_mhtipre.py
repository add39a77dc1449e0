"""An independent MH-TIPRE decryptor, written from docs/crypto-format.md for the tests only.

It uses py_ecc's BLS12-381 (a different, pure-Python pairing library with its own RFC 9380
hash to G2) and pyca/cryptography's HKDF and AES-GCM, and imports nothing of ehrshare: if this
decrypts the known-answer vectors, the format document says enough to interoperate. Slow (about
a second per pairing); never use it outside tests.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from py_ecc.bls.hash_to_curve import hash_to_G2
from py_ecc.optimized_bls12_381 import (
    FQ,
    FQ2,
    FQ12,
    G1,
    G2,
    b,
    b2,
    curve_order,
    field_modulus,
    is_on_curve,
    multiply,
    normalize,
    pairing,
)

P = field_modulus
R = curve_order

# crypto-format.md §4: domain-separation tags.
DST_H1 = b"EHRSHARE-V02-CS01-with-BLS12381G2_XMD:SHA-256_SSWU_RO_"
DST_H2 = b"ehrshare/v1/tipre/H2/type-exponent"
DST_H3 = b"ehrshare/v1/tipre/H3/GT-to-Zr"
DST_ID_TAG = b"ehrshare/v1/tipre/identity-tag"
DST_TYPE_TAG = b"ehrshare/v1/tipre/type-tag"
DST_HASH_TO_SCALAR = b"ehrshare/v1/hash-to-scalar"
DST_KDF = b"ehrshare/v1/record-key/hkdf-sha256"
DST_AAD = b"ehrshare/v1/record-aad"
VERSION = 2

Point = Any  # py_ecc's projective (x, y, z) tuples


# --- framing and hashes (§4) -------------------------------------------------------------------


def frame(dst: bytes, *parts: bytes) -> bytes:
    out = bytes([len(dst)]) + dst
    for part in parts:
        out += len(part).to_bytes(8, "big") + part
    return out


def tag(dst: bytes, label: str) -> bytes:
    return hashlib.sha256(frame(dst, label.encode("utf-8"))).digest()


def hash_to_scalar(dst: bytes, *parts: bytes) -> int:
    msg = frame(DST_HASH_TO_SCALAR, frame(dst, *parts))
    counter = 0
    while True:
        v = int.from_bytes(hashlib.sha512(msg + bytes([counter])).digest(), "big") % R
        if v:
            return v
        counter += 1


# --- encodings (§2) ----------------------------------------------------------------------------


def _fp_sqrt(v: int) -> int | None:
    y = pow(v, (P + 1) // 4, P)
    return y if y * y % P == v % P else None


def _fp2_sqrt(a0: int, a1: int) -> tuple[int, int] | None:
    if a1 == 0:
        y = _fp_sqrt(a0)
        if y is not None:
            return (y, 0)
        y = _fp_sqrt(-a0 % P)
        return None if y is None else (0, y)
    n = _fp_sqrt((a0 * a0 + a1 * a1) % P)
    if n is None:
        return None
    inv2 = pow(2, P - 2, P)
    for cand in ((a0 + n) * inv2 % P, (a0 - n) * inv2 % P):
        x0 = _fp_sqrt(cand)
        if x0:
            return (x0, a1 * pow(2 * x0, P - 2, P) % P)
    return None


def decode_g1(data: bytes) -> Point:
    assert len(data) == 48
    odd = data[-1] >> 7
    x = int.from_bytes(data[:-1] + bytes([data[-1] & 0x7F]), "little")
    y = _fp_sqrt((x * x * x + 4) % P)
    assert y is not None, "not on the curve"
    if y & 1 != odd:
        y = P - y
    pt = (FQ(x), FQ(y), FQ(1))
    assert is_on_curve(pt, b) and multiply(pt, R)[2] == FQ(0)
    return pt


def decode_g2(data: bytes) -> Point:
    assert len(data) == 96
    odd = data[-1] >> 7
    x0 = int.from_bytes(data[:48], "little")
    x1 = int.from_bytes(data[48:95] + bytes([data[95] & 0x7F]), "little")
    x = FQ2([x0, x1])
    rhs = x * x * x + b2
    root = _fp2_sqrt(_c(rhs.coeffs[0]), _c(rhs.coeffs[1]))
    assert root is not None, "not on the twist"
    y0, y1 = root
    if y0 & 1 != odd:
        y0, y1 = (P - y0) % P, (P - y1) % P
    pt = (x, FQ2([y0, y1]), FQ2([1, 0]))
    assert is_on_curve(pt, b2) and multiply(pt, R)[2] == FQ2([0, 0])
    return pt


def _c(v: Any) -> int:
    return v.n if hasattr(v, "n") else int(v)


def encode_g2(pt: Point) -> bytes:
    ax, ay = normalize(pt)
    xc = [_c(c) for c in ax.coeffs]
    yc = [_c(c) for c in ay.coeffs]
    out = bytearray(xc[0].to_bytes(48, "little") + xc[1].to_bytes(48, "little"))
    if yc[0] & 1:
        out[-1] |= 0x80
    return bytes(out)


def decode_gt(data: bytes) -> FQ12:
    """576 bytes: the twelve Fp coefficients of the tower Fp12 = Fp6[w]/(w² − v),
    Fp6 = Fp2[v]/(v³ − (1 + i)), Fp2 = Fp[i]/(i² + 1), in the order
    c0.c0.c0, c0.c0.c1, c0.c1.c0, …, c1.c2.c1 (48 bytes little-endian each); mapped to py_ecc's
    Fp[w]/(w¹² − 2w⁶ + 2) by v = w², i = w⁶ − 1."""
    assert len(data) == 576
    coeffs = [0] * 12
    for k in range(12):
        v = int.from_bytes(data[48 * k : 48 * k + 48], "little")
        e = k // 6 + 2 * ((k % 6) // 2)
        if k % 2 == 0:
            coeffs[e] += v
        else:
            coeffs[e + 6] += v
            coeffs[e] -= v
    return FQ12([c % P for c in coeffs])


def encode_gt(x: FQ12) -> bytes:
    c = [_c(v) for v in x.coeffs]
    out = b""
    for k in range(12):
        e = k // 6 + 2 * ((k % 6) // 2)
        v = c[e + 6] if k % 2 else (c[e] + c[e + 6]) % P
        out += v.to_bytes(48, "little")
    return out


def e(p1: Point, q2: Point) -> FQ12:
    """The pairing as ehrshare computes it (mcl): py_ecc's pairing to the power −3 (§3)."""
    return (pairing(q2, p1) ** 3).inv()


# --- keys and capsules (§5, §6) -----------------------------------------------------------------


def h1(identity: str) -> Point:
    return hash_to_G2(identity.encode("utf-8"), DST_H1, hashlib.sha256)


def identity_key(secret_bytes: bytes) -> tuple[str, Point]:
    assert secret_bytes[0] == VERSION
    return secret_bytes[97:].decode("utf-8"), decode_g2(secret_bytes[1:97])


def key_matches(identity: str, sk: Point, mpk_bytes: bytes) -> bool:
    """e(P1, sk) == e(mpk, H1(id)) (an exponent on both sides does not matter here)."""
    assert mpk_bytes[0] == VERSION
    mpk = decode_g1(mpk_bytes[1:])
    return pairing(sk, G1) == pairing(h1(identity), mpk)


def type_secret(sk: Point, type_label: str) -> Point:
    h = hash_to_scalar(DST_H2, encode_g2(sk), tag(DST_TYPE_TAG, type_label))
    return multiply(sk, h)


def decrypt_capsule(capsule: bytes, d: Point) -> bytes:
    """The encapsulated GT element, as its 576 bytes."""
    assert capsule[0] == VERSION
    hops = capsule[1]
    ttag = capsule[2:34]
    layer = 32 + 48 + 576
    layers = []
    for i in range(hops + 1):
        raw = capsule[34 + i * layer : 34 + (i + 1) * layer]
        layers.append((raw[:32], decode_g1(raw[32:80]), decode_gt(raw[80:])))
    _, u, v = layers[-1]
    x = v * e(u, d).inv()
    for i in range(hops - 1, -1, -1):
        h3 = hash_to_scalar(DST_H3, encode_gt(x), ttag, layers[i][0], layers[i + 1][0])
        x = layers[i][2] * e(multiply(layers[i][1], h3), G2).inv()
    return encode_gt(x)


def decrypt_record(
    sealed: bytes, m: bytes, *, record_id: str, owner: str, type_label: str
) -> bytes:
    binding = frame(
        DST_AAD,
        bytes([1]),
        record_id.encode("utf-8"),
        owner.encode("utf-8"),
        type_label.encode("utf-8"),
    )
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=frame(DST_KDF, binding)
    ).derive(m)
    header = sealed[:16]
    assert header[:4] == b"EHRS" and header[4] == 1
    chunk = int.from_bytes(header[5:9], "big")
    prefix = header[9:16]
    body = sealed[16:]
    aead = AESGCM(key)
    out = b""
    index = 0
    while True:
        piece, body = body[: chunk + 16], body[chunk + 16 :]
        last = not body
        nonce = prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
        out += aead.decrypt(nonce, piece, header + binding)
        index += 1
        if last:
            return out
