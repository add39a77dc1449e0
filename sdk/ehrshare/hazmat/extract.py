"""Threshold extraction of identity keys ``sk_id = s·Q_id`` from the DKG'd KGC nodes.

Scheme: Boneh–Franklin key extraction with the master secret s Shamir-shared by the DKG
(:mod:`ehrshare.hazmat.dkg`). Setting: BLS12-381, ``mpk = s·P1 ∈ G1``, ``Q_id = H1(id) ∈ G2``
with H1 = :func:`ehrshare.hazmat.tipre.identity_point` (the same hash the PRE encrypts to).

* The user makes an :class:`ExtractionRequest` (identity + a fresh X25519 reply key). What goes
  over the wire to a KGC service is the :class:`SignedExtractionRequest` (format 2): the same
  two fields plus the node index, the mpk, a fresh nonce, a timestamp and the member's ledger
  certificate, signed with the member's ledger key, so a stolen TLS client key alone cannot
  ask for the member's partial keys. This module only encodes it: the signature, the
  certificate and the freshness are checked by the service (:mod:`ehrshare.services.kgc`).
* KGC node j answers with :func:`extract_partial_key`: ``d_j = s_j·Q_id`` sealed to the reply key
  and signed with the node's long-term P-256 key (so a bad answer is attributable).
* The user opens each answer (:func:`open_partial_key` → unverified :class:`PartialKey`), checks
  them against the public polynomial — ``e(P1, d_j) == e(S_j, Q_id)`` with S_j = Σ_k j^k·A_k,
  batched with random weights into one two-pairing check, falling back to per-share checks to
  name the bad nodes (:func:`verify_partial_keys`) — and combines τ verified shares with
  Lagrange coefficients at 0 (:func:`combine_partial_keys`), finally checking
  ``e(P1, sk_id) == e(mpk, Q_id)``.

What this module must not do: authenticate the requester (the KGC service must check, from the
caller's certificate, that the requester owns ``id`` before calling :func:`extract_partial_key`),
combine an unverified share, log or raise with secret material, or do I/O.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Final

from ehrshare.hazmat.dkg import KeyShare, PublicPolynomial
from ehrshare.hazmat.errors import (
    EncodingError,
    UnverifiedInputError,
    VerificationError,
)
from ehrshare.hazmat.kgc_keys import (
    SEALED_OVERHEAD,
    SIGNATURE_SIZE,
    KGCNodeKey,
    KGCNodePublicKey,
    X25519KeyPair,
    open_sealed,
    seal,
)
from ehrshare.hazmat.pairing import G1, G2, RngFn, Scalar, multi_pair
from ehrshare.hazmat.tipre import IdentitySecretKey, MasterPublicKey, identity_point

__all__ = [
    "REQUEST_NONCE_SIZE",
    "SIGNED_REQUEST_VERSION",
    "AnyExtractionRequest",
    "ExtractionRequest",
    "InvalidPartialKey",
    "NotEnoughPartialKeys",
    "PartialKey",
    "PartialKeyCheck",
    "PartialKeyResponse",
    "RecoveredKey",
    "SignedExtractionRequest",
    "VerifiedPartialKey",
    "combine_partial_keys",
    "extract_partial_key",
    "open_partial_key",
    "recover_identity_key",
    "verify_partial_keys",
]

_log = logging.getLogger(__name__)

_VERSION: Final = 1
SIGNED_REQUEST_VERSION: Final = 2
_REQUEST_DST: Final = b"ehrshare/v1/extract/request"
_SIGNED_REQUEST_DST: Final = b"ehrshare/v2/extract/signed-request"
_SIGNING_DST: Final = b"ehrshare/v2/extract/request-signature"
_MAX_CERTIFICATE: Final = 8192
_MAX_SIGNATURE: Final = 80  # DER ECDSA-P256 is at most 72 bytes
REQUEST_NONCE_SIZE: Final = 16
_RESPONSE_DST: Final = b"ehrshare/v1/extract/response"
_MAX_IDENTITY: Final = 1024
_SEALED_KEY_SIZE: Final = SEALED_OVERHEAD + 96


def _identity_bytes(identity: str) -> bytes:
    if not isinstance(identity, str) or not identity:
        raise ValueError("identity must be a non-empty string")
    raw = identity.encode("utf-8")
    if len(raw) > _MAX_IDENTITY:
        raise ValueError(f"identity must be at most {_MAX_IDENTITY} UTF-8 bytes, got {len(raw)}")
    return raw


class InvalidPartialKey(VerificationError):
    """One or more KGC nodes returned a partial key that fails the pairing check."""

    def __init__(self, nodes: Iterable[int], detail: str = "fails e(P1, d_j) == e(S_j, Q_id)"):
        self.nodes = tuple(sorted(set(nodes)))
        super().__init__(f"partial key from KGC node(s) {list(self.nodes)} {detail}")


class NotEnoughPartialKeys(VerificationError):
    """Fewer than τ verified partial keys: ask more KGC nodes."""

    def __init__(self, have: int, need: int, invalid: Sequence[int] = ()) -> None:
        self.have, self.need, self.invalid = have, need, tuple(sorted(invalid))
        bad = f"; rejected invalid shares from nodes {list(self.invalid)}" if invalid else ""
        super().__init__(f"need {need} verified partial keys, have {have}{bad}")


# ---------------------------------------------------------------------------------------------
# request and response


@dataclass(frozen=True, slots=True)
class ExtractionRequest:
    """What a user sends to each KGC node: the identity and a one-time X25519 reply key.

    Encoding: ``version || reply_key(32) || len(u16) || identity (UTF-8)``.
    """

    identity: str
    reply_key: bytes

    def __post_init__(self) -> None:
        _identity_bytes(self.identity)
        if len(self.reply_key) != 32:
            raise EncodingError(f"reply key must be 32 bytes, got {len(self.reply_key)}")

    @classmethod
    def create(
        cls, identity: str, rng: RngFn | None = None
    ) -> tuple[ExtractionRequest, X25519KeyPair]:
        """A request plus the secret reply key the user keeps to open the answers."""
        reply = X25519KeyPair.generate(rng)
        return cls(identity, reply.public_bytes), reply

    def to_bytes(self) -> bytes:
        """Canonical encoding."""
        raw = _identity_bytes(self.identity)
        return struct.pack(">B32sH", _VERSION, self.reply_key, len(raw)) + raw

    @classmethod
    def from_bytes(cls, data: bytes) -> ExtractionRequest:
        """Parse; checks version, lengths and UTF-8."""
        if len(data) < 35:
            raise EncodingError(f"extraction request must be at least 35 bytes, got {len(data)}")
        version, reply, length = struct.unpack_from(">B32sH", data)
        if version != _VERSION:
            raise EncodingError(f"extraction request version must be {_VERSION}, got {version}")
        if len(data) != 35 + length:
            raise EncodingError(
                f"extraction request with a {length}-byte identity must be {35 + length} bytes, "
                f"got {len(data)}"
            )
        try:
            identity = data[35:].decode("utf-8")
        except UnicodeDecodeError:
            raise EncodingError("extraction request identity is not valid UTF-8") from None
        try:
            return cls(identity, reply)
        except ValueError as exc:
            raise EncodingError(f"extraction request: {exc}") from None

    def digest(self) -> bytes:
        """32-byte binding of a response to this exact request."""
        return hashlib.sha256(_REQUEST_DST + self.to_bytes()).digest()


_SIGNED_FIXED: Final = struct.Struct(">B32sH48s16sQ")


@dataclass(frozen=True, slots=True)
class SignedExtractionRequest:
    """The extraction request a KGC service accepts (format 2), signed with the ledger key.

    Fields: the identity and one-time X25519 reply key (as in :class:`ExtractionRequest`), the
    KGC node index it is addressed to, the mpk (48-byte compressed G1) of the DKG whose share
    should answer, a fresh ``nonce``, a ``timestamp`` (Unix seconds), the member's ledger
    certificate (DER, the one registered on chain) and the ECDSA signature over
    :meth:`signing_payload`. Encoding::

        version(2) || reply_key(32) || node_index(u16) || mpk(48) || nonce(16) || timestamp(u64)
        || len(u16) || identity (UTF-8) || len(u16) || certificate (DER)
        || len(u8) || signature (DER)

    Build with :meth:`unsigned`, sign :meth:`signing_payload` with the member's
    :class:`ehrshare.identity.Signer`, then :meth:`with_signature`. Nothing here checks the
    signature or the certificate: the KGC service does.
    """

    identity: str
    reply_key: bytes
    node_index: int
    mpk: bytes
    nonce: bytes
    timestamp: int
    certificate: bytes
    signature: bytes = b""

    def __post_init__(self) -> None:
        _identity_bytes(self.identity)
        if len(self.reply_key) != 32:
            raise EncodingError(f"reply key must be 32 bytes, got {len(self.reply_key)}")
        if not 1 <= self.node_index <= 0xFFFF:
            raise EncodingError(f"node index must be 1..65535, got {self.node_index}")
        if len(self.mpk) != G1.SIZE:
            raise EncodingError(f"mpk must be {G1.SIZE} bytes, got {len(self.mpk)}")
        if len(self.nonce) != REQUEST_NONCE_SIZE:
            raise EncodingError(
                f"request nonce must be {REQUEST_NONCE_SIZE} bytes, got {len(self.nonce)}"
            )
        if not 0 <= self.timestamp < 2**64:
            raise EncodingError(f"timestamp must fit in 64 bits, got {self.timestamp}")
        if not 0 < len(self.certificate) <= _MAX_CERTIFICATE:
            raise EncodingError(
                f"certificate must be 1..{_MAX_CERTIFICATE} bytes, got {len(self.certificate)}"
            )
        if len(self.signature) > _MAX_SIGNATURE:
            raise EncodingError(
                f"signature must be at most {_MAX_SIGNATURE} bytes, got {len(self.signature)}"
            )

    @classmethod
    def unsigned(
        cls,
        *,
        identity: str,
        reply_key: bytes,
        node_index: int,
        mpk: bytes,
        timestamp: int,
        certificate: bytes,
        rng: RngFn | None = None,
    ) -> SignedExtractionRequest:
        """A request with a fresh nonce and no signature yet (sign :meth:`signing_payload`)."""
        nonce = rng(REQUEST_NONCE_SIZE) if rng is not None else os.urandom(REQUEST_NONCE_SIZE)
        return cls(identity, reply_key, node_index, mpk, nonce, timestamp, certificate)

    def with_signature(self, signature: bytes) -> SignedExtractionRequest:
        """The same request carrying ``signature``."""
        return replace(self, signature=signature)

    def _body(self) -> bytes:
        ident = _identity_bytes(self.identity)
        return (
            _SIGNED_FIXED.pack(
                SIGNED_REQUEST_VERSION,
                self.reply_key,
                self.node_index,
                self.mpk,
                self.nonce,
                self.timestamp,
            )
            + struct.pack(">H", len(ident))
            + ident
            + struct.pack(">H", len(self.certificate))
            + self.certificate
        )

    def signing_payload(self) -> bytes:
        """The exact bytes the member's ledger key signs (domain-separated body)."""
        return _SIGNING_DST + self._body()

    def to_bytes(self) -> bytes:
        """Canonical encoding; refuses a request without a signature."""
        if not self.signature:
            raise ValueError("extraction request is not signed; call with_signature() first")
        return self._body() + struct.pack(">B", len(self.signature)) + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedExtractionRequest:
        """Parse; checks version, every length and UTF-8 (not the signature)."""
        if len(data) < _SIGNED_FIXED.size:
            raise EncodingError(
                f"signed extraction request must be at least {_SIGNED_FIXED.size} bytes, "
                f"got {len(data)}"
            )
        version, reply, index, mpk, nonce, timestamp = _SIGNED_FIXED.unpack_from(data)
        if version != SIGNED_REQUEST_VERSION:
            raise EncodingError(
                f"signed extraction request version must be {SIGNED_REQUEST_VERSION}, got {version}"
            )
        pos = _SIGNED_FIXED.size
        fields: list[bytes] = []
        for what, width in (("identity", 2), ("certificate", 2), ("signature", 1)):
            if len(data) < pos + width:
                raise EncodingError(f"signed extraction request is truncated before its {what}")
            (length,) = struct.unpack_from(">H" if width == 2 else ">B", data, pos)
            pos += width
            if len(data) < pos + length:
                raise EncodingError(
                    f"signed extraction request is truncated in its {what} "
                    f"({length} bytes announced, {len(data) - pos} present)"
                )
            fields.append(data[pos : pos + length])
            pos += length
        if pos != len(data):
            raise EncodingError(f"signed extraction request has {len(data) - pos} trailing bytes")
        raw_identity, certificate, signature = fields
        if not signature:
            raise EncodingError("signed extraction request carries no signature")
        try:
            identity = raw_identity.decode("utf-8")
        except UnicodeDecodeError:
            raise EncodingError("extraction request identity is not valid UTF-8") from None
        try:
            return cls(identity, reply, index, mpk, nonce, timestamp, certificate, signature)
        except ValueError as exc:
            raise EncodingError(f"signed extraction request: {exc}") from None

    def digest(self) -> bytes:
        """32-byte binding of a response to this exact request (signature included)."""
        return hashlib.sha256(_SIGNED_REQUEST_DST + self.to_bytes()).digest()


