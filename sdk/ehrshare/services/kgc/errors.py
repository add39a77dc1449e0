"""The key centre's errors: one class per refusal, each a :class:`~ehrshare.errors.EhrshareError`
(the gRPC layer maps each class to a status code and back). Messages name the object and never
hold a share, a partial key or a reply key.
"""

from __future__ import annotations

from ehrshare.errors import EhrshareError, Unavailable
from ehrshare.hazmat.dkg import DKGError

__all__ = [
    "BadRequest",
    "BadSignature",
    "DKGSessionFailed",
    "IdentityNotRegistered",
    "KgcError",
    "KgcUnavailable",
    "NoShare",
    "NotAuthorised",
    "OutdatedRequest",
    "RateLimited",
    "ReplayedRequest",
    "StaleRequest",
    "UnregisteredCertificate",
]


class KgcError(EhrshareError):
    """Base class of KGC service errors; messages name the object and never hold secrets."""


class BadRequest(KgcError):
    """The extraction request bytes do not parse."""


class NotAuthorised(KgcError):
    """The authenticated caller may not ask for this identity's key."""


class IdentityNotRegistered(KgcError):
    """The identity is not registered on chain: no key is extracted for it."""


class OutdatedRequest(BadRequest):
    """The request is in a format this node no longer accepts (an unsigned, format-1 request):
    upgrade the client."""


class BadSignature(NotAuthorised):
    """The request's signature does not verify under the certificate it carries."""


class UnregisteredCertificate(NotAuthorised):
    """The request's certificate is not the one registered on chain for the identity."""


class StaleRequest(NotAuthorised):
    """The request's timestamp is outside the node's clock-skew window."""


class ReplayedRequest(NotAuthorised):
    """The request's nonce was already used within the window: a replay."""


class RateLimited(KgcError):
    """The requester used up its extraction budget; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoShare(KgcError):
    """The node holds no DKG share yet (no finished session)."""


class KgcUnavailable(Unavailable, KgcError):
    """The node could not be reached or did not answer (client side)."""


class DKGSessionFailed(DKGError):
    """The DKG session is marked failed on chain (AbortDKGSession); the message says why."""
