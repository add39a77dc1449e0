"""The service protocols: how the SDK sees a KGC node and a re-encryption proxy.

Each is implemented twice in :mod:`ehrshare.services` (in process, and over gRPC/TLS in
:mod:`ehrshare.services.rpc`); :class:`~ehrshare.session.Session` depends on these protocols only.
The errors a proxy reports through its protocol are defined here too (the gRPC layer maps each
class to a status code and back), and :class:`ProxyError` is also what the SDK raises when a
proxy cannot be reached or refuses a call. Protocols and errors only: no implementation.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ehrshare.errors import Refused, Unavailable

__all__ = [
    "ApprovalConsumed",
    "ApprovalRefused",
    "InvalidReKey",
    "KgcClient",
    "NoReKey",
    "NotAuthorised",
    "ProxyClient",
    "ProxyError",
    "ProxyUnavailable",
]


class ProxyError(Unavailable):
    """The re-encryption proxy could not be reached or refused a call. Messages name the object
    and never hold key material; the refusals below exit 1, the rest 4 (a service is down)."""


class NotAuthorised(Refused, ProxyError):
    """The authenticated caller may not do this (store another's re-key, act for another)."""


class ApprovalRefused(Refused, ProxyError):
    """No committed approval for exactly this record, requester, grant and approval id."""


class ApprovalConsumed(Refused, ProxyError):
    """This approval was already used for a re-encryption; request access again."""


class NoReKey(Refused, ProxyError):
    """The proxy holds no re-key for the grant (never delivered, or deleted on revocation)."""


class InvalidReKey(Refused, ProxyError):
    """A delivered re-key does not open or does not match its grant on chain."""


class ProxyUnavailable(ProxyError):
    """The proxy could not be reached or did not answer (client side)."""


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
        """Hand over the re-key of a grant (sealed with
        :func:`~ehrshare.rekey_delivery.seal_rekey`)."""
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