AnyExtractionRequest = ExtractionRequest | SignedExtractionRequest
"""Either request form: both carry the identity and reply key a partial key is sealed to."""


@dataclass(frozen=True, slots=True)
class PartialKeyResponse:
    """Node j's answer: ``d_j`` sealed to the request's reply key, signed by node j.

    Encoding: ``version || index(u16) || request digest(32) || sealed d_j(144) || signature(64)``.
    """

    index: int
    request_digest: bytes
    sealed_key: bytes
    signature: bytes

    SIZE: ClassVar[int] = 1 + 2 + 32 + _SEALED_KEY_SIZE + SIGNATURE_SIZE

    def _body(self) -> bytes:
        return struct.pack(">BH", _VERSION, self.index) + self.request_digest + self.sealed_key

    def to_bytes(self) -> bytes:
        """Canonical encoding."""
        return self._body() + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> PartialKeyResponse:
        """Parse; checks exact length, version and index."""
        if len(data) != cls.SIZE:
            raise EncodingError(f"partial key response must be {cls.SIZE} bytes, got {len(data)}")
        version, index = struct.unpack_from(">BH", data)
        if version != _VERSION:
            raise EncodingError(f"partial key response version must be {_VERSION}, got {version}")
        if index < 1:
            raise EncodingError("partial key response node index must be at least 1, got 0")
        sealed_end = 35 + _SEALED_KEY_SIZE
        return cls(index, data[3:35], data[35:sealed_end], data[sealed_end:])


