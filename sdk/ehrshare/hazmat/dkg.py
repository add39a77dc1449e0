"""Joint-Feldman (Pedersen) distributed key generation for the KGC master key.

Scheme: Joint-Feldman DKG (Pedersen 1991) with complaints and justifications, as drand runs it
(dedis/kyber ``share/dkg``). Setting: BLS12-381, commitments in G1. Each of the n KGC nodes deals a
random polynomial f_i of degree τ−1; the master secret is s = Σ_{i∈QUAL} f_i(0), node j's share is
s_j = Σ_{i∈QUAL} f_i(j), the public polynomial is A_k = Σ_{i∈QUAL} A_{i,k} with
A_{i,k} = a_{i,k}·P1, and ``mpk = A_0 = s·P1``. Reference: Gennaro, Jarecki, Krawczyk, Rabin,
"Secure distributed key generation for discrete-log based cryptosystems" (J. Cryptology 2007),
which also describes the known bias of Joint-Feldman's public key (see docs/security.md).

Protocol, one bundle per node per phase, every bundle signed (P-256, see
:mod:`ehrshare.hazmat.kgc_keys`) and bound to a 32-byte session nonce:

1. **deal**: commitments A_{i,0..τ−1} and, for every node j, f_i(j) sealed to j's X25519 key
   (AAD binds session nonce, dealer and recipient). Shares never appear in clear.
2. **response**: per dealer, ACCEPTED / COMPLAINT / ABSENT (no usable deal seen). A node that
   posts no response complains about nobody (drand's default), so an offline node does not force
   every dealer to publish its share.
3. **justification**: a dealer with complaints reveals the complained shares; everyone checks
   them against the commitments.
4. **finish**: QUAL = dealers with a valid deal, no equivocation, fewer than τ complaints, and
   every complaint justified. |QUAL| < τ aborts with :class:`DKGAborted`.

Every decision uses only what is on the board (signed, public), so all honest nodes that read the
same board compute the same QUAL, public polynomial and ``mpk``. That requires the board to close a
phase before it is read (the chaincode refuses late posts; the in-process driver sequences phases).

This module is a pure protocol object: it must not do I/O (network, files, clock), must not log
secret values, and never puts secret bytes into an exception. Driving it over a board is
:mod:`ehrshare.hazmat.board`'s job.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, Self, TypeVar

from ehrshare.hazmat.errors import DecryptionError, EncodingError, VerificationError
from ehrshare.hazmat.kgc_keys import (
    SEALED_OVERHEAD,
    SIGNATURE_SIZE,
    KGCNodeKey,
    KGCNodePublicKey,
    open_sealed,
    seal,
)
from ehrshare.hazmat.pairing import G1, RngFn, Scalar

__all__ = [
    "NONCE_SIZE",
    "BundleKind",
    "BundleRules",
    "DKGAborted",
    "DKGConfig",
    "DKGError",
    "DKGNode",
    "DKGResult",
    "DealBundle",
    "DealStatus",
    "DealerDisqualified",
    "EquivocationEvidence",
    "InvalidNonce",
    "InvalidSignature",
    "JustificationBundle",
    "KeyShare",
    "Phase",
    "PhaseError",
    "PublicPolynomial",
    "Rejection",
    "ResponseBundle",
    "ShareUnavailable",
    "ThresholdTooHigh",
    "UnknownParticipant",
    "new_session_nonce",
    "open_share",
    "parse_bundle",
    "seal_share",
]

_log = logging.getLogger(__name__)

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


# ---------------------------------------------------------------------------------------------
# bundles


class BundleKind(enum.IntEnum):
    """The three board phases; the value is the kind byte of a bundle's encoding."""

    DEAL = 1
    RESPONSE = 2
    JUSTIFICATION = 3


class DealStatus(enum.IntEnum):
    """A responder's verdict on one dealer."""

    ACCEPTED = 0
    COMPLAINT = 1
    ABSENT = 2  # no usable deal from this dealer (missing, malformed or equivocating)


