"""Record-encryption recipes: the safe top layer over :mod:`ehrshare.hazmat`.

Use these to encrypt a record for its owner and to decrypt a record you hold a key for; they
pick fresh randomness, bind the record id, owner and type, and turn every decryption failure
(including a garbled capsule) into one :class:`DecryptionError`. Files are streamed in chunks and a
failed decryption leaves no output file behind.

This module must not hold protocol logic beyond these recipes (grants, proxies and ledgers live
in the SDK), and must not log keys or plaintext.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from ehrshare.hazmat import hybrid, tipre
from ehrshare.hazmat.errors import DecryptionError, EncodingError
from ehrshare.hazmat.pairing import RngFn

__all__ = [
    "DecryptionError",
    "decrypt_file",
    "decrypt_record",
    "encrypt_file",
    "encrypt_record",
]


def encrypt_record(
    plaintext: bytes,
    *,
    owner_key: tipre.VerifiedTypePublicKey,
    record_id: str,
    rng: RngFn | None = None,
) -> tuple[bytes, bytes]:
    """Encrypt an in-memory record; returns ``(capsule_bytes, sealed_bytes)``.

    The capsule goes on chain with the record; the sealed bytes go to the content store.
    """
    out = io.BytesIO()
    capsule = hybrid.encrypt_record(
        plaintext, out, owner_key=owner_key, record_id=record_id, rng=rng
    )
    return capsule.to_bytes(), out.getvalue()


def _open_capsule(capsule: bytes, owner: str, type_label: str) -> tipre.VerifiedCapsule:
    try:
        parsed = tipre.Capsule.from_bytes(capsule)
    except EncodingError:
        raise DecryptionError() from None
    return parsed.verify(owner=owner, type_label=type_label)


def decrypt_record(
    sealed: bytes,
    *,
    capsule: bytes,
    owner: str,
    type_label: str,
    record_id: str,
    receiving_sk: tipre.TypeSecretKey,
) -> bytes:
    """Decrypt an in-memory record (``owner``, ``type_label``, ``record_id`` as the chain says).

    Raises DecryptionError for any failure except a key or capsule of another identity or type,
    which raise WrongIdentityError / WrongTypeError.
    """
    verified = _open_capsule(capsule, owner, type_label)
    out = io.BytesIO()
    hybrid.decrypt_record(
        io.BytesIO(sealed), out, capsule=verified, receiving_sk=receiving_sk, record_id=record_id
    )
    return out.getvalue()


def encrypt_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    owner_key: tipre.VerifiedTypePublicKey,
    record_id: str,
    chunk_size: int = hybrid.DEFAULT_CHUNK_SIZE,
    rng: RngFn | None = None,
) -> bytes:
    """Stream-encrypt the file ``src`` into ``dst``; returns the capsule bytes."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        capsule = hybrid.encrypt_record(
            fin, fout, owner_key=owner_key, record_id=record_id, chunk_size=chunk_size, rng=rng
        )
    return capsule.to_bytes()


def decrypt_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    capsule: bytes,
    owner: str,
    type_label: str,
    record_id: str,
    receiving_sk: tipre.TypeSecretKey,
) -> int:
    """Stream-decrypt ``src`` into ``dst``; returns the plaintext size.

    The plaintext is written to a temporary file next to ``dst`` and renamed only once the whole
    stream authenticated, so a failure never leaves partial plaintext at ``dst``.
    """
    verified = _open_capsule(capsule, owner, type_label)
    target = Path(dst)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            size = hybrid.decrypt_record(
                fin, fout, capsule=verified, receiving_sk=receiving_sk, record_id=record_id
            )
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return size
