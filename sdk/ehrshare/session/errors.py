"""The errors a :class:`~ehrshare.session.Session` raises on purpose, all under :class:`SdkError`
(and the one root, :class:`~ehrshare.errors.EhrshareError`), each listing its exit-code family
first. A proxy that cannot be reached or refuses is
:class:`~ehrshare.services.protocols.ProxyError`, the error of the proxy protocol, which the
session raises as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from ehrshare.errors import (
    ConfigurationError,
    EhrshareError,
    IntegrityFailure,
    InvalidInput,
    Refused,
    Unavailable,
    UsageError,
)
from ehrshare.services.protocols import ProxyError

__all__ = [
    "AccessDenied",
    "EmergencyKeyRefused",
    "EnrollmentError",
    "ForeignIdentity",
    "GrantNotServed",
    "InvalidWrites",
    "LedgerUnreachable",
    "NoSuchMember",
    "NotEnrolledError",
    "NotInEmergency",
    "ProxyError",
    "ProxyNotInProfile",
    "ProxyUnreachable",
    "RecordIntegrityError",
    "RecordStorageError",
    "RecordTooLarge",
    "RecordTypeChanged",
    "RequestRejected",
    "RotationUnfinished",
    "SdkError",
    "UnknownProxy",
    "VersionConflict",
    "VersionNotReadable",
]


class SdkError(EhrshareError):
    """Base class of every error the session raises on purpose (exit code 1 unless a
    subclass names another family)."""


class RequestRejected(SdkError):
    """The ledger refused a transaction or query; the message is the chaincode's reason."""

    def __init__(self, function: str, message: str, transaction_id: str = "") -> None:
        self.function = function
        self.reason = message
        self.transaction_id = transaction_id
        super().__init__(f"{function} was rejected: {message}")


class LedgerUnreachable(Unavailable, SdkError):
    """No peer or orderer of the ledger answered; nothing was decided or written."""

    hint = "is the ledger running? For a local Fabric network: 'ehrshare network up'"

    def __init__(self, function: str, message: str) -> None:
        self.function = function
        super().__init__(f"{function}: {message}")


class ForeignIdentity(ConfigurationError, SdkError):
    """The channel does not accept the wallet's certificate: issued by another consortium's CA
    (or not a member certificate at all). Use a wallet this consortium issued."""

    hint = "use a wallet issued by this consortium ('ehrshare consortium add-member')"


class AccessDenied(Refused, SdkError):
    """The chaincode denied a read; the denial is on the audit log (``access_id``)."""

    hint = "ask the patient for a grant of this record's type"

    def __init__(self, record_id: str, reason: str, access_id: str) -> None:
        self.record_id = record_id
        self.reason = reason
        self.access_id = access_id
        super().__init__(f"access to record {record_id} denied: {reason} (logged as {access_id})")


class NotEnrolledError(ConfigurationError, SdkError):
    """The session has no identity secret key yet: call :meth:`Session.enroll` first."""

    hint = "run 'ehrshare enroll --wallet <name>'"


class EnrollmentError(Unavailable, SdkError):
    """Threshold extraction failed; names the nodes that were down and those that sent bad keys."""

    def __init__(self, message: str, *, failed: dict[int, str], invalid: Sequence[int]) -> None:
        self.failed = dict(failed)
        self.invalid = tuple(invalid)
        super().__init__(message)


class RecordStorageError(Unavailable, SdkError):
    """The ciphertext could not be stored or read back; nothing was registered on chain."""


class RecordIntegrityError(IntegrityFailure, RecordStorageError):
    """A record's ciphertext is missing from the store, altered, or does not decrypt under its
    capsule: the pointer on chain and the bytes behind it disagree. Retrying does not help."""


class RecordTooLarge(InvalidInput, SdkError):
    """A record is over the profile's ``limits.max_record_bytes``."""


