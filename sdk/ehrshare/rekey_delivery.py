"""How a re-key travels from its grantor to a proxy: sealed to the proxy's X25519 key, bound to
its grant id. Both sides import this (the grantor's :class:`~ehrshare.session.Session` seals,
the proxy service opens) without pulling in the other's code. It must not log or keep a re-key.
"""

from __future__ import annotations

from typing import Final

from ehrshare.hazmat.kgc_keys import seal
from ehrshare.hazmat.tipre import ReKey

__all__ = ["rekey_delivery_aad", "seal_rekey"]

_DELIVERY_DST: Final = b"ehrshare/v1/proxy/rekey-delivery/"


def rekey_delivery_aad(grant_id: str) -> bytes:
    """Associated data binding a sealed re-key to its grant (it cannot be replayed for another)."""
    return _DELIVERY_DST + grant_id.encode("utf-8")


def seal_rekey(proxy_public: bytes, grant_id: str, rekey: ReKey) -> bytes:
    """Grantor side: seal a re-key to the proxy's X25519 public key for ``grant_id``."""
    return seal(proxy_public, rekey.to_secret_bytes(), aad=rekey_delivery_aad(grant_id))
