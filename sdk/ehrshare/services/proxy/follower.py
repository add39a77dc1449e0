"""Keeping a proxy's re-keys in step with the chain: the chaincode events it follows
(:class:`RevocationFollower`, in a thread) or catches up on (:func:`catch_up`, in process).
What an event does is :meth:`~ehrshare.services.proxy.service.ReencryptionProxy.handle_event`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ehrshare.ledger.api import ChaincodeEvent, EventFollower, Network
from ehrshare.services.proxy.service import ReencryptionProxy

__all__ = ["RevocationFollower", "catch_up"]


def catch_up(proxy: ReencryptionProxy, events: Iterable[ChaincodeEvent]) -> int:
    """Apply the chaincode events a proxy missed (a stream that ends when it has none left,
    resumed from :meth:`ReencryptionProxy.checkpoint`): an in-process proxy, which runs no
    follower, deletes the re-keys of grants revoked while no process told it. Returns how many
    re-keys were deleted."""
    deleted = 0
    last: ChaincodeEvent | None = None
    for last in events:
        deleted += proxy.handle_event(last, checkpoint=False)
    if last is not None:
        proxy.save_checkpoint(last)
    return deleted


class RevocationFollower:
    """Follows the chaincode's RevokeAccess events in a thread and deletes re-keys (and its
    GrantAccess events, taking re-keys delivered ahead of their grant into use).

    Resumes after the last handled event (checkpoint in the proxy's database); a fresh proxy
    reads from block 0 (revoking grants it does not hold is a no-op). A broken event stream (a
    peer restarted) is opened again from the checkpoint, so no revocation is skipped.
    """

    def __init__(
        self, proxy: ReencryptionProxy, network: Network, chaincode_name: str = "ehrshare"
    ) -> None:
        self._follower = EventFollower(
            network,
            chaincode_name,
            proxy.checkpoint,
            proxy.handle_event,
            name=f"proxy {proxy.ibe_id}: revocation follower",
        )

    def start(self) -> None:
        """Start following in a daemon thread."""
        self._follower.start("revocation-follower")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the stream and wait for the thread."""
        self._follower.stop(timeout)