class NoSuchMember(Refused, RequestRejected):
    """The identity named (a grantee, a referral's target, a record's patient) is not a
    registered member of this consortium."""

    def __init__(self, ibe_id: str) -> None:
        super().__init__("GetIdentity", f"{ibe_id} is not registered in this consortium")
        self.ibe_id = ibe_id
        self.args = (
            f"no such member: {ibe_id} is not registered in this consortium (check the id, "
            "<msp id>/<enrollment id>; a new member registers with 'ehrshare enroll')",
        )


class GrantNotServed(Refused, SdkError):
    """A grant is on chain but its proxy holds no re-key for it (the proxy lost its state):
    a refusal, not an outage — it does not heal by waiting. The grantor re-delivers the re-key
    with :meth:`Session.repair_grant` (CLI ``ehrshare grant repair``) or revokes the grant."""

    def __init__(self, message: str, *, grant_ids: Sequence[str], proxy: str) -> None:
        self.grant_ids = tuple(grant_ids)
        self.proxy = proxy
        super().__init__(message)
        self.hint = (
            "the grantor runs 'ehrshare grant repair "
            + (self.grant_ids[-1] if self.grant_ids else "<grant id>")
            + "' (or 'ehrshare revoke'); 'ehrshare grant list' shows your grants"
        )


class ProxyNotInProfile(ConfigurationError, ProxyError, SdkError):
    """A grant chain names a proxy this profile does not list (add it under ``proxies:``)."""


class UnknownProxy(UsageError, ProxyNotInProfile):
    """``proxy=`` (CLI ``--proxy``) names no proxy of this profile; nothing was done."""


class ProxyUnreachable(ProxyError, SdkError):
    """A proxy holding a hop of the read's grant chain did not answer (down, or unreachable).

    Names the proxy, its hospital (MSP id) and the grants whose re-keys it holds; the access
    request was committed and logged, so reading again once it is back makes a new request.
    """

    def __init__(
        self, message: str, *, proxy: str, msp_id: str, grant_ids: Sequence[str], access_id: str
    ) -> None:
        self.proxy = proxy
        self.msp_id = msp_id
        self.grant_ids = tuple(grant_ids)
        self.access_id = access_id
        self.hint = f"ask hospital {msp_id} to start its proxy ('ehrshare proxy serve'), then retry"
        super().__init__(message)


class RotationUnfinished(SdkError):
    """A revocation committed, but the type-key epoch it began could not be finished (the new
    key published, the remaining grants re-keyed); the owner's next record of that type or
    ``ehrshare type-key rotate`` finishes it."""


class EmergencyKeyRefused(Refused, SdkError):
    """Fewer than τ KGC nodes gave a patient's emergency identity key (each says why: no
    emergency in force, too few approvals, expired, or the node is down)."""

    hint = "check the emergency with 'ehrshare emergency show' (approvals, expiry)"


class NotInEmergency(Refused, SdkError):
    """The record is not one the emergency opens (another patient's, or a type outside it)."""


class VersionNotReadable(Refused, SdkError):
    """A grantee asked for a version other than a record's current one: an access decision
    approves the current version, and the proxies re-encrypt only its capsule."""


class VersionConflict(RequestRejected):
    """An update named the version it was based on, and the record has moved on since (the
    FHIR API's If-Match); nothing was registered."""


class ClaimHeld(RequestRejected):
    """A registration's claim (a conditional create's) is held by another record of the
    owner, ``record_id``: someone created it meanwhile; nothing was registered."""

    def __init__(self, function: str, message: str, transaction_id: str, record_id: str) -> None:
        super().__init__(function, message, transaction_id)
        self.record_id = record_id


class InvalidWrites(InvalidInput, SdkError):
    """:meth:`~ehrshare.session.Session.write_records` was given no writes, too many, or one
    record twice; nothing was stored."""


class RecordTypeChanged(InvalidInput, SdkError):
    """A new version of a record would be of another record type than the record."""