def _sealed_key_aad(request_digest: bytes, index: int) -> bytes:
    return _RESPONSE_DST + request_digest + struct.pack(">H", index)


def _signed(body: bytes) -> bytes:
    return _RESPONSE_DST + body


def extract_partial_key(
    share: KeyShare,
    node_key: KGCNodeKey,
    request: AnyExtractionRequest,
    *,
    rng: RngFn | None = None,
) -> PartialKeyResponse:
    """KGC node side: ``d_j = s_j·H1(id)`` sealed to the requester and signed.

    Call only after authenticating that the requester owns ``request.identity``.
    """
    d_j = identity_point(request.identity) * share.value
    digest = request.digest()
    sealed = seal(
        request.reply_key, d_j.to_bytes(), aad=_sealed_key_aad(digest, share.index), rng=rng
    )
    unsigned = PartialKeyResponse(share.index, digest, sealed, b"")
    return PartialKeyResponse(share.index, digest, sealed, node_key.sign(_signed(unsigned._body())))


# ---------------------------------------------------------------------------------------------
# user side: typed verification states


@dataclass(frozen=True, slots=True)
class PartialKey:
    """An opened but UNVERIFIED partial key ``d_j`` from KGC node ``index``.

    Call :meth:`verify` (or :func:`verify_partial_keys` for a batch) before combining.
    """

    index: int
    identity: str
    point: G2

    def __repr__(self) -> str:
        return f"PartialKey(index={self.index}, identity={self.identity!r}, point=<hidden>)"

    def verify(self, public: PublicPolynomial) -> VerifiedPartialKey:
        """Check ``e(P1, d_j) == e(S_j, Q_id)``; else raise :class:`InvalidPartialKey` (names j)."""
        q_id = identity_point(self.identity)
        if not _share_ok(self, public, q_id):
            raise InvalidPartialKey([self.index])
        return VerifiedPartialKey(self.index, self.identity, self.point)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class VerifiedPartialKey:
    """A partial key that passed the pairing check against the public polynomial."""

    index: int
    identity: str
    point: G2

    def __repr__(self) -> str:
        return f"VerifiedPartialKey(index={self.index}, identity={self.identity!r}, point=<hidden>)"

    __hash__ = None  # type: ignore[assignment]


