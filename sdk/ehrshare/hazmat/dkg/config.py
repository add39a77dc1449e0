"""DKG configuration and results: named errors, the session config, polynomials and shares.

The part of :mod:`ehrshare.hazmat.dkg` every phase shares: :class:`DKGConfig` (who takes part,
τ, the session nonce), :class:`PublicPolynomial`, :class:`KeyShare` and :class:`DKGResult` with
their fixed-size serialisations. Pure: no I/O, no secret in an exception or a log line.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from ehrshare.hazmat.errors import EncodingError, VerificationError
from ehrshare.hazmat.kgc_keys import (
    SEALED_OVERHEAD,
    KGCNodePublicKey,
)
from ehrshare.hazmat.pairing import G1, RngFn, Scalar

__all__ = [
    "NONCE_SIZE",
    "BundleRules",
    "DKGAborted",
    "DKGConfig",
    "DKGError",
    "DKGResult",
    "DealerDisqualified",
    "InvalidNonce",
    "InvalidSignature",
    "KeyShare",
    "PhaseError",
    "PublicPolynomial",
    "ShareUnavailable",
    "ThresholdTooHigh",
    "UnknownParticipant",
    "new_session_nonce",
]

NONCE_SIZE: Final = 32
_VERSION: Final = 1
_SIGN_DST: Final = b"ehrshare/v1/dkg/bundle-signature"
_SHARE_AAD_DST: Final = b"ehrshare/v1/dkg/share"
_SCALAR_SIZE: Final = 32
_SEALED_SHARE_SIZE: Final = SEALED_OVERHEAD + _SCALAR_SIZE
_MAX_NODES: Final = 1024


# ---------------------------------------------------------------------------------------------
# errors


class DKGError(Exception):
    """Base class of every DKG failure."""


class ThresholdTooHigh(DKGError, ValueError):
    """τ > n: no set of nodes could ever reconstruct the key."""


class InvalidNonce(DKGError, ValueError):
    """A bundle belongs to another session (e.g. replayed from an old run)."""


class InvalidSignature(DKGError, VerificationError):
    """A bundle's signature does not verify under its claimed sender's long-term key."""


class UnknownParticipant(DKGError, ValueError):
    """A bundle names a sender index outside 1..n, or a key that is not in the roster."""


class PhaseError(DKGError, RuntimeError):
    """A protocol method was called out of order (see :data:`DKGNode.TRANSITIONS`)."""


class ShareUnavailable(DKGError, RuntimeError):
    """The session succeeded for the others, but this node ended without a valid share."""


class DealerDisqualified(DKGError):
    """Why one dealer is not in QUAL. Kept as a value in :attr:`DKGResult.disqualified`."""

    def __init__(self, dealer: int, reason: str) -> None:
        super().__init__(f"dealer {dealer} disqualified: {reason}")
        self.dealer = dealer
        self.reason = reason


class DKGAborted(DKGError, RuntimeError):
    """Fewer than τ dealers qualified: the session produced no key and must be rerun."""

    def __init__(self, qual: Sequence[int], threshold: int, disqualified: Mapping[int, str]):
        reasons = "; ".join(f"{d}: {r}" for d, r in sorted(disqualified.items())) or "none"
        super().__init__(
            f"DKG aborted: {len(qual)} qualified dealers {sorted(qual)}, need at least "
            f"{threshold}; disqualified: {reasons}"
        )
        self.qual = tuple(sorted(qual))
        self.threshold = threshold
        self.disqualified = dict(disqualified)


# ---------------------------------------------------------------------------------------------
# configuration and small values


def new_session_nonce(rng: RngFn | None = None) -> bytes:
    """A fresh 32-byte session nonce; every DKG run needs its own."""
    nonce = (rng or os.urandom)(NONCE_SIZE)
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"rng must return {NONCE_SIZE} bytes, got {len(nonce)}")
    return nonce


@dataclass(frozen=True, slots=True)
class DKGConfig:
    """One DKG session: the roster (node j is ``participants[j-1]``), τ and the session nonce.

    All nodes must use an identical config; the nonce must be fresh per session. ``threshold``
    defaults to n//2+1 (a majority).
    """

    participants: tuple[KGCNodePublicKey, ...]
    nonce: bytes
    threshold: int = 0

    def __post_init__(self) -> None:
        n = len(self.participants)
        if not 2 <= n <= _MAX_NODES:
            raise ValueError(f"a DKG needs between 2 and {_MAX_NODES} participants, got {n}")
        if len(self.nonce) != NONCE_SIZE:
            raise InvalidNonce(f"session nonce must be {NONCE_SIZE} bytes, got {len(self.nonce)}")
        if len({p.to_bytes() for p in self.participants}) != n:
            raise ValueError("participants must have distinct public keys")
        if self.threshold == 0:
            object.__setattr__(self, "threshold", n // 2 + 1)
        if self.threshold > n:
            raise ThresholdTooHigh(f"threshold {self.threshold} exceeds the {n} participants")
        if self.threshold < 2:
            raise ValueError(
                f"threshold must be at least 2, got {self.threshold} (τ=1 hands every node the key)"
            )

    @property
    def n(self) -> int:
        """Number of participants."""
        return len(self.participants)

    def public_key_of(self, index: int) -> KGCNodePublicKey:
        """The roster entry of node ``index`` (1-based)."""
        if not 1 <= index <= self.n:
            raise UnknownParticipant(f"node index must be between 1 and {self.n}, got {index}")
        return self.participants[index - 1]

    def index_of(self, public_key: KGCNodePublicKey) -> int:
        """The 1-based index of a roster key."""
        for i, p in enumerate(self.participants, start=1):
            if p == public_key:
                return i
        raise UnknownParticipant(f"key {public_key.fingerprint()} is not in the roster")


class BundleRules(Protocol):
    """What a bundle is checked against: the session nonce, the number of slots it must carry
    (recipients of a deal, dealers of a response), τ, and the senders' keys by position.

    :class:`DKGConfig` is one (every node deals and responds); a resharing session
    (:mod:`ehrshare.hazmat.reshare`) has different rules per phase, since old members deal and
    new members respond.
    """

    @property
    def nonce(self) -> bytes: ...

    @property
    def n(self) -> int: ...

    @property
    def threshold(self) -> int: ...

    def public_key_of(self, index: int) -> KGCNodePublicKey: ...


def _eval_poly(coefficients: Sequence[Scalar], x: int) -> Scalar:
    xs = Scalar.from_int(x)
    acc = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        acc = acc * xs + c
    return acc


def _eval_commitments(commitments: Sequence[G1], x: int) -> G1:
    xs = Scalar.from_int(x)
    acc = commitments[-1]
    for c in reversed(commitments[:-1]):
        acc = acc * xs + c
    return acc


def _share_matches(share: Scalar, commitments: Sequence[G1], index: int) -> bool:
    return G1.generator() * share == _eval_commitments(commitments, index)


@dataclass(frozen=True, slots=True)
class PublicPolynomial:
    """Feldman commitments A_0..A_{τ−1} ∈ G1 of the joint polynomial; ``mpk = A_0``.

    Public: goes on chain after the DKG. :meth:`evaluate` gives node j's public share
    S_j = s_j·P1, which users check extracted partial keys against.
    Serialised as ``version(1) || τ (u16) || τ × 48-byte G1``.
    """

    commitments: tuple[G1, ...]

    def __post_init__(self) -> None:
        if len(self.commitments) < 2:
            raise ValueError(
                f"a public polynomial needs at least 2 commitments, got {len(self.commitments)}"
            )

    @property
    def threshold(self) -> int:
        """τ: how many shares reconstruct."""
        return len(self.commitments)

    @property
    def mpk(self) -> G1:
        """The master public key s·P1."""
        return self.commitments[0]

    def evaluate(self, index: int) -> G1:
        """S_j = Σ_k j^k·A_k, the public key share of node ``index`` (≥ 1)."""
        if index < 1:
            raise ValueError(f"node index must be at least 1, got {index}")
        return _eval_commitments(self.commitments, index)

    def to_bytes(self) -> bytes:
        """Canonical encoding."""
        return struct.pack(">BH", _VERSION, self.threshold) + b"".join(
            c.to_bytes() for c in self.commitments
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicPolynomial:
        """Parse :meth:`to_bytes` output; checks version, length and every point."""
        if len(data) < 3:
            raise EncodingError(f"public polynomial must be at least 3 bytes, got {len(data)}")
        version, t = struct.unpack(">BH", data[:3])
        if version != _VERSION:
            raise EncodingError(f"public polynomial version must be {_VERSION}, got {version}")
        expected = 3 + t * G1.SIZE
        if len(data) != expected:
            raise EncodingError(
                f"public polynomial with τ={t} must be {expected} bytes, got {len(data)}"
            )
        points = tuple(
            G1.from_bytes(data[3 + k * G1.SIZE : 3 + (k + 1) * G1.SIZE]) for k in range(t)
        )
        return cls(points)


class KeyShare:
    """Node j's share s_j of the master secret. Secret: no hash, masked repr."""

    __slots__ = ("_value", "index")

    def __init__(self, index: int, value: Scalar) -> None:
        if index < 1:
            raise ValueError(f"share index must be at least 1, got {index}")
        self.index = index
        self._value = value

    @property
    def value(self) -> Scalar:
        """The secret scalar s_j. Only hazmat code (extraction) should touch it."""
        return self._value

    def to_secret_bytes(self) -> bytes:
        """``index (u16) || s_j (32 bytes)``; store encrypted."""
        return struct.pack(">H", self.index) + self._value.to_bytes()

    @classmethod
    def from_secret_bytes(cls, data: bytes) -> KeyShare:
        """Load what :meth:`to_secret_bytes` wrote."""
        if len(data) != 2 + _SCALAR_SIZE:
            raise EncodingError(f"key share must be {2 + _SCALAR_SIZE} bytes, got {len(data)}")
        (index,) = struct.unpack(">H", data[:2])
        return cls(index, Scalar.from_bytes(data[2:]))

    def __repr__(self) -> str:
        return f"KeyShare(index={self.index}, value=<hidden>)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyShare):
            return NotImplemented
        return self.index == other.index and self._value == other._value

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class DKGResult:
    """What a node keeps after a successful DKG: its share, QUAL, the public polynomial.

    ``public`` (and thus ``mpk``) is identical at every honest node; ``share`` is secret.
    ``disqualified`` maps each dealer outside QUAL to the reason.
    """

    index: int
    share: KeyShare
    qual: tuple[int, ...]
    public: PublicPolynomial
    nonce: bytes
    disqualified: Mapping[int, str]

    @property
    def mpk(self) -> G1:
        """The master public key."""
        return self.public.mpk

    def to_secret_bytes(self) -> bytes:
        """Everything a KGC node persists after the DKG (contains its share: store encrypted).

        ``version || nonce(32) || share (u16 index, 32) || |QUAL| (u16) || QUAL (u16 each) ||
        |DQ| (u16) || per dealer: index (u16), reason length (u16), reason (UTF-8) ||
        public polynomial``.
        """
        out = bytearray(struct.pack(">B32s", _VERSION, self.nonce))
        out += self.share.to_secret_bytes()
        out += struct.pack(f">H{len(self.qual)}H", len(self.qual), *self.qual)
        out += struct.pack(">H", len(self.disqualified))
        for dealer, reason in sorted(self.disqualified.items()):
            raw = reason.encode("utf-8")
            out += struct.pack(">HH", dealer, len(raw)) + raw
        out += self.public.to_bytes()
        return bytes(out)

    @classmethod
    def from_secret_bytes(cls, data: bytes) -> DKGResult:
        """Load what :meth:`to_secret_bytes` wrote; checks lengths and that the share matches."""
        try:
            version, nonce = struct.unpack_from(">B32s", data)
            if version != _VERSION:
                raise EncodingError(f"DKG result version must be {_VERSION}, got {version}")
            share = KeyShare.from_secret_bytes(data[33:67])
            pos = 67
            (count,) = struct.unpack_from(">H", data, pos)
            qual = struct.unpack_from(f">{count}H", data, pos + 2)
            pos += 2 + 2 * count
            (dq_count,) = struct.unpack_from(">H", data, pos)
            pos += 2
            disqualified: dict[int, str] = {}
            for _ in range(dq_count):
                dealer, length = struct.unpack_from(">HH", data, pos)
                raw = data[pos + 4 : pos + 4 + length]
                if len(raw) != length:
                    raise EncodingError("DKG result is truncated inside a reason")
                disqualified[dealer] = raw.decode("utf-8")
                pos += 4 + length
        except struct.error:
            raise EncodingError(f"DKG result is truncated ({len(data)} bytes)") from None
        except UnicodeDecodeError:
            raise EncodingError("DKG result reason is not valid UTF-8") from None
        public = PublicPolynomial.from_bytes(data[pos:])
        if G1.generator() * share.value != public.evaluate(share.index):
            raise EncodingError("DKG result share does not match its public polynomial")
        return cls(share.index, share, tuple(qual), public, nonce, disqualified)