_HEADER: Final = struct.Struct(">BB32sH")  # version, kind, nonce, sender


def _check_header(data: bytes, kind: BundleKind, min_size: int) -> tuple[bytes, int]:
    name = kind.name.lower()
    if len(data) < min_size:
        raise EncodingError(f"{name} bundle must be at least {min_size} bytes, got {len(data)}")
    version, got_kind, nonce, sender = _HEADER.unpack_from(data)
    if version != _VERSION:
        raise EncodingError(f"{name} bundle version must be {_VERSION}, got {version}")
    if got_kind != kind:
        raise EncodingError(f"expected a {name} bundle (kind {int(kind)}), got kind {got_kind}")
    if sender < 1:
        raise EncodingError(f"{name} bundle sender index must be at least 1, got 0")
    return nonce, sender


def _signed_message(body: bytes) -> bytes:
    return _SIGN_DST + struct.pack(">I", len(body)) + body


class _SignedBundle:
    """What the three bundle kinds share: body ‖ signature encoding, signing, common checks.

    Subclasses are frozen dataclasses with ``nonce``, ``signature``, a ``sender`` property,
    a ``kind`` and a ``_body()``.
    """

    __slots__ = ()
    kind: BundleKind
    nonce: bytes
    signature: bytes

    @property
    def sender(self) -> int:
        raise NotImplementedError

    def _body(self) -> bytes:
        raise NotImplementedError

    def _signed_by(self, key: KGCNodeKey) -> Self:
        """A copy of this (unsigned) bundle carrying ``key``'s signature over its body."""
        signature = key.sign(_signed_message(self._body()))
        return dataclasses.replace(self, signature=signature)  # type: ignore[type-var]

    def to_bytes(self) -> bytes:
        """Canonical encoding (what goes on the board)."""
        return self._body() + self.signature

    def _verify_signature(self, config: BundleRules) -> None:
        _verify_common(self.kind, self.nonce, self.sender, self._body(), self.signature, config)


def _verify_common(
    kind: BundleKind, nonce: bytes, sender: int, body: bytes, signature: bytes, config: BundleRules
) -> None:
    name = kind.name.lower()
    if nonce != config.nonce:
        raise InvalidNonce(
            f"{name} bundle from node {sender} is for session {nonce.hex()[:16]}…, "
            f"expected {config.nonce.hex()[:16]}…"
        )
    key = config.public_key_of(sender)
    try:
        key.verify(signature, _signed_message(body))
    except VerificationError as exc:
        raise InvalidSignature(f"{name} bundle from node {sender}: {exc}") from None


def _share_aad(nonce: bytes, dealer: int, recipient: int) -> bytes:
    return _SHARE_AAD_DST + nonce + struct.pack(">HH", dealer, recipient)


def seal_share(
    recipient_key: KGCNodePublicKey,
    share: Scalar,
    *,
    nonce: bytes,
    dealer: int,
    recipient: int,
    rng: RngFn | None = None,
) -> bytes:
    """Seal ``f_dealer(recipient)`` to the recipient's X25519 key (80 bytes).

    The AAD binds session nonce, dealer and recipient, so a sealed share cannot be replayed
    into another session or moved to another slot. :class:`DKGNode` uses it; so do tests that
    play a cheating dealer.
    """
    return seal(
        recipient_key.encryption,
        share.to_bytes(),
        aad=_share_aad(nonce, dealer, recipient),
        rng=rng,
    )


def open_share(
    key: KGCNodeKey, sealed: bytes, *, nonce: bytes, dealer: int, recipient: int
) -> Scalar:
    """Open a share sealed by :func:`seal_share`; ``DecryptionError`` on any failure."""
    raw = open_sealed(key.encryption_key, sealed, aad=_share_aad(nonce, dealer, recipient))
    try:
        return Scalar.from_bytes(raw)
    except EncodingError:
        raise DecryptionError() from None