def _share_ok(partial: PartialKey, public: PublicPolynomial, q_id: G2) -> bool:
    # e(P1, d_j) · e(−S_j, Q_id) == 1 in one multi-pairing (one final exponentiation).
    return multi_pair(
        [(G1.generator(), partial.point), (-public.evaluate(partial.index), q_id)]
    ).is_one()


def open_partial_key(
    response: PartialKeyResponse | bytes,
    *,
    request: AnyExtractionRequest,
    reply_key: X25519KeyPair,
    roster: Sequence[KGCNodePublicKey] | Mapping[int, KGCNodePublicKey] | None = None,
    node_key: KGCNodePublicKey | None = None,
) -> PartialKey:
    """User side: check node j's signature and request binding, decrypt ``d_j``.

    Pass exactly one of ``roster`` — the KGC roster of the DKG (node j is ``roster[j-1]``, as
    in :class:`~ehrshare.hazmat.dkg.DKGConfig`, or ``roster[j]`` for a mapping by share index,
    as a committee after a resharing has), preferred: the signature is then checked under
    the key of the index the response claims, so a node cannot answer in another node's name —
    or ``node_key``, the registered key of node ``response.index`` when the caller has already
    looked it up (it must be that node's key, or blame lands on the wrong node).
    Raises ``VerificationError`` for a bad signature or a response to another request,
    ``DecryptionError`` if the sealed key does not open, :class:`InvalidPartialKey` if what the
    node sealed is not a G2 point.
    """
    if isinstance(response, bytes):
        response = PartialKeyResponse.from_bytes(response)
    if reply_key.public_bytes != request.reply_key:
        raise ValueError("reply_key is not the key this request was made with")
    if response.request_digest != request.digest():
        raise VerificationError(f"response from KGC node {response.index} answers another request")
    if (roster is None) == (node_key is None):
        raise TypeError("open_partial_key takes exactly one of roster= and node_key=")
    if isinstance(roster, Mapping):
        # A committee after a resharing: share indices need not be 1..n.
        node_key = roster.get(response.index)
        if node_key is None:
            raise VerificationError(
                f"response names KGC node {response.index}; the committee holds shares "
                f"{sorted(roster)}"
            )
    elif roster is not None:
        if not 1 <= response.index <= len(roster):
            raise VerificationError(
                f"response names KGC node {response.index}; the roster has {len(roster)} nodes"
            )
        node_key = roster[response.index - 1]
    assert node_key is not None
    try:
        node_key.verify(response.signature, _signed(response._body()))
    except VerificationError as exc:
        raise VerificationError(f"response from KGC node {response.index}: {exc}") from None
    raw = open_sealed(
        reply_key,
        response.sealed_key,
        aad=_sealed_key_aad(response.request_digest, response.index),
    )
    try:
        point = G2.from_bytes(raw)
    except EncodingError as exc:
        raise InvalidPartialKey([response.index], f"is not a G2 element ({exc})") from None
    return PartialKey(response.index, request.identity, point)


