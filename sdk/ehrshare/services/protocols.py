"""The service protocols: how the SDK sees a KGC node and a re-encryption proxy.

Each is implemented twice in :mod:`ehrshare.services` (in process, and over gRPC/TLS in
:mod:`ehrshare.services.rpc`); :class:`~ehrshare.session.Session` depends on these protocols only.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["KgcClient", "ProxyClient"]


@runtime_checkable
class KgcClient(Protocol):
    """One KGC node as the SDK sees it."""

    index: int

    def extract(self, request_bytes: bytes, *, timeout: float = 10.0) -> bytes:
        """A :class:`~ehrshare.hazmat.extract.SignedExtractionRequest` → the node's sealed,
        signed partial key response."""
        ...


@runtime_checkable
class ProxyClient(Protocol):
    """The re-encryption proxy as the SDK sees it."""

    def public_key(self) -> bytes:
        """The X25519 key re-keys are sealed to."""
        ...

    def store_rekey(self, grant_id: str, sealed_rekey: bytes) -> None:
        """Hand over the re-key of a committed grant (sealed under :func:`rekey_aad`)."""
        ...

    def reencrypt(
        self,
        *,
        record_id: str,
        requester: str,
        approval_id: str,
        grant_id: str | None = None,
        capsule: bytes | None = None,
    ) -> bytes:
        """The record's capsule re-encrypted along the requester's grant chain."""
        ...

    def revoke(self, grant_id: str) -> None:
        """Delete the re-key of a revoked grant."""
        ...

    def rekey_status(self, grant_id: str) -> str:
        """``held``, ``pending`` or ``missing``: whether the proxy holds a grant's re-key."""
        ...
