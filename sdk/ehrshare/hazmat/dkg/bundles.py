"""The DKG wire format: the three signed bundle kinds, share sealing, equivocation evidence.

One bundle per node per phase, every bundle signed (P-256, :mod:`ehrshare.hazmat.kgc_keys`) and
bound to the 32-byte session nonce by its header (version, kind, nonce, u16 sender — the layout
the chaincode reads). Each ``from_bytes`` checks the exact layout; ``verify`` checks the
signature and the sender against a :class:`~ehrshare.hazmat.dkg.config.BundleRules`. Pure: no
I/O; sealed shares never appear in clear.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Self, TypeVar

from ehrshare.hazmat.dkg.config import (
    _SCALAR_SIZE,
    _SEALED_SHARE_SIZE,
    _SHARE_AAD_DST,
    _SIGN_DST,
    _VERSION,
    BundleRules,
    DKGConfig,
    DKGError,
    InvalidNonce,
    InvalidSignature,
    UnknownParticipant,
)
from ehrshare.hazmat.errors import DecryptionError, EncodingError, VerificationError
from ehrshare.hazmat.kgc_keys import (
    SIGNATURE_SIZE,
    KGCNodeKey,
    KGCNodePublicKey,
    open_sealed,
    seal,
)
from ehrshare.hazmat.pairing import G1, RngFn, Scalar

__all__ = [
    "Bundle",
    "BundleKind",
    "DealBundle",
    "DealStatus",
    "EquivocationEvidence",
    "JustificationBundle",
    "Rejection",
    "ResponseBundle",
    "open_share",
    "parse_bundle",
    "seal_share",
]

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


def intake_bundles(
    kind: BundleKind,
    cls: type[_B],
    bundles: Iterable[_B | bytes],
    verify: Callable[[_B], None],
    *,
    rejected: list[Rejection],
    evidence: list[EquivocationEvidence],
    log: Callable[[str], None],
) -> tuple[dict[int, _B], set[int]]:
    """Parse, verify and de-duplicate one phase's bundles (a DKG's or a resharing's): at most one
    per sender. Returns the accepted bundles by sender and the senders caught equivocating
    (removed from the first); a bundle that fails to parse or ``verify`` is added to
    ``rejected``, each equivocation (with its proof) to ``evidence``."""
    by_sender: dict[int, _B] = {}
    equivocators: set[int] = set()
    for item in bundles:
        sender: int | None = None
        try:
            bundle = cls.from_bytes(item) if isinstance(item, bytes) else item
            if not isinstance(bundle, cls):
                raise EncodingError(f"expected a {kind.name.lower()} bundle, got {bundle!r}")
            sender = bundle.sender
            verify(bundle)
        except (DKGError, EncodingError, VerificationError) as exc:
            log(f"rejected {kind.name} bundle: {exc}")
            rejected.append(Rejection(kind, sender, exc))
            continue
        # Compare bodies, not encodings: ECDSA signatures are randomised, so a node that signs
        # the same bundle twice (a retry) posts different bytes without equivocating.
        first = by_sender.get(bundle.sender)
        if first is None:
            by_sender[bundle.sender] = bundle
        elif first._body() != bundle._body() and bundle.sender not in equivocators:
            equivocators.add(bundle.sender)
            evidence.append(
                EquivocationEvidence(kind, bundle.sender, first.to_bytes(), bundle.to_bytes())
            )
    for sender in equivocators:
        del by_sender[sender]
    return by_sender, equivocators
