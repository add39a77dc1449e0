"""Hybrid record encryption: MH-TIPRE capsule + chunked AES-256-GCM (STREAM) payload.

Type: KEM/DEM hybrid. The KEM encapsulates a random m ∈ GT to (owner, type) with MH-TIPRE; the
DEM key is KDF(m) = HKDF-SHA256(IKM = m's 576 bytes, no salt, info = frame(DST_KDF, binding)),
binding = frame(DST_AAD, version, record id, owner, type label), where the owner is the
record owner's identity, never the reader's (docs/crypto-format.md §7).
Properties: the payload is split into fixed-size chunks (1 MiB by default), each sealed with
AES-256-GCM under nonce = prefix(7) ‖ chunk index(4) ‖ last-chunk flag(1) — the STREAM
construction of Hoang–Reyhanitabar–Rogaway–Vizár (CRYPTO 2015) — so dropping, reordering,
duplicating, truncating or extending chunks is detected. The AAD of every chunk binds the stream
header, the record id, owner, type and format version. Memory use is about two chunks,
whatever the record size.
Every failure to decrypt — wrong key, tampered chunk, truncated or extended stream, wrong AAD,
garbled header — raises the single opaque :class:`~ehrshare.hazmat.errors.DecryptionError`.
A failing stream may already have written earlier, authentic chunks to the output: callers must
discard the output on error (the recipes in :mod:`ehrshare.crypto` do).

Stream layout: magic "EHRS" ‖ version(1) ‖ chunk size(4, big-endian) ‖ nonce prefix(7), then the
sealed chunks (chunk size + 16 bytes each, the last one shorter or equal; an empty record is one
sealed empty chunk).

This module must not log keys, m or plaintext, nor distinguish decryption failures.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ehrshare.hazmat import tipre
from ehrshare.hazmat.errors import DecryptionError
from ehrshare.hazmat.pairing import GT, RngFn, frame

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAX_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "TAG_SIZE",
    "Readable",
    "RecordContext",
    "Writable",
    "decrypt_record",
    "decrypt_stream",
    "derive_record_key",
    "encrypt_record",
    "encrypt_stream",
    "sealed_size",
]

FORMAT_VERSION: Final = 1
DEFAULT_CHUNK_SIZE: Final = 1 << 20
MIN_CHUNK_SIZE: Final = 1 << 10
MAX_CHUNK_SIZE: Final = 1 << 26
TAG_SIZE: Final = 16
_MAGIC: Final = b"EHRS"
_PREFIX_SIZE: Final = 7
HEADER_SIZE: Final = len(_MAGIC) + 1 + 4 + _PREFIX_SIZE
_MAX_CHUNKS: Final = 1 << 32
_DST_KDF: Final = b"ehrshare/v1/record-key/hkdf-sha256"
_DST_AAD: Final = b"ehrshare/v1/record-aad"


class Readable(Protocol):
    """Anything with ``read(n) -> bytes`` (files, BytesIO, sockets' makefile)."""

    def read(self, n: int = -1, /) -> bytes: ...


class Writable(Protocol):
    """Anything with ``write(b)`` (files, BytesIO, hash adapters)."""

    def write(self, b: bytes, /) -> object: ...


@dataclass(frozen=True)
class RecordContext:
    """What a record's key and every chunk are bound to: record id, owner and record type."""

    record_id: str
    owner: str
    type_label: str

    def __post_init__(self) -> None:
        for name in ("record_id", "owner", "type_label"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty str")

    def binding(self) -> bytes:
        """Canonical bytes of the context and the format version."""
        return frame(
            _DST_AAD,
            bytes([FORMAT_VERSION]),
            self.record_id.encode("utf-8"),
            self.owner.encode("utf-8"),
            self.type_label.encode("utf-8"),
        )


def derive_record_key(m: GT, context: RecordContext) -> bytes:
    """KDF: the 32-byte AES key of a record from the encapsulated m (HKDF-SHA256)."""
    if not isinstance(m, GT):
        raise TypeError("m must be a GT element")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=frame(_DST_KDF, context.binding()),
    )
    return hkdf.derive(m.to_bytes())


def sealed_size(plaintext_size: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Bytes of the sealed stream for a plaintext of ``plaintext_size`` bytes."""
    chunks = max(1, -(-plaintext_size // chunk_size))
    return HEADER_SIZE + plaintext_size + chunks * TAG_SIZE


def _read_exact(src: Readable, n: int) -> bytes:
    """Read n bytes, or fewer only at end of input (some readers return short reads)."""
    first = src.read(n)
    if len(first) == n or not first:
        return bytes(first)
    parts = [first]
    got = len(first)
    while got < n:
        more = src.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class _IterReader:
    """Adapts an iterable of byte strings to ``read(n)``."""

    def __init__(self, parts: Iterable[bytes]) -> None:
        self._it: Iterator[bytes] = iter(parts)
        self._buf = bytearray()

    def read(self, n: int = -1, /) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                part = next(self._it)
            except StopIteration:
                break
            if not isinstance(part, bytes | bytearray | memoryview):
                raise TypeError(f"plaintext parts must be bytes, got {type(part).__name__}")
            self._buf += part
        if n < 0:
            n = len(self._buf)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != 32:
        raise ValueError("an AES-256 key must be 32 bytes")


def encrypt_stream(
    src: Readable | Iterable[bytes] | bytes,
    dst: Writable,
    *,
    key: bytes,
    context: RecordContext,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rng: RngFn | None = None,
) -> int:
    """Seal ``src`` into ``dst`` chunk by chunk; returns the number of bytes written.

    Use a fresh key per record (the recipes derive one from a fresh m); the random nonce prefix
    is defence in depth, not what makes nonces unique.
    """
    _check_key(key)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(
            f"chunk size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}, got {chunk_size}"
        )
    reader: Readable
    if isinstance(src, bytes | bytearray | memoryview):
        # BytesIO over bytes shares the buffer; chunks are copied out one at a time
        reader = io.BytesIO(src)
    elif hasattr(src, "read"):
        reader = src  # type: ignore[assignment]
    else:
        reader = _IterReader(src)
    prefix = (os.urandom if rng is None else rng)(_PREFIX_SIZE)
    header = _MAGIC + bytes([FORMAT_VERSION]) + chunk_size.to_bytes(4, "big") + prefix
    aad = header + context.binding()
    aead = AESGCM(key)
    dst.write(header)
    written = len(header)
    index = 0
    current = _read_exact(reader, chunk_size)
    while True:
        following = _read_exact(reader, chunk_size) if len(current) == chunk_size else b""
        last = not following
        if index >= _MAX_CHUNKS:
            raise ValueError("record too large for one stream (2^32 chunks)")
        sealed = aead.encrypt(_nonce(prefix, index, last), current, aad)
        dst.write(sealed)
        written += len(sealed)
        if last:
            return written
        current = following
        index += 1


def decrypt_stream(src: Readable, dst: Writable, *, key: bytes, context: RecordContext) -> int:
    """Open a stream sealed by :func:`encrypt_stream`; returns the plaintext length.

    Raises DecryptionError for any failure. On failure ``dst`` may hold a prefix of authentic
    plaintext, which the caller must discard.
    """
    _check_key(key)
    header = _read_exact(src, HEADER_SIZE)
    if len(header) != HEADER_SIZE or header[:4] != _MAGIC or header[4] != FORMAT_VERSION:
        raise DecryptionError()
    chunk_size = int.from_bytes(header[5:9], "big")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise DecryptionError()
    prefix = header[9:]
    aad = header + context.binding()
    aead = AESGCM(key)
    sealed_chunk = chunk_size + TAG_SIZE
    total = 0
    index = 0
    current = _read_exact(src, sealed_chunk)
    while True:
        if len(current) < TAG_SIZE:
            raise DecryptionError()
        following = _read_exact(src, sealed_chunk) if len(current) == sealed_chunk else b""
        last = not following
        if index >= _MAX_CHUNKS:
            raise DecryptionError()
        try:
            plain = aead.decrypt(_nonce(prefix, index, last), current, aad)
        except InvalidTag:
            raise DecryptionError() from None
        dst.write(plain)
        total += len(plain)
        if last:
            return total
        current = following
        index += 1


def encrypt_record(
    src: Readable | Iterable[bytes] | bytes,
    dst: Writable,
    *,
    owner_key: tipre.VerifiedTypePublicKey,
    record_id: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rng: RngFn | None = None,
) -> tipre.VerifiedCapsule:
    """Encrypt a record for its owner and type; write the sealed stream, return the capsule.

    The capsule goes on chain with the record; the stream goes to the content store.
    """
    m = GT.random(rng)
    capsule = tipre.encrypt(m, owner_key, rng=rng)  # refuses an unverified owner_key
    context = RecordContext(record_id, owner_key.owner, owner_key.type_label)
    encrypt_stream(
        src, dst, key=derive_record_key(m, context), context=context, chunk_size=chunk_size, rng=rng
    )
    return capsule


def decrypt_record(
    src: Readable,
    dst: Writable,
    *,
    capsule: tipre.VerifiedCapsule,
    receiving_sk: tipre.TypeSecretKey,
    record_id: str,
) -> int:
    """Decrypt a record's sealed stream with the holder's type key; returns plaintext length.

    A key of another identity or type is refused up front (WrongIdentityError /
    WrongTypeError: public information, no oracle); every other failure is DecryptionError.
    """
    m = tipre.decrypt(capsule, receiving_sk)
    context = RecordContext(record_id, capsule.owner, capsule.type_label)
    return decrypt_stream(src, dst, key=derive_record_key(m, context), context=context)
