"""ehrshare: patient-controlled sharing of electronic health records.

Encrypted records live in a content-addressed store (IPFS, or an embedded
store by default); their pointers, the patients' access grants and an
operation log live on a Hyperledger Fabric channel (or an embedded ledger
running the same chaincode). The cryptography — identity-based, type-
conditional, multi-hop proxy re-encryption on BLS12-381 with a distributed
key generation centre — runs client-side in :mod:`ehrshare.hazmat`.

Hospital apps start with :func:`connect` (a profile and a wallet → :class:`Session`);
:class:`Consortium` sets up a local embedded consortium for development and demos.
The names below are imported lazily so that ``import ehrshare`` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "AccessDenied",
    "AuditTrail",
    "AuditVerification",
    "BackendUnavailable",
    "Consortium",
    "EhrshareError",
    "EnrollmentError",
    "Grant",
    "NotEnrolledError",
    "Profile",
    "ProfileError",
    "RecordRef",
    "RecordStorageError",
    "RecordTooLarge",
    "RequestRejected",
    "SdkError",
    "Session",
    "Wallet",
    "__version__",
    "connect",
]

__version__ = "0.1.0"

_LAZY = {
    "EhrshareError": "ehrshare.errors",
    "connect": "ehrshare.runtime",
    "Consortium": "ehrshare.provisioning",
    "Profile": "ehrshare.profile",
    "ProfileError": "ehrshare.profile",
    "BackendUnavailable": "ehrshare.profile",
    "Wallet": "ehrshare.wallet",
}
_SESSION_NAMES = (
    "AccessDenied",
    "AuditTrail",
    "AuditVerification",
    "EnrollmentError",
    "Grant",
    "NotEnrolledError",
    "RecordRef",
    "RecordStorageError",
    "RecordTooLarge",
    "RequestRejected",
    "SdkError",
    "Session",
)

if TYPE_CHECKING:
    from ehrshare.errors import EhrshareError
    from ehrshare.profile import BackendUnavailable, Profile, ProfileError
    from ehrshare.provisioning import Consortium
    from ehrshare.runtime import connect
    from ehrshare.session import (
        AccessDenied,
        AuditTrail,
        AuditVerification,
        EnrollmentError,
        Grant,
        NotEnrolledError,
        RecordRef,
        RecordStorageError,
        RecordTooLarge,
        RequestRejected,
        SdkError,
        Session,
    )
    from ehrshare.wallet import Wallet


def __getattr__(name: str) -> Any:
    import importlib

    module = _LAZY.get(name) or ("ehrshare.session" if name in _SESSION_NAMES else None)
    if module is None:
        raise AttributeError(f"module 'ehrshare' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
