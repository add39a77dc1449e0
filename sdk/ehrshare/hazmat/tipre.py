"""MH-TIPRE: identity-based, type-conditional, multi-hop proxy re-encryption on BLS12-381.

Type: identity-based proxy re-encryption (a KEM for GT elements) with record types.
Properties: unidirectional, non-interactive, multi-hop (the capsule grows by one G1+GT layer per
hop, decryption costs one pairing more per hop), type-conditional (a re-key made for type t
neither applies to nor decrypts a capsule of another type), ReEnc deterministic (one pairing).
IND-CPA only: capsules are malleable; payload integrity comes from AES-GCM in
:mod:`ehrshare.hazmat.hybrid`.
Setting: type-3 pairing e: G1×G2→GT; mpk = s·P1 ∈ G1, Q_id = H1(id) ∈ G2, sk_id = s·Q_id ∈ G2,
capsule randomness U = k·P1 ∈ G1. H1 is the RFC 9380 hash ``BLS12381G2_XMD:SHA-256_SSWU_RO_``
(indifferentiable from a random oracle, which the argument programs).
Assumption: co-BDH-type in the random-oracle model (H1, H2, H3). Publishing T_{i,t} = h·mpk with
h = H2(sk_i, t) rests on a co-BDH variant; docs/security.md §3.7 sketches the argument (not a
checked proof).
Reference: Ibraimi–Tang–Hartel–Jonker type-and-identity PRE (SDM 2008) for the type exponent,
Green–Ateniese IBP1 (ACNS 2007) for the multi-use re-encryption.

Scheme (docs/security.md §3.0)::

    TypeKey(sk_i, t)      h = H2(sk_i, t); T = h·mpk   (type-key epoch n ≥ 1: H2(sk_i, "t#n"))
    Enc(m, id_i, t)       k ←$ Zr*; U = k·P1; V = m·e(T, Q_i)^k          (= m·e(k·T, Q_i))
    Dec1(C, sk_i)         m = V / e(U, h·sk_i)                            (= V / e(U, sk_i)^h)
    ReKeyGen(sk_i,t,id_j) X ←$ GT; K = H3(X, t, i, j) − h·sk_i; R = Enc(X, id_j, t)
    ReEnc(C, rk)          innermost layer: V ← V·e(U, K); append R as the new innermost layer
    Dec(C, sk_j)          X = Dec1(innermost); for each outer layer: m = V / e(U, H3(X, …))

Deviation from the scheme as first specified, on purpose: H3(X) = H3'(X)·P2 with H3' a hash to Zr,
instead of a hash onto G2. Hash-to-G2 costs half a pairing in mcl; with a scalar the per-hop
decryption is e(H3'(X)·U, P2) — one G1 multiplication and one pairing. CPA security is unchanged in
the random-oracle model for H3' (argued, not proved, in docs/security.md §3.3): the mask
e(U, P2)^{H3'(X)} is uniform while X is hidden (by the CPA security of R), the proxy's K =
H3'(X)·P2 − h·sk_i is uniform in G2 for the same reason, and the security argument never needs H3 to
output a point of unknown discrete log. What changes: whoever knows X (the delegatee) knows log
H3(X) — it learns H3(X) anyway. Proxy + delegatee still learn h·sk_i (the type key), exactly as with
a hash onto G2. H3 also hashes the type tag and the delegator's and delegatee's identity tags (the
first specification hashed X alone), so that the tags carried in clear in every layer are bound:
editing one makes the capsule decrypt to garbage, which the AES-GCM layer rejects.

Optimisations, each an identity of the pairing: e(k·T, Q) = e(T, Q)^k with e(T, Q) cached per
recipient type key; e(U, sk)^h = e(U, h·sk) with h·sk cached per type secret.

This module must not do policy (who may delegate, how many hops): that is the chaincode's and
the proxy's job. It never logs, and never puts secret bytes into exceptions or reprs.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Final

from ehrshare.hazmat.errors import (
    EncodingError,
    UnverifiedInputError,
    VerificationError,
    WrongIdentityError,
    WrongTypeError,
)
from ehrshare.hazmat.pairing import G1, G2, GT, RngFn, Scalar, frame, hash_to_g2, pair

__all__ = [
    "CAPSULE_LAYER_SIZE",
    "MAX_HOPS",
    "REKEY_SIZE",
    "TAG_SIZE",
    "TIPRE_VERSION",
    "TYPE_PUBLIC_KEY_SIZE",
    "Capsule",
    "CapsuleLayer",
    "IdentitySecretKey",
    "MasterPublicKey",
    "MasterSecret",
    "ReKey",
    "TypePublicKey",
    "TypeSecretKey",
    "VerifiedCapsule",
    "VerifiedReKey",
    "VerifiedTypePublicKey",
    "decrypt",
    "encrypt",
    "generate_rekey",
    "identity_point",
    "identity_tag",
    "reencrypt",
    "type_tag",
]

TIPRE_VERSION: Final = 2
"""Version byte of every serialised MH-TIPRE object.

