"""The SDK's typed client for the EHR chaincode: one method per contract function.

Every caller reaches the chaincode through :class:`EhrContract` (records, access, audit,
members) and its DKG-board part, never by a string-named call; whether a function is submitted
or evaluated is decided in one place, :func:`~ehrshare.contract.calls.transact`, from the
chaincode's own function table.
"""

from __future__ import annotations

from ehrshare.contract.client import COVERED, EhrContract
from ehrshare.contract.types import (
    Access,
    AuditCheck,
    AuditTrail,
    AuditVerification,
    Grant,
    GrantPins,
    Hop,
    Member,
    OrgCA,
    Page,
    RecordRef,
    RecordVersion,
    Reencryption,
    StateDigest,
    StoredRecord,
    TypeKey,
    TypeKeyEpoch,
)

__all__ = [
    "COVERED",
    "Access",
    "AuditCheck",
    "AuditTrail",
    "AuditVerification",
    "EhrContract",
    "Grant",
    "GrantPins",
    "Hop",
    "Member",
    "OrgCA",
    "Page",
    "RecordRef",
    "RecordVersion",
    "Reencryption",
    "StateDigest",
    "StoredRecord",
    "TypeKey",
    "TypeKeyEpoch",
]
