"""The SDK's member session (:class:`Session`, opened by :func:`ehrshare.connect`), its errors
and the values it returns; see :mod:`ehrshare.session.session`. The services it calls are seen
through :mod:`ehrshare.services.protocols`."""

from __future__ import annotations

from ehrshare.contract.types import AuditTrail, AuditVerification, Grant, RecordRef
from ehrshare.session.core import ProxyRoute
from ehrshare.session.enrolment import EnrollmentResult
from ehrshare.session.errors import (
    AccessDenied,
    ClaimHeld,
    EmergencyKeyRefused,
    EnrollmentError,
    ForeignIdentity,
    GrantNotServed,
    InvalidWrites,
    LedgerUnreachable,
    NoSuchMember,
    NotEnrolledError,
    NotInEmergency,
    ProxyError,
    ProxyNotInProfile,
    ProxyUnreachable,
    RecordIntegrityError,
    RecordStorageError,
    RecordTooLarge,
    RecordTypeChanged,
    RequestRejected,
    RotationUnfinished,
    SdkError,
    UnknownProxy,
    VersionConflict,
    VersionNotReadable,
)
from ehrshare.session.records import RecordWrite
from ehrshare.session.session import Session

__all__ = [
    "AccessDenied",
    "AuditTrail",
    "AuditVerification",
    "ClaimHeld",
    "EmergencyKeyRefused",
    "EnrollmentError",
    "EnrollmentResult",
    "ForeignIdentity",
    "Grant",
    "GrantNotServed",
    "InvalidWrites",
    "LedgerUnreachable",
    "NoSuchMember",
    "NotEnrolledError",
    "NotInEmergency",
    "ProxyError",
    "ProxyNotInProfile",
    "ProxyRoute",
    "ProxyUnreachable",
    "RecordIntegrityError",
    "RecordRef",
    "RecordStorageError",
    "RecordTooLarge",
    "RecordTypeChanged",
    "RecordWrite",
    "RequestRejected",
    "RotationUnfinished",
    "SdkError",
    "Session",
    "UnknownProxy",
    "VersionConflict",
    "VersionNotReadable",
]
