"""The in-process :class:`~ehrshare.services.protocols.ProxyClient` (the gRPC one is in
:mod:`ehrshare.services.rpc`)."""

from __future__ import annotations

from ehrshare.services.protocols import NotAuthorised
from ehrshare.services.proxy.service import ReencryptionProxy

__all__ = ["InProcessProxyClient"]


class InProcessProxyClient:
    """A :class:`ProxyClient` that calls a :class:`ReencryptionProxy` directly (embedded).

    ``caller`` is the application's own authenticated identity; it is passed to the proxy as
    the authenticated caller, exactly as the gRPC server passes the client certificate's.
    """

    def __init__(self, proxy: ReencryptionProxy, *, caller: str) -> None:
        self._proxy = proxy
        self.caller = caller

    def public_key(self) -> bytes:
        """The proxy's X25519 public key."""
        return self._proxy.public_key()

    def store_rekey(self, grant_id: str, sealed_rekey: bytes) -> None:
        """Deliver a sealed re-key."""
        self._proxy.store_rekey(grant_id, sealed_rekey, caller=self.caller)

    def reencrypt(
        self,
        *,
        record_id: str,
        requester: str,
        approval_id: str,
        grant_id: str | None = None,
        capsule: bytes | None = None,
    ) -> bytes:
        """Re-encrypt for ``requester``, which must be this client's caller."""
        if requester != self.caller:
            raise NotAuthorised(f"identity {self.caller} may not ask for {requester}'s capsule")
        return self._proxy.reencrypt(
            record_id=record_id,
            requester=requester,
            approval_id=approval_id,
            grant_id=grant_id,
            capsule=capsule,
        )

    def revoke(self, grant_id: str) -> None:
        """Delete a grant's re-key."""
        self._proxy.revoke(grant_id, caller=self.caller)

    def rekey_status(self, grant_id: str) -> str:
        """``held``, ``pending`` or ``missing``."""
        return self._proxy.rekey_status(grant_id, caller=self.caller)