@dataclass(frozen=True, slots=True)
class PartialKeyCheck:
    """Outcome of :func:`verify_partial_keys`: the good shares and the nodes that sent bad ones."""

    verified: tuple[VerifiedPartialKey, ...]
    invalid: tuple[int, ...]


def _random_weight(rng: RngFn | None) -> Scalar:
    return Scalar.random(rng)


def verify_partial_keys(
    partials: Sequence[PartialKey],
    public: PublicPolynomial,
    *,
    rng: RngFn | None = None,
) -> PartialKeyCheck:
    """Verify many partial keys for one identity at once.

    One two-pairing check of ``e(P1, Σ r_j d_j) == e(Σ r_j S_j, Q_id)`` with random weights r_j
    (a bad share slips through with probability ~1/r); if it fails, each share is checked on its
    own so the bad nodes are named in :attr:`PartialKeyCheck.invalid`.
    """
    if not partials:
        return PartialKeyCheck((), ())
    identities = {p.identity for p in partials}
    if len(identities) != 1:
        raise ValueError(f"partial keys are for {len(identities)} different identities")
    indices = [p.index for p in partials]
    if len(set(indices)) != len(indices):
        raise ValueError(f"duplicate node indices among partial keys: {sorted(indices)}")
    for p in partials:
        if not isinstance(p, PartialKey):
            raise TypeError(f"expected PartialKey, got {type(p).__name__}")
    q_id = identity_point(partials[0].identity)
    weighted_d = G2.identity()
    weighted_s = G1.identity()
    for p in partials:
        r = _random_weight(rng)
        weighted_d = weighted_d + p.point * r
        weighted_s = weighted_s + public.evaluate(p.index) * r
    if multi_pair([(G1.generator(), weighted_d), (-weighted_s, q_id)]).is_one():
        verified = tuple(VerifiedPartialKey(p.index, p.identity, p.point) for p in partials)
        return PartialKeyCheck(verified, ())
    good: list[VerifiedPartialKey] = []
    bad: list[int] = []
    for p in partials:
        if _share_ok(p, public, q_id):
            good.append(VerifiedPartialKey(p.index, p.identity, p.point))
        else:
            bad.append(p.index)
    _log.warning("rejected invalid partial keys from KGC nodes %s", bad)
    return PartialKeyCheck(tuple(good), tuple(bad))