2: H1 is RFC 9380 ``BLS12381G2_XMD:SHA-256_SSWU_RO_`` (every identity point changed).
1: H1 was mcl's legacy map-to-curve; objects of version 1 are refused (docs/security.md §3.1).
"""

TAG_SIZE: Final = 32
MAX_HOPS: Final = 16
"""Hard limit of re-encryptions of one capsule; policy (chaincode, proxy) sets the real limit."""

_DST_H1: Final = b"EHRSHARE-V02-CS01-with-BLS12381G2_XMD:SHA-256_SSWU_RO_"
_DST_H2: Final = b"ehrshare/v1/tipre/H2/type-exponent"
_DST_H3: Final = b"ehrshare/v1/tipre/H3/GT-to-Zr"
_DST_ID_TAG: Final = b"ehrshare/v1/tipre/identity-tag"
_DST_TYPE_TAG: Final = b"ehrshare/v1/tipre/type-tag"
_DST_TPK_PROOF: Final = b"ehrshare/v2/tipre/type-key-proof/challenge"
_DST_TPK_NONCE: Final = b"ehrshare/v2/tipre/type-key-proof/nonce"
_MAX_LABEL_BYTES: Final = 1024

CAPSULE_LAYER_SIZE: Final = TAG_SIZE + G1.SIZE + GT.SIZE
"""One layer: recipient tag ‖ U ‖ V."""
_CAPSULE_HEADER: Final = 1 + 1 + TAG_SIZE  # version, hops, type tag
_PROOF_SIZE: Final = 2 * 32
TYPE_PUBLIC_KEY_SIZE: Final = 1 + TAG_SIZE + TAG_SIZE + G1.SIZE + _PROOF_SIZE
REKEY_SIZE: Final = 1 + 3 * TAG_SIZE + G2.SIZE + G1.SIZE + GT.SIZE
_MASTER_PUBLIC_SIZE: Final = 1 + G1.SIZE
_MASTER_SECRET_SIZE: Final = 1 + 32


def _label_bytes(what: str, label: str) -> bytes:
    if not isinstance(label, str):
        raise TypeError(f"{what} must be a str, got {type(label).__name__}")
    raw = label.encode("utf-8")
    if not raw:
        raise ValueError(f"{what} must not be empty")
    if len(raw) > _MAX_LABEL_BYTES:
        raise ValueError(f"{what} must be at most {_MAX_LABEL_BYTES} bytes, got {len(raw)}")
    return raw


def identity_tag(identity: str) -> bytes:
    """The 32-byte tag naming an identity inside capsules and keys."""
    raw = _label_bytes("identity", identity)
    return hashlib.sha256(frame(_DST_ID_TAG, raw)).digest()


def type_tag(type_label: str) -> bytes:
    """The 32-byte tag naming a record type inside capsules and keys.

    Tags are deterministic, so a guessable label is linkable; use opaque labels (for instance an
    HMAC of the clinical type) where the label itself is sensitive.
    """
    raw = _label_bytes("record type", type_label)
    return hashlib.sha256(frame(_DST_TYPE_TAG, raw)).digest()


@functools.lru_cache(maxsize=4096)
def identity_point(identity: str) -> G2:
    """H1: Q_id = H1(id) ∈ G2, the public key of an identity (cached: it is public).

    RFC 9380 ``BLS12381G2_XMD:SHA-256_SSWU_RO_`` of the identity's UTF-8 bytes under the DST
    ``EHRSHARE-V02-CS01-with-BLS12381G2_XMD:SHA-256_SSWU_RO_`` (docs/crypto-format.md).
    """
    return hash_to_g2(_label_bytes("identity", identity), _DST_H1)


def _h2(sk: G2, ttag: bytes) -> Scalar:
    return Scalar.hash(_DST_H2, sk.to_bytes(), ttag)


def _h3(x: GT, ttag: bytes, delegator_tag: bytes, delegatee_tag: bytes) -> Scalar:
    # Binding the type and both identity tags means a capsule whose tags were edited in transit
    # decrypts to garbage (caught by AES-GCM) instead of being silently accepted.
    return Scalar.hash(_DST_H3, x.to_bytes(), ttag, delegator_tag, delegatee_tag)


def _proof_challenge(
    mpk: MasterPublicKey, point: G1, commitment: G1, owner_tag: bytes, ttag: bytes
) -> Scalar:
    # Fiat–Shamir challenge of the type key's proof: binds the base (mpk), the statement (T),
    # the commitment and both tags, so a proof made for one owner, type or mpk fits no other.
    return Scalar.hash(
        _DST_TPK_PROOF,
        mpk.point.to_bytes(),
        point.to_bytes(),
        commitment.to_bytes(),
        owner_tag,
        ttag,
    )


def _check_version(what: str, b: bytes) -> None:
    if b[0] != TIPRE_VERSION:
        raise EncodingError(f"{what} has version {b[0]}, expected {TIPRE_VERSION}")


def _check_len(what: str, b: bytes, size: int) -> None:
    if not isinstance(b, bytes | bytearray):
        raise EncodingError(f"{what} must be bytes, got {type(b).__name__}")
    if len(b) != size:
        raise EncodingError(f"{what} must be {size} bytes, got {len(b)}")


class _Secret:
    """Secrets refuse hashing and hide themselves in repr."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<secret>)"


