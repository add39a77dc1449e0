"""How a re-key travels from its grantor to a proxy: sealed to the proxy's X25519 key, bound to
its re-key id (the grant id; ``<grant id>#<n>`` for a root grant's re-key of the owner's
type-key epoch n ≥ 1, see :func:`rekey_id`). Both sides import this (the grantor's
:class:`~ehrshare.session.Session` seals, the proxy service opens) without pulling in the other's
code. It must not log or keep a re-key.
"""

from __future__ import annotations

from typing import Final

from ehrshare.hazmat.kgc_keys import seal
from ehrshare.hazmat.tipre import ReKey

__all__ = ["rekey_delivery_aad", "rekey_id", "seal_rekey", "split_rekey_id"]

_DELIVERY_DST: Final = b"ehrshare/v1/proxy/rekey-delivery/"


def rekey_id(grant_id: str, type_epoch: int = 0) -> str:
    """The name a grant's re-key for the owner's type-key epoch ``type_epoch`` is delivered and
    held under: the grant id for epoch 0 (every re-key before epochs), else ``<grant id>#<n>``."""
    return grant_id if type_epoch == 0 else f"{grant_id}#{type_epoch}"


def split_rekey_id(name: str) -> tuple[str, int]:
    """(grant id, type epoch) of a re-key id; ValueError when the epoch is not a number ≥ 1."""
    grant_id, sep, epoch = name.partition("#")
    if not sep:
        return name, 0
    if not epoch.isdigit() or epoch.startswith("0") or len(epoch) > 10:
        raise ValueError(f"re-key id {name!r} does not end in '#' and a type epoch >= 1")
    return grant_id, int(epoch)


def rekey_delivery_aad(grant_id: str) -> bytes:
    """Associated data binding a sealed re-key to its grant (it cannot be replayed for another)."""
    return _DELIVERY_DST + grant_id.encode("utf-8")


def seal_rekey(proxy_public: bytes, grant_id: str, rekey: ReKey) -> bytes:
    """Grantor side: seal a re-key to the proxy's X25519 public key for ``grant_id``."""
    return seal(proxy_public, rekey.to_secret_bytes(), aad=rekey_delivery_aad(grant_id))