# ---------------------------------------------------------------------------------------------
# combination


def _lagrange_at_zero(indices: Sequence[int]) -> list[Scalar]:
    coefficients = []
    for j in indices:
        num = Scalar.from_int(1)
        den = Scalar.from_int(1)
        for m in indices:
            if m != j:
                num = num * Scalar.from_int(m)
                den = den * Scalar.from_int(m - j)
        coefficients.append(num / den)
    return coefficients


def combine_partial_keys(
    verified: Sequence[VerifiedPartialKey], public: PublicPolynomial
) -> IdentitySecretKey:
    """Lagrange-combine τ verified partial keys into ``sk_id`` and check it against ``mpk``.

    Returns :class:`ehrshare.hazmat.tipre.IdentitySecretKey`, ready for ``type_secret(...)``.

    Refuses unverified input (``UnverifiedInputError``, a ``TypeError``); raises
    :class:`NotEnoughPartialKeys` with fewer than τ distinct nodes.
    """
    for v in verified:
        if not isinstance(v, VerifiedPartialKey):
            raise UnverifiedInputError(
                f"combine_partial_keys needs VerifiedPartialKey, got {type(v).__name__}; "
                "call verify_partial_keys() first"
            )
    by_index = {v.index: v for v in verified}
    need = public.threshold
    if len(by_index) < need:
        raise NotEnoughPartialKeys(len(by_index), need)
    identities = {v.identity for v in verified}
    if len(identities) != 1:
        raise ValueError(f"partial keys are for {len(identities)} different identities")
    chosen = sorted(by_index)[:need]
    sk = G2.identity()
    for j, lam in zip(chosen, _lagrange_at_zero(chosen), strict=True):
        sk = sk + by_index[j].point * lam
    # from_extracted checks e(P1, sk_id) == e(mpk, Q_id): unreachable with verified shares of
    # one public polynomial, but a wrong key must never be returned.
    return IdentitySecretKey.from_extracted(verified[0].identity, sk, MasterPublicKey(public.mpk))


@dataclass(frozen=True, slots=True)
class RecoveredKey:
    """The user's key plus the KGC nodes whose partial keys were rejected (to report them)."""

    secret_key: IdentitySecretKey
    invalid: tuple[int, ...]


def recover_identity_key(
    partials: Sequence[PartialKey],
    public: PublicPolynomial,
    *,
    rng: RngFn | None = None,
) -> RecoveredKey:
    """Verify (batched) and combine; bad shares are excluded and named, never combined.

    Raises :class:`NotEnoughPartialKeys` (listing the bad nodes) when fewer than τ shares verify.
    """
    check = verify_partial_keys(partials, public, rng=rng)
    if len(check.verified) < public.threshold:
        raise NotEnoughPartialKeys(len(check.verified), public.threshold, check.invalid)
    return RecoveredKey(combine_partial_keys(check.verified, public), check.invalid)
