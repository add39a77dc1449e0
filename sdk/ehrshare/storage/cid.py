"""Content identifiers (CIDs): unsigned varints, multihash, multibase and CID v0/v1.

Implements just the multiformats pieces ehrshare needs, byte-for-byte as specified at
multiformats.io: minimal unsigned LEB128 varints (at most 9 bytes), sha2-256 multihashes,
base32-lower multibase (``b…``, the form Kubo prints for CIDv1) and base58btc (CIDv0 ``Qm…`` and
``z…``). Parsing is strict — every malformed input raises :class:`ValueError` saying what was
wrong — because CIDs arrive from the ledger and other hospitals, i.e. from untrusted parties.

This module must not touch storage or the network; it only encodes and decodes identifiers.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

__all__ = [
    "CID",
    "DAG_PB",
    "RAW",
    "SHA2_256",
    "decode_varint",
    "encode_varint",
    "sha256_multihash",
]

# Multicodec table entries used here (https://github.com/multiformats/multicodec).
RAW = 0x55
DAG_PB = 0x70
SHA2_256 = 0x12

_CODEC_NAMES = {RAW: "raw", DAG_PB: "dag-pb"}
_MAX_VARINT_BYTES = 9  # the multiformats spec caps varints at 63 bits
_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


def encode_varint(value: int) -> bytes:
    """Encode a non-negative integer below 2**63 as a minimal unsigned varint."""
    if value < 0 or value >= 1 << 63:
        raise ValueError(f"varint out of range: {value} (must be 0 ≤ n < 2**63)")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Decode one varint at ``offset``; return ``(value, offset after it)``.

    Rejects truncated, over-long (> 9 bytes) and non-minimal encodings, as the spec requires,
    so that one value has exactly one encoding.
    """
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        pos = offset + i
        if pos >= len(data):
            raise ValueError(f"truncated varint at byte {offset}")
        byte = data[pos]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise ValueError(f"non-minimal varint at byte {offset}")
            return value, pos + 1
    raise ValueError(f"varint at byte {offset} is longer than {_MAX_VARINT_BYTES} bytes")


def sha256_multihash(data: bytes) -> bytes:
    """Return the sha2-256 multihash (code, length, digest) of ``data``."""
    return bytes([SHA2_256, 32]) + hashlib.sha256(data).digest()


def _b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    chars: list[str] = []
    while number:
        number, rem = divmod(number, 58)
        chars.append(_B58_ALPHABET[rem])
    leading_zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * leading_zeros + "".join(reversed(chars))


def _b58decode(text: str) -> bytes:
    number = 0
    for char in text:
        if char not in _B58_INDEX:
            raise ValueError(f"invalid base58btc character {char!r}")
        number = number * 58 + _B58_INDEX[char]
    leading_ones = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * leading_ones + body


def _b32decode(text: str) -> bytes:
    if not text:
        raise ValueError("empty base32 body")
    if text != text.lower() and text != text.upper():
        raise ValueError("mixed-case base32")
    upper = text.upper()
    if any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" for c in upper):
        raise ValueError("invalid base32 character")
    if len(upper) % 8 in (1, 3, 6):
        raise ValueError(f"impossible base32 length {len(upper)}")
    padded = upper + "=" * (-len(upper) % 8)
    decoded = base64.b32decode(padded)
    # Reject non-canonical text whose unused trailing bits are not zero.
    if base64.b32encode(decoded).decode().rstrip("=") != upper:
        raise ValueError("non-canonical base32 (trailing bits set)")
    return decoded


@dataclass(frozen=True, slots=True)
class CID:
    """A parsed content identifier.

    Use :meth:`parse` on any CID text received from outside and :meth:`__str__` for the
    canonical text (base32-lower for v1, base58btc for v0), which is what the stores return.
    """

    version: int
    codec: int
    multihash: bytes

    def __post_init__(self) -> None:
        if self.version not in (0, 1):
            raise ValueError(f"unsupported CID version {self.version} (expected 0 or 1)")
        if self.version == 0 and self.codec != DAG_PB:
            raise ValueError("CIDv0 must use the dag-pb codec")
        code, pos = decode_varint(self.multihash)
        length, pos = decode_varint(self.multihash, pos)
        if len(self.multihash) - pos != length:
            raise ValueError(
                f"multihash declares a {length}-byte digest but carries {len(self.multihash) - pos}"
            )
        if code == SHA2_256 and length != 32:
            raise ValueError(f"sha2-256 digest must be 32 bytes, got {length}")
        if self.version == 0 and (code != SHA2_256 or length != 32):
            raise ValueError("CIDv0 must carry a 32-byte sha2-256 multihash")

    @classmethod
    def v1(cls, codec: int, data: bytes) -> CID:
        """Return the CIDv1 of a block: ``codec`` plus the sha2-256 multihash of ``data``."""
        return cls(1, codec, sha256_multihash(data))

    @property
    def hash_code(self) -> int:
        """The multihash function code (0x12 for sha2-256)."""
        return decode_varint(self.multihash)[0]

    @property
    def digest(self) -> bytes:
        """The raw digest inside the multihash."""
        _, pos = decode_varint(self.multihash)
        _, pos = decode_varint(self.multihash, pos)
        return self.multihash[pos:]

    @property
    def codec_name(self) -> str:
        """A human name for the codec (``raw``, ``dag-pb`` or the hex code)."""
        return _CODEC_NAMES.get(self.codec, hex(self.codec))

    def to_bytes(self) -> bytes:
        """The binary form, as it appears inside dag-pb links."""
        if self.version == 0:
            return self.multihash
        return encode_varint(1) + encode_varint(self.codec) + self.multihash

    @classmethod
    def from_bytes(cls, data: bytes) -> CID:
        """Parse the binary form; raises :class:`ValueError` on any malformation."""
        if len(data) == 34 and data[0] == SHA2_256 and data[1] == 32:
            return cls(0, DAG_PB, bytes(data))
        version, pos = decode_varint(data)
        if version != 1:
            raise ValueError(f"unsupported binary CID version {version}")
        codec, pos = decode_varint(data, pos)
        return cls(1, codec, bytes(data[pos:]))

    def __str__(self) -> str:
        if self.version == 0:
            return _b58encode(self.multihash)
        return "b" + base64.b32encode(self.to_bytes()).decode().rstrip("=").lower()

    @classmethod
    def parse(cls, text: str) -> CID:
        """Parse CID text (v0 ``Qm…``, v1 base32 ``b…``/``B…`` or base58btc ``z…``).

        Raises :class:`ValueError` naming what is wrong; the message quotes at most the first
        64 characters of the input.
        """
        if not isinstance(text, str):
            raise ValueError(f"CID must be text, got {type(text).__name__}")
        shown = text if len(text) <= 64 else text[:64] + "…"
        try:
            if len(text) == 46 and text.startswith("Qm"):
                cid = cls.from_bytes(_b58decode(text))
                if cid.version != 0:
                    raise ValueError("not a CIDv0")
                return cid
            if not text:
                raise ValueError("empty string")
            prefix, body = text[0], text[1:]
            if prefix in "bB":
                if (prefix == "b") != (body == body.lower()):
                    raise ValueError("base32 case does not match its multibase prefix")
                raw = _b32decode(body)
            elif prefix == "z":
                raw = _b58decode(body)
            else:
                raise ValueError(f"unsupported multibase prefix {prefix!r}")
            cid = cls.from_bytes(raw)
            if cid.version != 1:
                raise ValueError("a multibase-prefixed CID must be version 1")
            return cid
        except ValueError as exc:
            raise ValueError(f"not a valid CID {shown!r}: {exc}") from None
