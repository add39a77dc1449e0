"""The pairing adapter: BLS12-381 groups G1, G2, GT, the scalar field Zr and the pairing.

This is the only module in ehrshare that imports the pairing library (pymcl 1.0.2, bindings to
herumi/mcl). It wraps pymcl's types in immutable classes that

* parse untrusted bytes strictly (exact length, no identity element, on the curve and in the
  order-r subgroup — pymcl accepts trailing bytes and decodes all-zero bytes to the identity
  without complaint, and does not check GT membership at all);
* hash to G2 with RFC 9380 ``BLS12381G2_XMD:SHA-256_SSWU_RO_`` and a caller's DST
  (:func:`hash_to_g2`): pymcl only calls ``initPairing``, so mcl's own hashAndMapTo runs in its
  legacy mode (SHA-512 into the subfield Fp, one Fouque–Tibouchi map — not indifferentiable);
  the standard hash is computed in :mod:`ehrshare.hazmat._h2c` and the point loaded through
  mcl's deserialisation, which checks curve and subgroup membership again;
* serialise scalars big-endian (pymcl's ``Fr`` is little-endian) so the wire format does not
  depend on the library.

It must not hold protocol logic, log anything, or put element bytes into error messages beyond
lengths and kinds (some elements passed through here are secrets).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import pymcl

from ehrshare.hazmat import _h2c
from ehrshare.hazmat.errors import EncodingError

__all__ = [
    "G1",
    "G2",
    "GT",
    "ORDER",
    "RngFn",
    "Scalar",
    "frame",
    "gt_generator",
    "hash_to_g2",
    "multi_pair",
    "pair",
]

RngFn = Callable[[int], bytes]
"""Injectable randomness: ``rng(n)`` returns n uniformly random bytes. Default ``os.urandom``."""

ORDER: Final[int] = int(pymcl.r)
"""r, the prime order of G1, G2, GT and of the scalar field."""

_SCALAR_SIZE: Final = 32
_HASH_TO_SCALAR_DST: Final = b"ehrshare/v1/hash-to-scalar"
_HASH_TO_CURVE_PREFIX: Final = b"ehrshare/v1/hash-to-curve"


def frame(dst: bytes, *parts: bytes) -> bytes:
    """Injective encoding of a domain-separation tag and parts: length-prefixed each.

    Use it whenever several byte strings go into one hash, so that no two different inputs
    (``("ab", "c")`` and ``("a", "bc")``) collide.
    """
    if not isinstance(dst, bytes) or not dst:
        raise ValueError("a domain-separation tag must be non-empty bytes")
    if len(dst) > 255:
        raise ValueError(f"a domain-separation tag must be at most 255 bytes, got {len(dst)}")
    out = bytearray([len(dst)])
    out += dst
    for part in parts:
        if not isinstance(part, bytes | bytearray | memoryview):
            raise TypeError(f"hash inputs must be bytes, got {type(part).__name__}")
        out += len(part).to_bytes(8, "big")
        out += part
    return bytes(out)


def _default_rng(rng: RngFn | None) -> RngFn:
    return os.urandom if rng is None else rng


class Scalar:
    """An element of Zr, the scalar field of BLS12-381. Immutable.

    Scalars are often secrets (master-key shares, type exponents), so ``repr`` does not show the
    value and scalars are not hashable; use :meth:`to_bytes` when the value is public.
    """

    __slots__ = ("_v",)
    _v: pymcl.Fr

    def __init__(self, raw: pymcl.Fr) -> None:
        if not isinstance(raw, pymcl.Fr):
            raise TypeError("Scalar wraps a pymcl.Fr; use Scalar.from_int / from_bytes / random")
        object.__setattr__(self, "_v", raw)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Scalar is immutable")

    @staticmethod
    def from_int(v: int) -> Scalar:
        """The scalar ``v mod r`` (negative values wrap around)."""
        return Scalar(pymcl.Fr.deserialize((v % ORDER).to_bytes(_SCALAR_SIZE, "little")))

    @staticmethod
    def random(rng: RngFn | None = None) -> Scalar:
        """A uniformly random non-zero scalar (64 random bytes reduced mod r: bias < 2^-250)."""
        source = _default_rng(rng)
        while True:
            v = int.from_bytes(source(64), "big") % ORDER
            if v:
                return Scalar.from_int(v)

    @staticmethod
    def hash(dst: bytes, *parts: bytes) -> Scalar:
        """Hash to a non-zero scalar with a domain-separation tag (SHA-512, reduced mod r)."""
        msg = frame(_HASH_TO_SCALAR_DST, frame(dst, *parts))
        counter = 0
        while True:
            digest = hashlib.sha512(msg + counter.to_bytes(1, "big")).digest()
            v = int.from_bytes(digest, "big") % ORDER
            if v:
                return Scalar.from_int(v)
            counter += 1  # pragma: no cover - probability 2^-255

    @staticmethod
    def from_bytes(b: bytes) -> Scalar:
        """Parse 32 bytes big-endian; the value must be below r."""
        if not isinstance(b, bytes | bytearray):
            raise EncodingError(f"scalar must be bytes, got {type(b).__name__}")
        if len(b) != _SCALAR_SIZE:
            raise EncodingError(f"scalar must be {_SCALAR_SIZE} bytes, got {len(b)}")
        v = int.from_bytes(b, "big")
        if v >= ORDER:
            raise EncodingError("scalar must be below the group order r, got a larger value")
        return Scalar.from_int(v)

    def to_bytes(self) -> bytes:
        """32 bytes big-endian."""
        return int(self).to_bytes(_SCALAR_SIZE, "big")

    def __int__(self) -> int:
        return int.from_bytes(self._v.serialize(), "little")

    def is_zero(self) -> bool:
        return bool(self._v.is_zero())

    def inverse(self) -> Scalar:
        """The multiplicative inverse; raises ZeroDivisionError for zero."""
        if self._v.is_zero():
            raise ZeroDivisionError("zero scalar has no inverse")
        return Scalar(~self._v)

    def __add__(self, other: Scalar) -> Scalar:
        if not isinstance(other, Scalar):
            return NotImplemented
        return Scalar(self._v + other._v)

    def __sub__(self, other: Scalar) -> Scalar:
        if not isinstance(other, Scalar):
            return NotImplemented
        return Scalar(self._v - other._v)

    def __mul__(self, other: Scalar) -> Scalar:
        if not isinstance(other, Scalar):
            return NotImplemented
        return Scalar(self._v * other._v)

    def __truediv__(self, other: Scalar) -> Scalar:
        if not isinstance(other, Scalar):
            return NotImplemented
        return self * other.inverse()

    def __neg__(self) -> Scalar:
        return Scalar(-self._v)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Scalar):
            return NotImplemented
        return bool(self._v == other._v)

    __hash__ = None  # type: ignore[assignment]  # scalars are often secrets

    def __repr__(self) -> str:
        return "Scalar(<hidden>)"


_P = TypeVar("_P", bound="_Point")


class _Point:
    """Shared behaviour of G1 and G2 (additive groups of prime order r)."""

    __slots__ = ("_v",)
    # Any: the concrete pymcl class differs per subclass and the stubs make G1 == G2 an error
    _v: Any
    SIZE: int = 0
    _RAW: type[pymcl.G1] | type[pymcl.G2]
    _NAME: str = ""

    def __init__(self, raw: pymcl.G1 | pymcl.G2) -> None:
        if not isinstance(raw, self._RAW):
            raise TypeError(f"{self._NAME} wraps a pymcl.{self._NAME}")
        object.__setattr__(self, "_v", raw)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{self._NAME} is immutable")

    @classmethod
    def identity(cls: type[_P]) -> _P:
        """The neutral element (never accepted by :meth:`from_bytes`)."""
        return cls(cls._RAW())

    @classmethod
    def from_bytes(cls: type[_P], b: bytes) -> _P:
        """Parse a compressed point; rejects wrong length, identity, off-curve and off-subgroup."""
        if not isinstance(b, bytes | bytearray):
            raise EncodingError(f"{cls._NAME} element must be bytes, got {type(b).__name__}")
        if len(b) != cls.SIZE:
            raise EncodingError(f"{cls._NAME} element must be {cls.SIZE} bytes, got {len(b)}")
        if not any(b):
            raise EncodingError(f"{cls._NAME} element is the identity, which is not allowed")
        try:
            # mcl checks the curve equation and, for BLS12-381 as initialised by pymcl, the
            # order-r subgroup (tests/crypto prove both with constructed off-subgroup points).
            raw = cls._RAW.deserialize(bytes(b))
        except ValueError:
            raise EncodingError(
                f"bytes are not a valid {cls._NAME} element "
                "(not on the curve, not in the order-r subgroup, or not canonical)"
            ) from None
        point = cls(raw)
        if point.is_identity():
            raise EncodingError(f"{cls._NAME} element is the identity, which is not allowed")
        if raw.serialize() != bytes(b):
            raise EncodingError(f"{cls._NAME} element is not in canonical form")
        return point

    def to_bytes(self) -> bytes:
        """Compressed encoding, exactly :attr:`SIZE` bytes."""
        return bytes(self._v.serialize())

    def is_identity(self) -> bool:
        return bool(self._v.is_zero())

    def __add__(self: _P, other: _P) -> _P:
        if type(other) is not type(self):
            return NotImplemented
        return type(self)(self._v + other._v)

    def __sub__(self: _P, other: _P) -> _P:
        if type(other) is not type(self):
            return NotImplemented
        return type(self)(self._v - other._v)

    def __neg__(self: _P) -> _P:
        return type(self)(-self._v)

    def __mul__(self: _P, k: Scalar) -> _P:
        if not isinstance(k, Scalar):
            return NotImplemented
        return type(self)(self._v * k._v)

    def __rmul__(self: _P, k: Scalar) -> _P:
        if not isinstance(k, Scalar):
            return NotImplemented
        return type(self)(self._v * k._v)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Point)
        return bool(self._v == other._v)

    def __hash__(self) -> int:
        return hash((self._NAME, self.to_bytes()))

    def __repr__(self) -> str:
        return f"{self._NAME}({self.to_bytes()[:8].hex()}…)"


class G1(_Point):
    """The group G1 of BLS12-381 (48-byte compressed points). Immutable."""

    __slots__ = ()
    SIZE: int = 48
    _RAW = pymcl.G1
    _NAME = "G1"

    @staticmethod
    def generator() -> G1:
        """The standard generator P1."""
        return _G1_GEN

    @staticmethod
    def hash(dst: bytes, data: bytes) -> G1:
        """mcl's legacy hash-and-map to G1 (not RFC 9380; the protocol hashes only to G2).

        Kept for tests of domain separation; do not use it where a random oracle is assumed.
        """
        msg = frame(_HASH_TO_CURVE_PREFIX, frame(dst, data))
        point = G1(pymcl.G1.hash(msg))
        if point.is_identity():  # pragma: no cover - probability 2^-255
            raise ValueError("hash to G1 gave the identity")
        return point


class G2(_Point):
    """The group G2 of BLS12-381 (96-byte compressed points). Immutable.

    Secret keys live in G2 (sk_id, h·sk_id, partial keys d_j, a re-key's K), so ``repr`` hides
    the value: a traceback that shows locals must not print part of a key.
    """

    __slots__ = ()
    SIZE: int = 96
    _RAW = pymcl.G2
    _NAME = "G2"

    def __repr__(self) -> str:
        return "G2(<hidden>)"

    @staticmethod
    def generator() -> G2:
        """The standard generator P2."""
        return _G2_GEN

    @staticmethod
    def hash(dst: bytes, data: bytes) -> G2:
        """RFC 9380 hash to G2 of ``data`` under ``dst``; the same as :func:`hash_to_g2`."""
        return hash_to_g2(data, dst)


def _mcl_g2_bytes(x: tuple[int, int], y: tuple[int, int]) -> bytes:
    # mcl's compressed G2 encoding (not ZCash's): x.c0 ‖ x.c1, each 48 bytes little-endian, and
    # the top bit of the last byte set when y.c0 is odd (docs/crypto-format.md §2).
    out = bytearray(x[0].to_bytes(48, "little") + x[1].to_bytes(48, "little"))
    if y[0] & 1:
        out[-1] |= 0x80
    return bytes(out)


def hash_to_g2(msg: bytes, dst: bytes) -> G2:
    """RFC 9380 ``BLS12381G2_XMD:SHA-256_SSWU_RO_``: hash ``msg`` to G2 under the tag ``dst``.

    Use it for every hash onto G2 that a security argument models as a random oracle (H1).
    Pure Python (a few milliseconds); the result is public, so cache it where it repeats.
    """
    if not isinstance(msg, bytes | bytearray) or not isinstance(dst, bytes | bytearray):
        raise TypeError("hash_to_g2(msg, dst) takes bytes")
    if not dst or len(dst) > 255:
        raise ValueError(f"a DST must be 1 to 255 bytes, got {len(dst)}")
    affine = _h2c.hash_to_g2_affine(bytes(msg), bytes(dst))
    if affine is None:  # pragma: no cover - probability 2^-255
        raise ValueError("hash to G2 gave the identity")
    return G2.from_bytes(_mcl_g2_bytes(*affine))


_G1_GEN: Final = G1(pymcl.g1)
_G2_GEN: Final = G2(pymcl.g2)


_WINDOW: Final = 5


def _pow_int(x: pymcl.GT, n: int) -> pymcl.GT:
    # pymcl only raises GT elements to Fr exponents, which are reduced mod r, so x^r has to be
    # computed here, in exact Fp12 arithmetic that holds for any element, in or out of the
    # subgroup. Left-to-right sliding window over odd powers: for the 255-bit r about 300
    # multiplications instead of the 388 of plain square-and-multiply (0.67 → ~0.5 ms; only
    # untrusted bytes pay it, once per GT element).
    if n == 0:
        return pymcl.GT()
    square = x * x
    odd = [x]  # odd[k] = x^(2k+1)
    for _ in range((1 << (_WINDOW - 1)) - 1):
        odd.append(odd[-1] * square)
    result: pymcl.GT | None = None
    i = n.bit_length() - 1
    while i >= 0:
        if not (n >> i) & 1:
            if result is not None:
                result = result * result
            i -= 1
            continue
        # The longest window of at most _WINDOW bits from bit i down that ends in a 1 bit.
        low = max(i - _WINDOW + 1, 0)
        while not (n >> low) & 1:
            low += 1
        digit = (n >> low) & ((1 << (i - low + 1)) - 1)
        if result is not None:
            for _ in range(i - low + 1):
                result = result * result
            result = result * odd[digit >> 1]
        else:
            result = odd[digit >> 1]
        i = low - 1
    assert result is not None
    return result


class GT:
    """The target group GT (order-r subgroup of Fp12*, written multiplicatively). Immutable.

    GT elements are often secrets (an encapsulated message key), so ``repr`` hides the value and
    they are not hashable.
    """

    __slots__ = ("_v",)
    _v: pymcl.GT
    SIZE: Final = 576

    def __init__(self, raw: pymcl.GT) -> None:
        if not isinstance(raw, pymcl.GT):
            raise TypeError("GT wraps a pymcl.GT")
        object.__setattr__(self, "_v", raw)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("GT is immutable")

    @staticmethod
    def one() -> GT:
        return GT(pymcl.GT())

    @staticmethod
    def random(rng: RngFn | None = None) -> GT:
        """A uniformly random element of GT other than 1: e(P1, P2)^x for random non-zero x."""
        return gt_generator() ** Scalar.random(rng)

    @staticmethod
    def from_bytes(b: bytes) -> GT:
        """Parse 576 bytes; rejects 1, zero and anything outside the order-r subgroup."""
        if not isinstance(b, bytes | bytearray):
            raise EncodingError(f"GT element must be bytes, got {type(b).__name__}")
        if len(b) != GT.SIZE:
            raise EncodingError(f"GT element must be {GT.SIZE} bytes, got {len(b)}")
        try:
            raw = pymcl.GT.deserialize(bytes(b))
        except ValueError:
            raise EncodingError("bytes are not a valid Fp12 element") from None
        if raw.is_zero():
            raise EncodingError("GT element is zero, which is not a group element")
        if raw.is_one():
            raise EncodingError("GT element is 1 (the identity), which is not allowed")
        if raw.serialize() != bytes(b):
            raise EncodingError("GT element is not in canonical form")
        if not _pow_int(raw, ORDER).is_one():
            raise EncodingError("GT element is not in the order-r subgroup")
        return GT(raw)

    def to_bytes(self) -> bytes:
        """Exactly 576 bytes."""
        return bytes(self._v.serialize())

    def is_one(self) -> bool:
        return bool(self._v.is_one())

    def __mul__(self, other: GT) -> GT:
        if not isinstance(other, GT):
            return NotImplemented
        return GT(self._v * other._v)

    def __truediv__(self, other: GT) -> GT:
        if not isinstance(other, GT):
            return NotImplemented
        return GT(self._v / other._v)

    def __pow__(self, k: Scalar) -> GT:
        if not isinstance(k, Scalar):
            return NotImplemented
        return GT(self._v**k._v)

    def inverse(self) -> GT:
        return GT(~self._v)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GT):
            return NotImplemented
        return bool(self._v == other._v)

    __hash__ = None  # type: ignore[assignment]  # GT elements are often secrets

    def __repr__(self) -> str:
        return "GT(<hidden>)"


def pair(p: G1, q: G2) -> GT:
    """The optimal Ate pairing e(p, q)."""
    if not isinstance(p, G1) or not isinstance(q, G2):
        raise TypeError("pair(p, q) takes a G1 element and a G2 element")
    return GT(pymcl.pairing(p._v, q._v))


def multi_pair(pairs: Sequence[tuple[G1, G2]]) -> GT:
    """The product of pairings ∏ e(p_i, q_i) (pymcl has no shared final exponentiation)."""
    acc = pymcl.GT()
    for p, q in pairs:
        if not isinstance(p, G1) or not isinstance(q, G2):
            raise TypeError("multi_pair takes (G1, G2) pairs")
        acc = acc * pymcl.pairing(p._v, q._v)
    return GT(acc)


_GT_GEN: Final = GT(pymcl.pairing(pymcl.g1, pymcl.g2))


def gt_generator() -> GT:
    """e(P1, P2), a generator of GT."""
    return _GT_GEN