# ---------------------------------------------------------------------------------------------
# Master key (single authority / tests) and identity keys
# ---------------------------------------------------------------------------------------------


class MasterPublicKey:
    """mpk = s·P1 ∈ G1, the consortium's master public key (from the DKG in production)."""

    __slots__ = ("point",)

    def __init__(self, point: G1) -> None:
        if not isinstance(point, G1):
            raise TypeError("a master public key is a G1 element")
        if point.is_identity():
            raise ValueError("a master public key must not be the identity")
        self.point: Final = point

    def to_bytes(self) -> bytes:
        return bytes([TIPRE_VERSION]) + self.point.to_bytes()

    @staticmethod
    def from_bytes(b: bytes) -> MasterPublicKey:
        """Parse version ‖ mpk. Version 1 is accepted too: mpk = s·P1 does not involve H1, so
        a DKG result published before format version 2 names the same key (security.md §3.8)."""
        _check_len("master public key", b, _MASTER_PUBLIC_SIZE)
        if b[0] != 1:
            _check_version("master public key", b)
        return MasterPublicKey(G1.from_bytes(bytes(b[1:])))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MasterPublicKey) and self.point == other.point

    def __hash__(self) -> int:
        return hash(self.point)

    def __repr__(self) -> str:
        return f"MasterPublicKey({self.point.to_bytes()[:8].hex()}…)"


class MasterSecret(_Secret):
    """A master secret s held by ONE party: for tests, vectors and single-authority setups.

    The consortium never has one: its s exists only as DKG shares, and users obtain sk_id by
    threshold extraction (:mod:`ehrshare.hazmat.extract`). Do not use this in production.
    """

    __slots__ = ("_s",)

    def __init__(self, s: Scalar) -> None:
        if not isinstance(s, Scalar) or s.is_zero():
            raise ValueError("a master secret is a non-zero scalar")
        self._s = s

    @staticmethod
    def generate(rng: RngFn | None = None) -> MasterSecret:
        return MasterSecret(Scalar.random(rng))

    def public_key(self) -> MasterPublicKey:
        return MasterPublicKey(self._s * G1.generator())

    def extract(self, identity: str) -> IdentitySecretKey:
        """sk_id = s·H1(id)."""
        return IdentitySecretKey(identity, self._s * identity_point(identity))

    def to_secret_bytes(self) -> bytes:
        return bytes([TIPRE_VERSION]) + self._s.to_bytes()

    @staticmethod
    def from_secret_bytes(b: bytes) -> MasterSecret:
        _check_len("master secret", b, _MASTER_SECRET_SIZE)
        _check_version("master secret", b)
        s = Scalar.from_bytes(bytes(b[1:]))
        if s.is_zero():
            raise EncodingError("master secret is zero")
        return MasterSecret(s)


