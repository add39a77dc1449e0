"""The interface every content-addressed store offers, and the verifying read the SDK uses.

Feature code talks to a :class:`BlobStore` and never knows whether the embedded store or a Kubo
node is behind it (the backend is configuration, not a fork in the code). The ledger records the
SHA-256 of each ciphertext, so reads go through :func:`get_verified`, which checks those bytes
whichever store served them.

This module must not import a concrete store or do I/O of its own.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from .errors import IntegrityError
from .unixfs import BlobSource

__all__ = ["BlobStore", "get_verified", "sha256_hex"]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@runtime_checkable
class BlobStore(Protocol):
    """A store of immutable blobs addressed by their CID (CIDv1, base32 text).

    Both implementations return the same CID for the same bytes, so a record's pointer stays
    valid when a deployment moves from the embedded store to IPFS.
    """

    def put(self, data: BlobSource) -> str:
        """Store ``data`` (bytes, binary file or iterable of bytes), keep it, return its CID."""
        ...

    def get(self, cid: str) -> bytes:
        """Return the whole content of ``cid``, checked against the CID itself."""
        ...

    def iter(self, cid: str) -> Iterator[bytes]:
        """Stream the content of ``cid``; the CID check raises before the last piece is yielded."""
        ...

    def pin(self, cid: str) -> None:
        """Make sure ``cid`` is kept; raises :class:`ContentNotFound` if it is not held."""
        ...

    def unpin(self, cid: str) -> None:
        """Release ``cid``: the store may delete it (the embedded store does so at once)."""
        ...

    def has(self, cid: str) -> bool:
        """Whether the whole content of ``cid`` is held locally (no network lookup)."""
        ...


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256, the form the ledger stores next to each CID."""
    return hashlib.sha256(data).hexdigest()


def get_verified(store: BlobStore, cid: str, sha256: str) -> bytes:
    """Read ``cid`` from ``store`` and check it against the SHA-256 recorded on the ledger.

    Use this for every read of record ciphertext. Raises :class:`ValueError` if ``sha256`` is not
    64 lower-case hex digits and :class:`IntegrityError` if the bytes do not match it.
    """
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
        raise ValueError("sha256 must be 64 lower-case hex digits")
    data = store.get(cid)
    actual = sha256_hex(data)
    if actual != sha256:
        raise IntegrityError(cid, f"sha256 {actual} does not match the recorded {sha256}")
    return data
