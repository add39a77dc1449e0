"""The re-encryption proxy service (see :mod:`ehrshare.services.proxy.service`): the service,
its database, the event follower that keeps it in step with the chain, and its in-process
client. The errors it reports are those of its protocol (:mod:`ehrshare.services.protocols`).
"""

from __future__ import annotations

from ehrshare.services.protocols import (
    ApprovalConsumed,
    ApprovalRefused,
    InvalidReKey,
    NoReKey,
    NotAuthorised,
    ProxyError,
    ProxyUnavailable,
)
from ehrshare.services.proxy.client import InProcessProxyClient
from ehrshare.services.proxy.follower import RevocationFollower, catch_up
from ehrshare.services.proxy.service import PENDING_TTL_S, ReencryptionProxy

__all__ = [
    "PENDING_TTL_S",
    "ApprovalConsumed",
    "ApprovalRefused",
    "InProcessProxyClient",
    "InvalidReKey",
    "NoReKey",
    "NotAuthorised",
    "ProxyError",
    "ProxyUnavailable",
    "ReencryptionProxy",
    "RevocationFollower",
    "catch_up",
]