class IdentitySecretKey(_Secret):
    """sk_id = s·H1(id) ∈ G2, the long-term secret of one identity."""

    __slots__ = ("_point", "identity")

    def __init__(self, identity: str, point: G2) -> None:
        _label_bytes("identity", identity)
        if not isinstance(point, G2) or point.is_identity():
            raise ValueError("an identity secret key is a non-identity G2 element")
        self.identity: Final = identity
        self._point = point

    @staticmethod
    def from_extracted(identity: str, point: G2, mpk: MasterPublicKey) -> IdentitySecretKey:
        """Wrap a key combined from threshold extraction, checking e(P1, sk) == e(mpk, Q_id)."""
        key = IdentitySecretKey(identity, point)
        key.check(mpk)
        return key

    def check(self, mpk: MasterPublicKey) -> None:
        """Raise VerificationError unless this is the key of ``identity`` under ``mpk``."""
        if pair(G1.generator(), self._point) != pair(mpk.point, identity_point(self.identity)):
            raise VerificationError(
                f"secret key does not belong to identity {self.identity!r} under this mpk"
            )

    @property
    def point(self) -> G2:
        """The raw G2 element; a secret — only protocol code should touch it."""
        return self._point

    def type_secret(self, type_label: str, type_epoch: int = 0) -> TypeSecretKey:
        """The secret of one record type: h = H2(sk, t) and d = h·sk.

        ``type_epoch`` n ≥ 1 gives the type key of that epoch: h = H2(sk, tag("t#n")), an
        independent exponent (docs/security.md §3.2), while the key stays of type ``t`` (its
        capsules and re-keys carry t's tag, so grantees' keys of type t still receive them).
        """
        if not isinstance(type_epoch, int) or isinstance(type_epoch, bool) or type_epoch < 0:
            raise ValueError(f"type epoch must be an int >= 0, got {type_epoch!r}")
        ttag = type_tag(type_label)
        htag = ttag if type_epoch == 0 else type_tag(f"{type_label}#{type_epoch}")
        h = _h2(self._point, htag)
        return TypeSecretKey(self.identity, type_label, h, h * self._point)

    def to_secret_bytes(self) -> bytes:
        """version ‖ sk (96) ‖ identity (UTF-8, the rest)."""
        return bytes([TIPRE_VERSION]) + self._point.to_bytes() + self.identity.encode("utf-8")

    @staticmethod
    def from_secret_bytes(b: bytes) -> IdentitySecretKey:
        if not isinstance(b, bytes | bytearray):
            raise EncodingError(f"identity secret key must be bytes, got {type(b).__name__}")
        if len(b) < 1 + G2.SIZE + 1:
            raise EncodingError(
                f"identity secret key must be at least {1 + G2.SIZE + 1} bytes, got {len(b)}"
            )
        _check_version("identity secret key", b)
        point = G2.from_bytes(bytes(b[1 : 1 + G2.SIZE]))
        try:
            identity = bytes(b[1 + G2.SIZE :]).decode("utf-8")
        except UnicodeDecodeError:
            raise EncodingError("identity in identity secret key is not UTF-8") from None
        return IdentitySecretKey(identity, point)


class TypeSecretKey(_Secret):
    """The per-type secret of an identity: h = H2(sk_i, t) and d = h·sk_i.

    Derive it with :meth:`IdentitySecretKey.type_secret`; keep it as secret as sk_i.
    """

    __slots__ = ("_d", "_h", "identity", "identity_tag", "type_label", "type_tag")

    def __init__(self, identity: str, type_label: str, h: Scalar, d: G2) -> None:
        self.identity: Final = identity
        self.type_label: Final = type_label
        self.identity_tag: Final = identity_tag(identity)
        self.type_tag: Final = type_tag(type_label)
        self._h = h
        self._d = d

    def public_key(self, mpk: MasterPublicKey) -> VerifiedTypePublicKey:
        """T_{i,t} = h·mpk with a proof of knowledge of h, to publish on chain.

        The proof is a Schnorr proof in base mpk (Fiat–Shamir, challenge bound to mpk, T and
        both tags) with a deterministic nonce derived from h, so the same key always gives the
        same bytes (re-publishing an unchanged key is recognisable) and no RNG can leak h.
        """
        if not isinstance(mpk, MasterPublicKey):
            raise TypeError("mpk must be a MasterPublicKey")
        point = self._h * mpk.point
        r = Scalar.hash(
            _DST_TPK_NONCE,
            self._h.to_bytes(),
            mpk.point.to_bytes(),
            self.identity_tag,
            self.type_tag,
        )
        commitment = r * mpk.point
        c = _proof_challenge(mpk, point, commitment, self.identity_tag, self.type_tag)
        z = r + c * self._h
        return VerifiedTypePublicKey(
            self.identity_tag,
            self.type_tag,
            point,
            c.to_bytes() + z.to_bytes(),
            self.identity,
            self.type_label,
        )


# ---------------------------------------------------------------------------------------------
# Type public keys
# ---------------------------------------------------------------------------------------------


