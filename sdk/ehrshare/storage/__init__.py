"""Content-addressed storage for encrypted records: the embedded store and IPFS (Kubo).

Both backends implement :class:`BlobStore` and issue identical CIDv1s for identical bytes, so
the choice between them is configuration. Always read record ciphertext with
:func:`get_verified`, which checks the SHA-256 the ledger recorded.

This package stores opaque bytes: it must never see plaintext records or keys.
"""

from __future__ import annotations

from .base import BlobStore, get_verified, sha256_hex
from .cid import CID
from .embedded import EmbeddedStore
from .errors import ContentNotFound, IntegrityError, StorageError, StorageUnavailable
from .ipfs import DEFAULT_API_URL, KuboClient, KuboStore
from .unixfs import CHUNK_SIZE, MAX_LINKS, BlobSource, FileDagBuilder, file_cid

__all__ = [
    "CHUNK_SIZE",
    "CID",
    "DEFAULT_API_URL",
    "MAX_LINKS",
    "BlobSource",
    "BlobStore",
    "ContentNotFound",
    "EmbeddedStore",
    "FileDagBuilder",
    "IntegrityError",
    "KuboClient",
    "KuboStore",
    "StorageError",
    "StorageUnavailable",
    "file_cid",
    "get_verified",
    "sha256_hex",
]