@dataclass(frozen=True, slots=True)
class DealBundle(_SignedBundle):
    """Dealer i's commitments and its n sealed shares (``sealed_shares[j-1]`` is for node j).

    Encoding: ``version || kind=1 || nonce(32) || dealer(u16) || n(u16) || τ(u16) ||
    τ × G1(48) || n × sealed share(80) || signature(64)``.
    """

    nonce: bytes
    dealer: int
    commitments: tuple[G1, ...]
    sealed_shares: tuple[bytes, ...]
    signature: bytes

    kind = BundleKind.DEAL

    @classmethod
    def create(
        cls,
        key: KGCNodeKey,
        *,
        nonce: bytes,
        dealer: int,
        commitments: Sequence[G1],
        sealed_shares: Sequence[bytes],
    ) -> DealBundle:
        """Build and sign a deal bundle (what :meth:`DKGNode.deals` posts)."""
        return cls(nonce, dealer, tuple(commitments), tuple(sealed_shares), b"")._signed_by(key)

    @property
    def sender(self) -> int:
        """The dealer's index."""
        return self.dealer

    def _body(self) -> bytes:
        return (
            _HEADER.pack(_VERSION, self.kind, self.nonce, self.dealer)
            + struct.pack(">HH", len(self.sealed_shares), len(self.commitments))
            + b"".join(c.to_bytes() for c in self.commitments)
            + b"".join(self.sealed_shares)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DealBundle:
        """Parse; checks version, kind, every length and every commitment point."""
        fixed = _HEADER.size + 4
        nonce, dealer = _check_header(data, BundleKind.DEAL, fixed + SIGNATURE_SIZE)
        n, t = struct.unpack_from(">HH", data, _HEADER.size)
        if n < 2 or t < 2:
            raise EncodingError(f"deal bundle needs n ≥ 2 and τ ≥ 2, got n={n}, τ={t}")
        expected = fixed + t * G1.SIZE + n * _SEALED_SHARE_SIZE + SIGNATURE_SIZE
        if len(data) != expected:
            raise EncodingError(
                f"deal bundle with n={n}, τ={t} must be {expected} bytes, got {len(data)}"
            )
        pos = fixed
        commitments = []
        for _ in range(t):
            commitments.append(G1.from_bytes(data[pos : pos + G1.SIZE]))
            pos += G1.SIZE
        shares = []
        for _ in range(n):
            shares.append(data[pos : pos + _SEALED_SHARE_SIZE])
            pos += _SEALED_SHARE_SIZE
        return cls(nonce, dealer, tuple(commitments), tuple(shares), data[pos:])

    def verify(self, config: BundleRules) -> None:
        """Check session, roster shape and signature; raise the precise DKG error if not."""
        if len(self.sealed_shares) != config.n or len(self.commitments) != config.threshold:
            raise EncodingError(
                f"deal bundle from node {self.dealer} has n={len(self.sealed_shares)}, "
                f"τ={len(self.commitments)}; session has n={config.n}, τ={config.threshold}"
            )
        self._verify_signature(config)


@dataclass(frozen=True, slots=True)
class ResponseBundle(_SignedBundle):
    """Responder j's verdict on every dealer (``statuses[i-1]`` is about dealer i).

    Encoding: ``version || kind=2 || nonce(32) || responder(u16) || n(u16) || n status bytes ||
    signature(64)``.
    """

    nonce: bytes
    responder: int
    statuses: tuple[DealStatus, ...]
    signature: bytes

    kind = BundleKind.RESPONSE

    @classmethod
    def create(
        cls, key: KGCNodeKey, *, nonce: bytes, responder: int, statuses: Sequence[DealStatus]
    ) -> ResponseBundle:
        """Build and sign a response bundle."""
        return cls(nonce, responder, tuple(statuses), b"")._signed_by(key)

    @property
    def sender(self) -> int:
        """The responder's index."""
        return self.responder

    def _body(self) -> bytes:
        return (
            _HEADER.pack(_VERSION, self.kind, self.nonce, self.responder)
            + struct.pack(">H", len(self.statuses))
            + bytes(int(s) for s in self.statuses)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ResponseBundle:
        """Parse; checks version, kind, length and every status byte."""
        fixed = _HEADER.size + 2
        nonce, responder = _check_header(data, BundleKind.RESPONSE, fixed + SIGNATURE_SIZE)
        (n,) = struct.unpack_from(">H", data, _HEADER.size)
        expected = fixed + n + SIGNATURE_SIZE
        if len(data) != expected:
            raise EncodingError(
                f"response bundle with n={n} must be {expected} bytes, got {len(data)}"
            )
        raw = data[fixed : fixed + n]
        statuses = []
        for pos, b in enumerate(raw, start=1):
            try:
                statuses.append(DealStatus(b))
            except ValueError:
                raise EncodingError(
                    f"response bundle status for dealer {pos} must be 0, 1 or 2, got {b}"
                ) from None
        return cls(nonce, responder, tuple(statuses), data[fixed + n :])

    def verify(self, config: BundleRules) -> None:
        """Check session, roster shape and signature."""
        if len(self.statuses) != config.n:
            raise EncodingError(
                f"response bundle from node {self.responder} covers {len(self.statuses)} "
                f"dealers; session has n={config.n}"
            )
        self._verify_signature(config)


@dataclass(frozen=True, slots=True)
class JustificationBundle(_SignedBundle):
    """Dealer i's revealed shares ``(recipient, f_i(recipient))`` for each complaint against it.

    Encoding: ``version || kind=3 || nonce(32) || dealer(u16) || count(u16) ||
    count × (recipient(u16) || share(32)) || signature(64)``, recipients strictly increasing.
    """

    nonce: bytes
    dealer: int
    revealed: tuple[tuple[int, Scalar], ...]
    signature: bytes

    kind = BundleKind.JUSTIFICATION

    @classmethod
    def create(
        cls,
        key: KGCNodeKey,
        *,
        nonce: bytes,
        dealer: int,
        revealed: Sequence[tuple[int, Scalar]],
    ) -> JustificationBundle:
        """Build and sign a justification bundle (recipients sorted here)."""
        ordered = tuple(sorted(revealed, key=lambda entry: entry[0]))
        return cls(nonce, dealer, ordered, b"")._signed_by(key)

    @property
    def sender(self) -> int:
        """The dealer's index."""
        return self.dealer

    def _body(self) -> bytes:
        return (
            _HEADER.pack(_VERSION, self.kind, self.nonce, self.dealer)
            + struct.pack(">H", len(self.revealed))
            + b"".join(struct.pack(">H", j) + s.to_bytes() for j, s in self.revealed)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> JustificationBundle:
        """Parse; checks version, kind, length, recipient order and every scalar."""
        fixed = _HEADER.size + 2
        nonce, dealer = _check_header(data, BundleKind.JUSTIFICATION, fixed + SIGNATURE_SIZE)
        (count,) = struct.unpack_from(">H", data, _HEADER.size)
        entry = 2 + _SCALAR_SIZE
        expected = fixed + count * entry + SIGNATURE_SIZE
        if len(data) != expected:
            raise EncodingError(
                f"justification bundle with {count} shares must be {expected} bytes, "
                f"got {len(data)}"
            )
        revealed: list[tuple[int, Scalar]] = []
        previous = 0
        for k in range(count):
            pos = fixed + k * entry
            (recipient,) = struct.unpack_from(">H", data, pos)
            if recipient <= previous:
                raise EncodingError(
                    "justification bundle recipients must be strictly increasing and ≥ 1, "
                    f"got {recipient} after {previous}"
                )
            previous = recipient
            revealed.append((recipient, Scalar.from_bytes(data[pos + 2 : pos + entry])))
        return cls(nonce, dealer, tuple(revealed), data[fixed + count * entry :])

    def verify(self, config: BundleRules) -> None:
        """Check session, recipients in range and signature."""
        for recipient, _ in self.revealed:
            if recipient > config.n:
                raise UnknownParticipant(
                    f"justification from node {self.dealer} names recipient {recipient}; "
                    f"session has n={config.n}"
                )
        self._verify_signature(config)


Bundle = DealBundle | ResponseBundle | JustificationBundle
_B = TypeVar("_B", DealBundle, ResponseBundle, JustificationBundle)

_PARSERS: Final[Mapping[BundleKind, Callable[[bytes], Bundle]]] = {
    BundleKind.DEAL: DealBundle.from_bytes,
    BundleKind.RESPONSE: ResponseBundle.from_bytes,
    BundleKind.JUSTIFICATION: JustificationBundle.from_bytes,
}


def parse_bundle(data: bytes) -> Bundle:
    """Parse any bundle by its kind byte (what a board or chaincode needs to index it)."""
    if len(data) < 2:
        raise EncodingError(f"bundle must be at least 2 bytes, got {len(data)}")
    try:
        kind = BundleKind(data[1])
    except ValueError:
        raise EncodingError(f"bundle kind must be 1, 2 or 3, got {data[1]}") from None
    return _PARSERS[kind](data)


@dataclass(frozen=True, slots=True)
class EquivocationEvidence:
    """Two different bundles of one kind, both validly signed by one node for one session.

    Anyone holding the roster can re-check it with :meth:`verify`; it is the proof that
    justifies disqualifying the node.
    """

    kind: BundleKind
    sender: int
    first: bytes
    second: bytes

    def verify(self, config: DKGConfig) -> None:
        """Raise if this is not a valid proof of equivocation in ``config``'s session."""
        a, b = parse_bundle(self.first), parse_bundle(self.second)
        # ECDSA signatures are randomised: one body signed twice is not equivocation.
        if a._body() == b._body():
            raise VerificationError("equivocation evidence holds the same bundle twice")
        for bundle in (a, b):
            if bundle.kind != self.kind or bundle.sender != self.sender:
                raise VerificationError(
                    f"evidence bundle is a {bundle.kind.name} from node {bundle.sender}, "
                    f"expected {self.kind.name} from node {self.sender}"
                )
            bundle.verify(config)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A board entry a node did not use, and why (for logs, audit and tests)."""

    kind: BundleKind
    sender: int | None
    error: Exception


# ---------------------------------------------------------------------------------------------
# the protocol object


class Phase(enum.Enum):
    """Where a :class:`DKGNode` is; names say what it waits for next."""

    READY = "ready"  # deals() not called yet
    AWAITING_DEALS = "awaiting-deals"
    AWAITING_RESPONSES = "awaiting-responses"
    AWAITING_JUSTIFICATIONS = "awaiting-justifications"
    FINISHED = "finished"
    ABORTED = "aborted"


class DKGNode:
    """One KGC node's side of a DKG session. Pure: feed it bundles, post what it returns.

    Order of calls (enforced by :data:`TRANSITIONS`): :meth:`deals` → :meth:`process_deals` →
    :meth:`process_responses` → (:meth:`process_justifications` if :attr:`phase` is
    ``AWAITING_JUSTIFICATIONS``) → :meth:`result`. The ``process_*`` methods take every bundle
    the board holds for that phase (parsed or raw bytes) and skip the ones that fail checks,
    recording each in :attr:`rejected`; provable equivocation lands in :attr:`evidence`.
    """

    TRANSITIONS: Final[Mapping[tuple[Phase, str], frozenset[Phase]]] = {
        (Phase.READY, "deals"): frozenset({Phase.AWAITING_DEALS}),
        (Phase.AWAITING_DEALS, "process_deals"): frozenset(
            {Phase.AWAITING_RESPONSES, Phase.ABORTED}
        ),
        (Phase.AWAITING_RESPONSES, "process_responses"): frozenset(
            {Phase.AWAITING_JUSTIFICATIONS, Phase.FINISHED, Phase.ABORTED}
        ),
        (Phase.AWAITING_JUSTIFICATIONS, "process_justifications"): frozenset(
            {Phase.FINISHED, Phase.ABORTED}
        ),
        (Phase.FINISHED, "result"): frozenset({Phase.FINISHED}),
    }

    def __init__(self, config: DKGConfig, key: KGCNodeKey, *, rng: RngFn | None = None) -> None:
        self.config = config
        self.index = config.index_of(key.public_key)
        self._key = key
        self._rng = rng
        self._phase = Phase.READY
        self._coefficients: tuple[Scalar, ...] = ()
        self._deals: dict[int, DealBundle] = {}  # candidate dealers' bundles
        self._my_shares: dict[int, Scalar] = {}  # dealer -> f_dealer(self.index), verified
        self._complaints: dict[int, set[int]] = {}  # dealer -> responders that complained
        self._disqualified: dict[int, str] = {}
        self._cheaters: set[int] = set()  # nodes with equivocation evidence against them
        self._result: DKGResult | None = None
        self._abort: DKGAborted | None = None
        self.rejected: list[Rejection] = []
        self.evidence: list[EquivocationEvidence] = []

    def __repr__(self) -> str:
        return f"DKGNode(index={self.index}, n={self.config.n}, phase={self._phase.value})"

    @property
    def phase(self) -> Phase:
        """The current protocol phase."""
        return self._phase

    @property
    def disqualified(self) -> Mapping[int, str]:
        """Dealers excluded so far, with the reason."""
        return dict(self._disqualified)

    # -- state machine

    def _check_allowed(self, action: str) -> frozenset[Phase]:
        allowed = self.TRANSITIONS.get((self._phase, action))
        if allowed is None:
            expected = sorted(a for (p, a) in self.TRANSITIONS if p is self._phase)
            if self._phase is Phase.ABORTED and self._abort is not None:
                raise PhaseError(f"{action}() after the session aborted: {self._abort}")
            raise PhaseError(
                f"{action}() is not allowed in phase {self._phase.value}; "
                f"allowed: {', '.join(expected) or 'nothing'}"
            )
        return allowed

    def _move(self, allowed: frozenset[Phase], to: Phase) -> None:
        if to not in allowed:  # a bug in this module, not bad input
            raise AssertionError(f"transition {self._phase} -> {to} is not in the table")
        _log.debug("dkg node %d: %s -> %s", self.index, self._phase.value, to.value)
        self._phase = to

    def _disqualify(self, dealer: int, reason: str) -> None:
        if dealer not in self._disqualified:
            _log.info("dkg node %d: dealer %d disqualified: %s", self.index, dealer, reason)
            self._disqualified[dealer] = reason
        self._deals.pop(dealer, None)

    # -- intake shared by the three phases

    def _intake(
        self, kind: BundleKind, cls: type[_B], bundles: Iterable[_B | bytes]
    ) -> dict[int, _B]:
        """Parse, verify and de-duplicate one phase's bundles; at most one per sender."""
        by_sender: dict[int, _B] = {}
        equivocators: set[int] = set()
        for item in bundles:
            sender: int | None = None
            try:
                bundle = cls.from_bytes(item) if isinstance(item, bytes) else item
                if not isinstance(bundle, cls):
                    raise EncodingError(f"expected a {kind.name.lower()} bundle, got {bundle!r}")
                sender = bundle.sender
                bundle.verify(self.config)
            except (DKGError, EncodingError, VerificationError) as exc:
                _log.info("dkg node %d: rejected %s bundle: %s", self.index, kind.name, exc)
                self.rejected.append(Rejection(kind, sender, exc))
                continue
            # Compare bodies, not encodings: ECDSA signatures are randomised, so a node that
            # signs the same bundle twice (a retry) posts different bytes without equivocating.
            first = by_sender.get(bundle.sender)
            if first is None:
                by_sender[bundle.sender] = bundle
            elif first._body() != bundle._body() and bundle.sender not in equivocators:
                equivocators.add(bundle.sender)
                self.evidence.append(
                    EquivocationEvidence(kind, bundle.sender, first.to_bytes(), bundle.to_bytes())
                )
        for sender in equivocators:
            del by_sender[sender]
            self._cheaters.add(sender)
            self._disqualify(sender, f"equivocated: two different signed {kind.name} bundles")
        return by_sender

    # -- phase 1: deal

    def deals(self) -> DealBundle:
        """Pick this node's random polynomial; return its signed deal bundle for the board."""
        allowed = self._check_allowed("deals")
        t, n, nonce = self.config.threshold, self.config.n, self.config.nonce
        self._coefficients = tuple(Scalar.random(self._rng) for _ in range(t))
        commitments = tuple(G1.generator() * a for a in self._coefficients)
        sealed = tuple(
            seal_share(
                self.config.public_key_of(j),
                _eval_poly(self._coefficients, j),
                nonce=nonce,
                dealer=self.index,
                recipient=j,
                rng=self._rng,
            )
            for j in range(1, n + 1)
        )
        bundle = DealBundle.create(
            self._key,
            nonce=nonce,
            dealer=self.index,
            commitments=commitments,
            sealed_shares=sealed,
        )
        self._move(allowed, Phase.AWAITING_DEALS)
        return bundle

    # -- phase 2: response

    def _open_my_share(self, bundle: DealBundle) -> Scalar | None:
        try:
            share = open_share(
                self._key,
                bundle.sealed_shares[self.index - 1],
                nonce=self.config.nonce,
                dealer=bundle.dealer,
                recipient=self.index,
            )
        except DecryptionError:
            return None
        return share if _share_matches(share, bundle.commitments, self.index) else None

    def process_deals(self, bundles: Iterable[DealBundle | bytes]) -> ResponseBundle:
        """Check every deal; return this node's signed response (complaints included).

        Raises :class:`DKGAborted` when fewer than τ dealers produced a usable deal.
        """
        allowed = self._check_allowed("process_deals")
        self._deals = self._intake(BundleKind.DEAL, DealBundle, bundles)
        statuses: list[DealStatus] = []
        for dealer in range(1, self.config.n + 1):
            bundle = self._deals.get(dealer)
            if bundle is None:
                if dealer not in self._disqualified:
                    self._disqualify(dealer, "no valid deal bundle")
                statuses.append(DealStatus.ABSENT)
                continue
            share = self._open_my_share(bundle)
            if share is None:
                _log.info("dkg node %d: complaint against dealer %d", self.index, dealer)
                statuses.append(DealStatus.COMPLAINT)
            else:
                self._my_shares[dealer] = share
                statuses.append(DealStatus.ACCEPTED)
        if len(self._deals) < self.config.threshold:
            self._fail(allowed)
        response = ResponseBundle.create(
            self._key, nonce=self.config.nonce, responder=self.index, statuses=statuses
        )
        self._move(allowed, Phase.AWAITING_RESPONSES)
        return response

    # -- phase 3: justification

    def process_responses(
        self, bundles: Iterable[ResponseBundle | bytes]
    ) -> JustificationBundle | None:
        """Tally complaints. Returns this node's justification if it must answer complaints.

        Afterwards :attr:`phase` is ``FINISHED`` when no qualified dealer has a complaint, else
        ``AWAITING_JUSTIFICATIONS``. Raises :class:`DKGAborted` if too few dealers remain.
        """
        allowed = self._check_allowed("process_responses")
        responses = self._intake(BundleKind.RESPONSE, ResponseBundle, bundles)
        for responder, response in sorted(responses.items()):
            if responder in self._cheaters:
                continue  # provably malicious (equivocated): its complaints carry no weight
            for dealer, status in enumerate(response.statuses, start=1):
                # ABSENT about a dealer whose deal is on the board means the responder lacks
                # its share, which is a complaint in effect.
                if dealer != responder and dealer in self._deals and status != DealStatus.ACCEPTED:
                    self._complaints.setdefault(dealer, set()).add(responder)
        for dealer, complainers in sorted(self._complaints.items()):
            if len(complainers) >= self.config.threshold:
                # Revealing τ shares would publish the dealer's secret; such a deal is bad anyway.
                self._disqualify(dealer, f"{len(complainers)} complaints (≥ τ)")
        pending = {d: c for d, c in self._complaints.items() if d in self._deals}
        justification: JustificationBundle | None = None
        mine = pending.get(self.index)
        if mine:
            revealed = tuple((j, _eval_poly(self._coefficients, j)) for j in sorted(mine))
            justification = JustificationBundle.create(
                self._key, nonce=self.config.nonce, dealer=self.index, revealed=revealed
            )
        if not pending:
            self._finish(allowed)
        elif len(self._deals) < self.config.threshold:
            self._fail(allowed)
        else:
            self._move(allowed, Phase.AWAITING_JUSTIFICATIONS)
        return justification

    # -- phase 4: finish

    def process_justifications(self, bundles: Iterable[JustificationBundle | bytes]) -> DKGResult:
        """Check revealed shares; disqualify dealers that did not justify; return the result."""
        allowed = self._check_allowed("process_justifications")
        justifications = self._intake(BundleKind.JUSTIFICATION, JustificationBundle, bundles)
        for dealer, complainers in sorted(self._complaints.items()):
            deal = self._deals.get(dealer)
            if deal is None:
                continue
            just = justifications.get(dealer)
            if just is None:
                self._disqualify(dealer, f"did not justify complaints from {sorted(complainers)}")
                continue
            revealed = dict(just.revealed)
            if set(revealed) != complainers:
                self._disqualify(
                    dealer,
                    f"justified recipients {sorted(revealed)}, complaints came from "
                    f"{sorted(complainers)}",
                )
                continue
            bad = [j for j, s in revealed.items() if not _share_matches(s, deal.commitments, j)]
            if bad:
                self._disqualify(dealer, f"revealed shares for {bad} do not match commitments")
                continue
            if self.index in revealed:
                self._my_shares[dealer] = revealed[self.index]
        return self._finish(allowed)

    def _fail(self, allowed: frozenset[Phase]) -> None:
        self._abort = DKGAborted(tuple(self._deals), self.config.threshold, self._disqualified)
        self._coefficients = ()
        self._move(allowed, Phase.ABORTED)
        raise self._abort

    def _finish(self, allowed: frozenset[Phase]) -> DKGResult:
        qual = tuple(sorted(self._deals))
        if len(qual) < self.config.threshold:
            self._fail(allowed)
        missing = [d for d in qual if d not in self._my_shares]
        if missing:
            # Only reachable when our own complaint never made it onto the board: the session
            # succeeded for the others, but this node holds no valid share.
            self._abort = None
            self._coefficients = ()
            self._move(allowed, Phase.ABORTED)
            raise ShareUnavailable(
                f"node {self.index} has no valid share from qualified dealers {missing} "
                "(its complaint is not on the board); it must rejoin by resharing"
            )
        t = self.config.threshold
        commitments = [self._deals[qual[0]].commitments[k] for k in range(t)]
        for dealer in qual[1:]:
            deal = self._deals[dealer]
            commitments = [commitments[k] + deal.commitments[k] for k in range(t)]
        value = self._my_shares[qual[0]]
        for dealer in qual[1:]:
            value = value + self._my_shares[dealer]
        public = PublicPolynomial(tuple(commitments))
        if G1.generator() * value != public.evaluate(self.index):
            raise AssertionError("combined share does not match the public polynomial")
        self._result = DKGResult(
            index=self.index,
            share=KeyShare(self.index, value),
            qual=qual,
            public=public,
            nonce=self.config.nonce,
            disqualified=dict(self._disqualified),
        )
        self._coefficients = ()  # the dealing polynomial is no longer needed; drop it
        self._move(allowed, Phase.FINISHED)
        return self._result

    def result(self) -> DKGResult:
        """The finished session's result (only in phase ``FINISHED``)."""
        self._check_allowed("result")
        assert self._result is not None
        return self._result