class TypePublicKey:
    """T_{i,t} as received from the chain: unverified until :meth:`verify`.

    Serialised as version ‖ owner tag ‖ type tag ‖ T ‖ c ‖ z (177 bytes), where (c, z) is a
    Schnorr proof of knowledge of h with T = h·mpk (docs/crypto-format.md §5).
    """

    __slots__ = ("owner_tag", "point", "proof", "type_tag")

    def __init__(self, owner_tag: bytes, type_tag: bytes, point: G1, proof: bytes) -> None:
        if len(owner_tag) != TAG_SIZE or len(type_tag) != TAG_SIZE:
            raise ValueError(f"tags must be {TAG_SIZE} bytes")
        if not isinstance(point, G1) or point.is_identity():
            raise ValueError("a type public key is a non-identity G1 element")
        if len(proof) != _PROOF_SIZE:
            raise ValueError(f"a type key proof is {_PROOF_SIZE} bytes")
        self.owner_tag: Final = bytes(owner_tag)
        self.type_tag: Final = bytes(type_tag)
        self.point: Final = point
        self.proof: Final = bytes(proof)

    def to_bytes(self) -> bytes:
        return (
            bytes([TIPRE_VERSION])
            + self.owner_tag
            + self.type_tag
            + self.point.to_bytes()
            + self.proof
        )

    @staticmethod
    def from_bytes(b: bytes) -> TypePublicKey:
        _check_len("type public key", b, TYPE_PUBLIC_KEY_SIZE)
        _check_version("type public key", b)
        o = 1 + 2 * TAG_SIZE
        return TypePublicKey(
            bytes(b[1 : 1 + TAG_SIZE]),
            bytes(b[1 + TAG_SIZE : o]),
            G1.from_bytes(bytes(b[o : o + G1.SIZE])),
            bytes(b[o + G1.SIZE :]),
        )

    def verify(self, *, owner: str, type_label: str, mpk: MasterPublicKey) -> VerifiedTypePublicKey:
        """Check the key is bound to ``owner`` and ``type_label`` and that its proof shows
        knowledge of h with T = h·mpk under this ``mpk``.

        Without the proof any G1 point would pass, and whoever could publish T = y·P1 could
        read new records with y·Q_i. Authenticity (that ``owner`` published it) still comes
        from the owner's signed chain transaction that carried these bytes.
        """
        if not isinstance(mpk, MasterPublicKey):
            raise TypeError("mpk must be a MasterPublicKey")
        if self.owner_tag != identity_tag(owner):
            raise WrongIdentityError(f"type public key does not belong to identity {owner!r}")
        if self.type_tag != type_tag(type_label):
            raise WrongTypeError(f"type public key is not for record type {type_label!r}")
        try:
            c = Scalar.from_bytes(self.proof[:32])
            z = Scalar.from_bytes(self.proof[32:])
        except EncodingError:
            raise VerificationError(
                "type public key proof is not canonical (a scalar is not below r)"
            ) from None
        commitment = z * mpk.point - c * self.point
        if _proof_challenge(mpk, self.point, commitment, self.owner_tag, self.type_tag) != c:
            raise VerificationError(
                f"type public key of {owner!r} for {type_label!r} has no valid proof of "
                "knowledge under this master public key"
            )
        return VerifiedTypePublicKey(
            self.owner_tag, self.type_tag, self.point, self.proof, owner, type_label
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TypePublicKey) and self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.point.to_bytes()[:8].hex()}…)"


class VerifiedTypePublicKey(TypePublicKey):
    """A type public key bound to a known owner and type; what :func:`encrypt` accepts."""

    __slots__ = ("_mask_base", "owner", "type_label")

    def __init__(
        self, owner_tag: bytes, ttag: bytes, point: G1, proof: bytes, owner: str, type_label: str
    ) -> None:
        super().__init__(owner_tag, ttag, point, proof)
        self.owner: Final = owner
        self.type_label: Final = type_label
        self._mask_base: GT | None = None

    def mask_base(self) -> GT:
        """e(T_{i,t}, Q_i), computed once per key (it is public)."""
        if self._mask_base is None:
            self._mask_base = pair(self.point, identity_point(self.owner))
        return self._mask_base


# ---------------------------------------------------------------------------------------------
# Capsules
# ---------------------------------------------------------------------------------------------


