"""The contract's state keys: one composite-key object type per kind of stored object or index.

Index entries hold a one-byte value: Fabric treats an empty value as a delete. Changing a name
here changes the world state bytes; adding one adds it to :data:`STATE_TYPES` (StateDigest).
"""

from __future__ import annotations

__all__ = [
    "INDEX_VALUE",
    "K_ACCESS",
    "K_APPROVAL",
    "K_CLAIM",
    "K_DKG",
    "K_DKG_LATEST",
    "K_DKG_RESULT",
    "K_DKG_SESSION",
    "K_DKG_VIEW",
    "K_EMERGENCY",
    "K_EMERGENCY_BY_PATIENT",
    "K_EMERGENCY_POLICY",
    "K_GRANT",
    "K_GRANT_BY_GRANTEE",
    "K_GRANT_BY_GRANTOR",
    "K_GRANT_BY_OWNER",
    "K_GRANT_MATCH",
    "K_GUARDIAN",
    "K_GUARDIAN_READ",
    "K_IBE",
    "K_IDENTITY",
    "K_KGC_KEY",
    "K_KGC_USE",
    "K_LOG",
    "K_LOG_BY_RECORD",
    "K_LOG_HEAD",
    "K_ORG_CA",
    "K_REBINDING",
    "K_RECORD",
    "K_RECORD_BY_OWNER",
    "K_RECORD_VERSION",
    "K_REENCRYPTION",
    "K_TYPEKEY",
    "K_TYPE_EPOCH",
    "STATE_TYPES",
    "seq",
]

K_IDENTITY = "ehr.id"
K_IBE = "ehr.ibe"
K_ORG_CA = "ehr.orgca"
K_TYPEKEY = "ehr.typekey"
K_TYPE_EPOCH = "ehr.typeepoch"
K_RECORD = "ehr.rec"
K_RECORD_VERSION = "ehr.recver"
K_RECORD_BY_OWNER = "ehr.rec~owner"
K_CLAIM = "ehr.claim"  # (owner, claim) -> the record registered with that claim
K_GRANT = "ehr.grant"
K_GRANT_BY_OWNER = "ehr.grant~owner"
K_GRANT_BY_GRANTEE = "ehr.grant~grantee"
K_GRANT_BY_GRANTOR = "ehr.grant~grantor"
K_GRANT_MATCH = "ehr.grant~match"
K_REBINDING = "ehr.rebind"
K_GUARDIAN = "ehr.guardian"
K_GUARDIAN_READ = "ehr.guardianread"
K_EMERGENCY_POLICY = "ehr.emergpolicy"
K_EMERGENCY = "ehr.emergency"
K_EMERGENCY_BY_PATIENT = "ehr.emergency~patient"
K_ACCESS = "ehr.access"
K_APPROVAL = "ehr.approval"
K_REENCRYPTION = "ehr.reenc"
K_DKG = "ehr.dkg"
K_DKG_RESULT = "ehr.dkgresult"
K_DKG_LATEST = "ehr.dkglatest"
K_DKG_SESSION = "ehr.dkgsession"
K_DKG_VIEW = "ehr.dkgview"
K_KGC_KEY = "ehr.kgckey"
K_KGC_USE = "ehr.kgckey~session"
K_LOG = "ehr.log"
K_LOG_HEAD = "ehr.loghead"
K_LOG_BY_RECORD = "ehr.log~record"
INDEX_VALUE = b"\x01"


def seq(n: int) -> str:
    """A sequence number as a key attribute, zero-padded so key order is numeric order."""
    return f"{n:012d}"


# Every object type this contract writes (the K_* names), for StateDigest.
STATE_TYPES = tuple(
    sorted(value for name, value in dict(globals()).items() if name.startswith("K_"))
)
