"""Long-term keys of a KGC node, and sealing of small secrets to an X25519 key.

Each key-generation-centre (KGC) node has two long-term keys:

* an **ECDSA P-256** signing key. Every DKG bundle and every extraction response is signed with
  it. P-256 rather than Ed25519 because the consortium's identities are Fabric X.509 identities,
  which are ECDSA P-256 by default: the chaincode that stores the DKG board and the auditors
  verify bundles with the same tooling and curve as every Fabric transaction, and a node may use
  its enrolled Fabric key here. Signatures are the fixed 64-byte ``r || s`` form with low S
  (Fabric rejects high-S signatures, and a single valid form keeps bundles canonical).
* an **X25519** key that DKG dealers seal shares to.

:func:`seal` / :func:`open_sealed` are a small ECIES (X25519 + HKDF-SHA256 + AES-256-GCM) with a
fresh ephemeral key per message and caller-chosen associated data, used for DKG shares and for
extracted partial keys.

This module must not import the pairing library, log key material or put secret bytes into
exception messages. Every decryption failure surfaces as the single opaque
:class:`ehrshare.hazmat.errors.DecryptionError`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NoReturn

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ehrshare.hazmat.errors import DecryptionError, EncodingError, VerificationError

__all__ = [
    "SEALED_OVERHEAD",
    "SIGNATURE_SIZE",
    "KGCNodeKey",
    "KGCNodePublicKey",
    "X25519KeyPair",
    "open_sealed",
    "seal",
]

RngFn = Callable[[int], bytes]  # same shape as ehrshare.hazmat.pairing.RngFn, without pymcl

SIGNATURE_SIZE: Final = 64
"""Bytes of a signature: 32-byte big-endian r, then 32-byte big-endian s (low S)."""

SEALED_OVERHEAD: Final = 32 + 16
"""Bytes :func:`seal` adds to a plaintext: the ephemeral X25519 key and the GCM tag."""

_P256_ORDER: Final = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)
_PUBLIC_VERSION: Final = 1
_PUBLIC_SIZE: Final = 1 + 33 + 32
_SEAL_DST: Final = b"ehrshare/v1/ecies-x25519-hkdf-sha256-aes256gcm"
# Each key seals one message (the ephemeral key is fresh), so a constant GCM nonce never repeats.
_GCM_NONCE: Final = bytes(12)


def _decryption_error() -> NoReturn:
    raise DecryptionError("decryption failed")


def _verification_error(message: str) -> NoReturn:
    raise VerificationError(message)


def _encoding_error(message: str) -> NoReturn:
    raise EncodingError(message)


def _rng_or_default(rng: RngFn | None) -> RngFn:
    return rng if rng is not None else os.urandom


def _x25519_from_rng(rng: RngFn) -> X25519PrivateKey:
    raw = rng(32)
    if len(raw) != 32:
        raise ValueError(f"rng must return 32 bytes, got {len(raw)}")
    return X25519PrivateKey.from_private_bytes(raw)


class X25519KeyPair:
    """An X25519 private key (secret): a recipient of :func:`seal`.

    Use :meth:`generate` for an ephemeral key (e.g. an extraction request) or as part of a
    :class:`KGCNodeKey`. Secret: no hash, masked repr, bytes only through ``to_secret_bytes``.
    """

    __slots__ = ("_private", "_public_bytes")

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self._public_bytes = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls, rng: RngFn | None = None) -> X25519KeyPair:
        """A fresh key pair from ``rng`` (default ``os.urandom``)."""
        return cls(_x25519_from_rng(_rng_or_default(rng)))

    @classmethod
    def from_secret_bytes(cls, data: bytes) -> X25519KeyPair:
        """Load a private key written by :meth:`to_secret_bytes` (32 bytes)."""
        if len(data) != 32:
            _encoding_error(f"X25519 private key must be 32 bytes, got {len(data)}")
        return cls(X25519PrivateKey.from_private_bytes(data))

    def to_secret_bytes(self) -> bytes:
        """The raw 32-byte private key. Handle as a secret."""
        return self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def public_bytes(self) -> bytes:
        """The 32-byte public key that senders seal to."""
        return self._public_bytes

    def exchange(self, peer_public: bytes) -> bytes:
        """X25519 shared secret with a 32-byte peer public key (rejects low-order points)."""
        if len(peer_public) != 32:
            _encoding_error(f"X25519 public key must be 32 bytes, got {len(peer_public)}")
        try:
            return self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            # cryptography refuses an all-zero shared secret (low-order peer point).
            _decryption_error()

    def __repr__(self) -> str:
        return f"X25519KeyPair(public={self._public_bytes.hex()[:16]}…, private=<hidden>)"

    __hash__ = None  # type: ignore[assignment]


def _seal_key(
    shared: bytes, ephemeral_public: bytes, recipient_public: bytes, info: bytes
) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=_SEAL_DST + ephemeral_public + recipient_public + info,
    )
    return hkdf.derive(shared)


def seal(
    recipient_public: bytes,
    plaintext: bytes,
    *,
    aad: bytes,
    rng: RngFn | None = None,
) -> bytes:
    """Encrypt ``plaintext`` to a 32-byte X25519 public key; returns ``epk || ct || tag``.

    ``aad`` is authenticated (and bound into the key derivation) but not encrypted: put in it
    everything the ciphertext must not be moved to (session, sender, recipient, purpose).
    """
    if len(recipient_public) != 32:
        raise ValueError(f"X25519 public key must be 32 bytes, got {len(recipient_public)}")
    ephemeral = X25519KeyPair.generate(rng)
    try:
        shared = ephemeral._private.exchange(X25519PublicKey.from_public_bytes(recipient_public))
    except ValueError as exc:
        raise ValueError("recipient X25519 public key is a low-order point") from exc
    key = _seal_key(shared, ephemeral.public_bytes, recipient_public, aad)
    return ephemeral.public_bytes + AESGCM(key).encrypt(_GCM_NONCE, plaintext, aad)


def open_sealed(recipient: X25519KeyPair, sealed: bytes, *, aad: bytes) -> bytes:
    """Decrypt what :func:`seal` produced; any failure is the one opaque ``DecryptionError``."""
    if len(sealed) < SEALED_OVERHEAD:
        _decryption_error()
    ephemeral_public = sealed[:32]
    shared = recipient.exchange(ephemeral_public)
    key = _seal_key(shared, ephemeral_public, recipient.public_bytes, aad)
    try:
        return AESGCM(key).decrypt(_GCM_NONCE, sealed[32:], aad)
    except InvalidTag:
        _decryption_error()


def _normalise_low_s(r: int, s: int) -> tuple[int, int]:
    return (r, _P256_ORDER - s) if s > _P256_ORDER // 2 else (r, s)


@dataclass(frozen=True, slots=True)
class KGCNodePublicKey:
    """The public half of a KGC node's long-term keys, as registered with the consortium.

    ``signing`` is the SEC1 compressed P-256 point (33 bytes), ``encryption`` the X25519 key
    (32 bytes). Serialised as ``version(1) || signing(33) || encryption(32)``.
    """

    signing: bytes
    encryption: bytes

    def __post_init__(self) -> None:
        if len(self.signing) != 33:
            _encoding_error(
                f"P-256 public key must be 33 bytes compressed, got {len(self.signing)}"
            )
        if len(self.encryption) != 32:
            _encoding_error(f"X25519 public key must be 32 bytes, got {len(self.encryption)}")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.signing)
        except ValueError:
            _encoding_error("signing key is not a point on P-256")

    SIZE = _PUBLIC_SIZE

    def to_bytes(self) -> bytes:
        """Canonical 66-byte encoding."""
        return bytes([_PUBLIC_VERSION]) + self.signing + self.encryption

    @classmethod
    def from_bytes(cls, data: bytes) -> KGCNodePublicKey:
        """Parse :meth:`to_bytes` output, checking length, version and the P-256 point."""
        if len(data) != _PUBLIC_SIZE:
            _encoding_error(f"KGC node public key must be {_PUBLIC_SIZE} bytes, got {len(data)}")
        if data[0] != _PUBLIC_VERSION:
            _encoding_error(f"KGC node public key version must be {_PUBLIC_VERSION}, got {data[0]}")
        return cls(signing=data[1:34], encryption=data[34:])

    def fingerprint(self) -> str:
        """Short hex SHA-256 of the encoding, for logs and error messages."""
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]

    def verify(self, signature: bytes, message: bytes) -> None:
        """Check a 64-byte low-S signature over ``message``; raise ``VerificationError`` if not."""
        if len(signature) != SIGNATURE_SIZE:
            _verification_error(f"signature must be {SIGNATURE_SIZE} bytes, got {len(signature)}")
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if not (0 < r < _P256_ORDER and 0 < s <= _P256_ORDER // 2):
            _verification_error("signature is not a canonical low-S P-256 signature")
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.signing)
        digest = hashlib.sha256(message).digest()
        try:
            key.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        except _CryptoInvalidSignature:
            _verification_error("signature does not verify under the node's signing key")


class KGCNodeKey:
    """A KGC node's long-term secret keys (P-256 signing + X25519 sealing).

    Create once per node with :meth:`generate` (or load with :meth:`from_secret_bytes`), register
    :attr:`public_key` with the consortium, and pass the key to
    :class:`~ehrshare.hazmat.dkg.DKGNode` and to
    :func:`~ehrshare.hazmat.extract.extract_partial_key`. Secret: no hash, masked repr.
    """

    __slots__ = ("_encryption", "_public", "_signing")

    _SECRET_SIZE: Final = 1 + 32 + 32

    def __init__(self, signing: ec.EllipticCurvePrivateKey, encryption: X25519KeyPair) -> None:
        if not isinstance(signing.curve, ec.SECP256R1):
            raise ValueError(f"signing key must be on P-256, got {signing.curve.name}")
        self._signing = signing
        self._encryption = encryption
        self._public = KGCNodePublicKey(
            signing=signing.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
            ),
            encryption=encryption.public_bytes,
        )

    @classmethod
    def generate(cls, rng: RngFn | None = None) -> KGCNodeKey:
        """Fresh keys from ``rng`` (default ``os.urandom``)."""
        rand = _rng_or_default(rng)
        # 48 bytes reduced mod (n-1) keeps the bias below 2^-128.
        d = int.from_bytes(rand(48), "big") % (_P256_ORDER - 1) + 1
        return cls(ec.derive_private_key(d, ec.SECP256R1()), X25519KeyPair.generate(rand))

    @classmethod
    def from_secret_bytes(cls, data: bytes) -> KGCNodeKey:
        """Load keys written by :meth:`to_secret_bytes`."""
        if len(data) != cls._SECRET_SIZE:
            _encoding_error(f"KGC node key must be {cls._SECRET_SIZE} bytes, got {len(data)}")
        if data[0] != _PUBLIC_VERSION:
            _encoding_error(f"KGC node key version must be {_PUBLIC_VERSION}, got {data[0]}")
        d = int.from_bytes(data[1:33], "big")
        if not 0 < d < _P256_ORDER:
            _encoding_error("P-256 private scalar is out of range")
        signing = ec.derive_private_key(d, ec.SECP256R1())
        return cls(signing, X25519KeyPair.from_secret_bytes(data[33:]))

    def to_secret_bytes(self) -> bytes:
        """``version || P-256 scalar (32, big-endian) || X25519 private (32)``. A secret."""
        d = self._signing.private_numbers().private_value
        return bytes([_PUBLIC_VERSION]) + d.to_bytes(32, "big") + self._encryption.to_secret_bytes()

    @property
    def public_key(self) -> KGCNodePublicKey:
        """What the other nodes and the users need: the two public keys."""
        return self._public

    @property
    def encryption_key(self) -> X25519KeyPair:
        """The X25519 key that DKG shares are sealed to."""
        return self._encryption

    def sign(self, message: bytes) -> bytes:
        """A 64-byte low-S ECDSA-P256/SHA-256 signature over ``message``."""
        digest = hashlib.sha256(message).digest()
        der = self._signing.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        r, s = _normalise_low_s(*decode_dss_signature(der))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def __repr__(self) -> str:
        return f"KGCNodeKey(public={self._public.fingerprint()}, secret=<hidden>)"

    __hash__ = None  # type: ignore[assignment]