class CapsuleLayer:
    """One layer (recipient tag, U ∈ G1, V ∈ GT) of a capsule."""

    __slots__ = ("recipient_tag", "u", "v")

    def __init__(self, recipient_tag: bytes, u: G1, v: GT) -> None:
        self.recipient_tag: Final = recipient_tag
        self.u: Final = u
        self.v: Final = v

    def to_bytes(self) -> bytes:
        return self.recipient_tag + self.u.to_bytes() + self.v.to_bytes()

    @staticmethod
    def from_bytes(b: bytes, where: str = "capsule layer") -> CapsuleLayer:
        _check_len(where, b, CAPSULE_LAYER_SIZE)
        try:
            u = G1.from_bytes(bytes(b[TAG_SIZE : TAG_SIZE + G1.SIZE]))
            v = GT.from_bytes(bytes(b[TAG_SIZE + G1.SIZE :]))
        except EncodingError as exc:
            raise EncodingError(f"{where}: {exc}") from None
        return CapsuleLayer(bytes(b[:TAG_SIZE]), u, v)


class Capsule:
    """An MH-TIPRE ciphertext of a GT element: a type tag and 1 + hops layers.

    Layer 0 is addressed to the original owner; the last layer ("innermost") to the current
    holder, who decrypts it with Dec1 and then unwinds the outer layers. Serialised as
    version ‖ hops ‖ type tag ‖ (hops + 1) × (recipient tag ‖ U ‖ V).

    Received capsules are unverified: call :meth:`verify` with the owner and type the chain
    records for this record.
    """

    __slots__ = ("layers", "type_tag")

    def __init__(self, ttag: bytes, layers: Sequence[CapsuleLayer]) -> None:
        if len(ttag) != TAG_SIZE:
            raise ValueError(f"type tag must be {TAG_SIZE} bytes")
        if not 1 <= len(layers) <= MAX_HOPS + 1:
            raise ValueError(f"a capsule has 1 to {MAX_HOPS + 1} layers, got {len(layers)}")
        self.type_tag: Final = bytes(ttag)
        self.layers: Final = tuple(layers)

    @property
    def hops(self) -> int:
        return len(self.layers) - 1

    @property
    def owner_tag(self) -> bytes:
        return self.layers[0].recipient_tag

    @property
    def holder_tag(self) -> bytes:
        """Tag of the identity that can decrypt the capsule now."""
        return self.layers[-1].recipient_tag

    @staticmethod
    def size(hops: int) -> int:
        """Serialised size of a capsule re-encrypted ``hops`` times."""
        return _CAPSULE_HEADER + (hops + 1) * CAPSULE_LAYER_SIZE

    def to_bytes(self) -> bytes:
        head = bytes([TIPRE_VERSION, self.hops]) + self.type_tag
        return head + b"".join(layer.to_bytes() for layer in self.layers)

    @staticmethod
    def from_bytes(b: bytes) -> Capsule:
        if not isinstance(b, bytes | bytearray):
            raise EncodingError(f"capsule must be bytes, got {type(b).__name__}")
        if len(b) < _CAPSULE_HEADER:
            raise EncodingError(f"capsule must be at least {Capsule.size(0)} bytes, got {len(b)}")
        _check_version("capsule", b)
        hops = b[1]
        if hops > MAX_HOPS:
            raise EncodingError(f"capsule has {hops} hops, at most {MAX_HOPS} are allowed")
        _check_len(f"capsule with {hops} hops", b, Capsule.size(hops))
        layers = [
            CapsuleLayer.from_bytes(
                bytes(b[start : start + CAPSULE_LAYER_SIZE]), f"capsule layer {i}"
            )
            for i, start in enumerate(
                range(_CAPSULE_HEADER, len(b), CAPSULE_LAYER_SIZE),
            )
        ]
        return Capsule(bytes(b[2:_CAPSULE_HEADER]), layers)

    def verify(self, *, owner: str, type_label: str) -> VerifiedCapsule:
        """Check the capsule is for ``owner``'s record of ``type_label`` (as the chain says)."""
        if self.owner_tag != identity_tag(owner):
            raise WrongIdentityError(f"capsule is not addressed to owner {owner!r}")
        if self.type_tag != type_tag(type_label):
            raise WrongTypeError(f"capsule is not of record type {type_label!r}")
        return VerifiedCapsule(self.type_tag, self.layers, owner, type_label)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Capsule) and self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(hops={self.hops})"


class VerifiedCapsule(Capsule):
    """A capsule bound to a known owner and record type; what the operations accept."""

    __slots__ = ("owner", "type_label")

    def __init__(
        self, ttag: bytes, layers: Sequence[CapsuleLayer], owner: str, type_label: str
    ) -> None:
        super().__init__(ttag, layers)
        self.owner: Final = owner
        self.type_label: Final = type_label


# ---------------------------------------------------------------------------------------------
# Re-encryption keys
# ---------------------------------------------------------------------------------------------


class ReKey(_Secret):
    """A re-encryption key rk = (t, K, R) as received: unverified until :meth:`verify`.

    Sensitive: the proxy holding it together with the delegatee, or with any reader further
    down a capsule's path (each learns this re-key's X while decrypting), recovers the
    delegator's type key (docs/security.md §3.2), so it never goes on chain in clear.
    Serialised (``to_secret_bytes``) as
    version ‖ type tag ‖ delegator tag ‖ delegatee tag ‖ K ‖ R.U ‖ R.V.
    """

    __slots__ = ("_k", "_r", "delegatee_tag", "delegator_tag", "type_tag")

    def __init__(
        self, ttag: bytes, delegator_tag: bytes, delegatee_tag: bytes, k: G2, r: CapsuleLayer
    ) -> None:
        if r.recipient_tag != delegatee_tag:
            raise ValueError("the re-key's R must be addressed to the delegatee")
        self.type_tag: Final = ttag
        self.delegator_tag: Final = delegator_tag
        self.delegatee_tag: Final = delegatee_tag
        self._k = k
        self._r = r

    def to_secret_bytes(self) -> bytes:
        return (
            bytes([TIPRE_VERSION])
            + self.type_tag
            + self.delegator_tag
            + self.delegatee_tag
            + self._k.to_bytes()
            + self._r.u.to_bytes()
            + self._r.v.to_bytes()
        )

    @staticmethod
    def from_secret_bytes(b: bytes) -> ReKey:
        _check_len("re-encryption key", b, REKEY_SIZE)
        _check_version("re-encryption key", b)
        o = 1
        ttag, o = bytes(b[o : o + TAG_SIZE]), o + TAG_SIZE
        delegator, o = bytes(b[o : o + TAG_SIZE]), o + TAG_SIZE
        delegatee, o = bytes(b[o : o + TAG_SIZE]), o + TAG_SIZE
        try:
            k = G2.from_bytes(bytes(b[o : o + G2.SIZE]))
            r = CapsuleLayer.from_bytes(delegatee + bytes(b[o + G2.SIZE :]), "re-key R")
        except EncodingError as exc:
            raise EncodingError(f"re-encryption key: {exc}") from None
        return ReKey(ttag, delegator, delegatee, k, r)

    def verify(self, *, delegator: str, delegatee: str, type_label: str) -> VerifiedReKey:
        """Check the re-key goes from ``delegator`` to ``delegatee`` for ``type_label``.

        That the delegator made it comes from the signed grant that carried it; K itself cannot
        be checked by anyone but the delegatee.
        """
        if self.delegator_tag != identity_tag(delegator):
            raise WrongIdentityError(f"re-key is not from delegator {delegator!r}")
        if self.delegatee_tag != identity_tag(delegatee):
            raise WrongIdentityError(f"re-key is not for delegatee {delegatee!r}")
        if self.type_tag != type_tag(type_label):
            raise WrongTypeError(f"re-key is not for record type {type_label!r}")
        return VerifiedReKey(
            self.type_tag, self.delegator_tag, self.delegatee_tag, self._k, self._r, type_label
        )


class VerifiedReKey(ReKey):
    """A re-key bound to known identities and type; what :func:`reencrypt` accepts."""

    __slots__ = ("type_label",)

    def __init__(
        self,
        ttag: bytes,
        delegator_tag: bytes,
        delegatee_tag: bytes,
        k: G2,
        r: CapsuleLayer,
        type_label: str,
    ) -> None:
        super().__init__(ttag, delegator_tag, delegatee_tag, k, r)
        self.type_label: Final = type_label


# ---------------------------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------------------------


def _require(obj: object, cls: type, what: str) -> None:
    if not isinstance(obj, cls):
        if isinstance(obj, cls.__mro__[1]):
            raise UnverifiedInputError(f"{what} is unverified; call .verify(...) first")
        raise TypeError(f"{what} must be a {cls.__name__}, got {type(obj).__name__}")


def _encrypt_layer(m: GT, recipient: VerifiedTypePublicKey, rng: RngFn | None) -> CapsuleLayer:
    k = Scalar.random(rng)
    return CapsuleLayer(recipient.owner_tag, k * G1.generator(), m * recipient.mask_base() ** k)


def encrypt(
    m: GT, recipient: VerifiedTypePublicKey, *, rng: RngFn | None = None
) -> VerifiedCapsule:
    """Enc: encapsulate ``m`` to the owner and type of ``recipient`` (anyone can do this)."""
    _require(recipient, VerifiedTypePublicKey, "recipient type public key")
    if not isinstance(m, GT):
        raise TypeError(f"m must be a GT element, got {type(m).__name__}")
    layer = _encrypt_layer(m, recipient, rng)
    return VerifiedCapsule(recipient.type_tag, [layer], recipient.owner, recipient.type_label)


def generate_rekey(
    delegating_sk: TypeSecretKey,
    receiving_pk: VerifiedTypePublicKey,
    *,
    rng: RngFn | None = None,
) -> VerifiedReKey:
    """ReKeyGen: a key letting a proxy turn ``delegating_sk``'s capsules of its type into
    capsules for the owner of ``receiving_pk`` (which must be a key of the same type)."""
    if not isinstance(delegating_sk, TypeSecretKey):
        raise TypeError("delegating_sk must be a TypeSecretKey")
    _require(receiving_pk, VerifiedTypePublicKey, "receiving type public key")
    if receiving_pk.type_tag != delegating_sk.type_tag:
        raise WrongTypeError(
            f"receiving key is for another record type than {delegating_sk.type_label!r}"
        )
    x = GT.random(rng)
    h3 = _h3(x, delegating_sk.type_tag, delegating_sk.identity_tag, receiving_pk.owner_tag)
    k = h3 * G2.generator() - delegating_sk._d
    r = _encrypt_layer(x, receiving_pk, rng)
    return VerifiedReKey(
        delegating_sk.type_tag,
        delegating_sk.identity_tag,
        receiving_pk.owner_tag,
        k,
        r,
        delegating_sk.type_label,
    )


def reencrypt(capsule: VerifiedCapsule, rekey: VerifiedReKey) -> VerifiedCapsule:
    """ReEnc: re-encrypt the innermost layer with ``rekey`` and append its R (one pairing)."""
    _require(capsule, VerifiedCapsule, "capsule")
    _require(rekey, VerifiedReKey, "re-encryption key")
    if rekey.type_tag != capsule.type_tag:
        raise WrongTypeError(
            f"re-key for type {rekey.type_label!r} cannot re-encrypt a capsule of type "
            f"{capsule.type_label!r}"
        )
    if rekey.delegator_tag != capsule.holder_tag:
        raise WrongIdentityError("re-key's delegator is not the capsule's current holder")
    if capsule.hops >= MAX_HOPS:
        raise ValueError(f"capsule already has {capsule.hops} hops, the limit is {MAX_HOPS}")
    inner = capsule.layers[-1]
    reenc = CapsuleLayer(inner.recipient_tag, inner.u, inner.v * pair(inner.u, rekey._k))
    layers = [*capsule.layers[:-1], reenc, rekey._r]
    return VerifiedCapsule(capsule.type_tag, layers, capsule.owner, capsule.type_label)


def decrypt(capsule: VerifiedCapsule, receiving_sk: TypeSecretKey) -> GT:
    """Dec: recover m from a capsule held by ``receiving_sk``'s identity, after any hops.

    A wrong key cannot be detected here (CPA KEM): it yields a wrong m, which the AES-GCM layer
    turns into a DecryptionError. A key of another identity or type is refused up front.
    """
    _require(capsule, VerifiedCapsule, "capsule")
    if not isinstance(receiving_sk, TypeSecretKey):
        raise TypeError("receiving_sk must be a TypeSecretKey")
    if receiving_sk.type_tag != capsule.type_tag:
        raise WrongTypeError(
            f"key for type {receiving_sk.type_label!r} cannot decrypt a capsule of type "
            f"{capsule.type_label!r}"
        )
    if receiving_sk.identity_tag != capsule.holder_tag:
        raise WrongIdentityError(
            f"capsule is not addressed to {receiving_sk.identity!r} at its current hop"
        )
    # V / e(A, B) is computed as V · e(−A, B): negating in G1 is cheaper than inverting in GT.
    inner = capsule.layers[-1]
    x = inner.v * pair(-inner.u, receiving_sk._d)
    layers = capsule.layers
    for i in range(len(layers) - 2, -1, -1):
        # e(U, H3(X)) with H3(X) = H3'(X)·P2 is e(H3'(X)·U, P2): a G1 multiplication is cheaper
        h3 = _h3(x, capsule.type_tag, layers[i].recipient_tag, layers[i + 1].recipient_tag)
        x = layers[i].v * pair(-h3 * layers[i].u, G2.generator())
    return x
