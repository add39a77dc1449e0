"""What the chaincode answers, typed: one class per kind of answer, each with its ``from_chain``.

Parsers only: nothing here calls the ledger (:mod:`ehrshare.contract.client` does). A type label
is opaque on chain; given a :class:`~ehrshare.fhir.TypeLabels`, a parser names its clinical type
(``type``), without one ``type`` is None and only ``label`` is set.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ehrshare.fhir import TypeLabels

__all__ = [
    "Access",
    "AuditCheck",
    "AuditRead",
    "AuditTrail",
    "AuditVerification",
    "EmergencyPolicy",
    "EmergencyRequest",
    "Grant",
    "GrantPins",
    "Guardianship",
    "Hop",
    "Member",
    "OrgCA",
    "Page",
    "Rebinding",
    "RecordRef",
    "RecordVersion",
    "Reencryption",
    "StateDigest",
    "StoredRecord",
    "TypeKey",
    "TypeKeyEpoch",
]

_T = TypeVar("_T")


def _reveal(labels: TypeLabels | None, label: str) -> str | None:
    return labels.reveal(label) if labels is not None else None


@dataclass(frozen=True, slots=True)
class Page(Generic[_T]):
    """One page of a paginated query; an empty ``bookmark`` is the last page."""

    items: tuple[_T, ...]
    bookmark: str

    @classmethod
    def from_chain(
        cls, data: Mapping[str, Any], key: str, parse: Callable[[dict[str, Any]], _T]
    ) -> Page[_T]:
        """Build from a chaincode page (``{key: [...], "bookmark": ...}``)."""
        return cls(tuple(parse(item) for item in data[key]), str(data["bookmark"]))


@dataclass(frozen=True, slots=True)
class Member:
    """A registered identity: its IBE id, hospital (MSP id) and role; ``data`` is the whole
    entry as the chaincode keeps it (subject, issuer, when and by whom registered)."""

    ibe_id: str
    msp_id: str
    role: str
    data: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_chain(cls, data: dict[str, Any]) -> Member:
        """Build from a chaincode identity."""
        return cls(str(data["ibe_id"]), str(data["msp_id"]), str(data["role"]), data)


@dataclass(frozen=True, slots=True)
class OrgCA:
    """An organisation's member CA as registered on chain (RegisterOrgCA / RotateOrgCA)."""

    msp_id: str
    ca_pem: str
    sha256: str
    data: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_chain(cls, data: dict[str, Any]) -> OrgCA:
        """Build from a chaincode org CA entry."""
        return cls(str(data["msp_id"]), str(data["ca_pem"]), str(data["sha256"]), data)


@dataclass(frozen=True, slots=True)
class Guardianship:
    """A guardian acting for a patient: the actions (``grant``, ``revoke``, ``audit``) and
    type labels (empty: every type) it may act on, until ``expiry``; ``state`` is ``active``,
    ``removed`` or, for a minor's guardian not yet approved, ``proposed``. ``kind`` is
    ``minor`` when hospital admins registered it (``approved_by``: the approving hospitals)."""

    patient: str
    guardian: str
    actions: tuple[str, ...]
    labels: tuple[str, ...]
    expiry: int
    state: str
    kind: str = "patient"
    approved_by: tuple[str, ...] = ()
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_chain(cls, data: dict[str, Any]) -> Guardianship:
        """Build from a chaincode guardianship."""
        return cls(
            str(data["patient"]),
            str(data["guardian"]),
            tuple(str(a) for a in data["actions"]),
            tuple(str(t) for t in data["types"]),
            int(data["expiry"]),
            str(data["state"]),
            str(data.get("kind", "patient")),
            tuple(str(a["msp_id"]) for a in data.get("approvals", ())),
            data,
        )


@dataclass(frozen=True, slots=True)
class AuditRead:
    """A guardian's logged read of a patient's audit trail (LogAuditRead): queries under
    ``read_id`` show the entries up to ``upto_seq``, the read's own entry."""

    read_id: str
    patient: str
    guardian: str
    upto_seq: int

    @classmethod
    def from_chain(cls, data: dict[str, Any]) -> AuditRead:
        """Build from a chaincode audit read."""
        return cls(
            str(data["read_id"]), str(data["patient"]), str(data["guardian"]), int(data["upto_seq"])
        )


@dataclass(frozen=True, slots=True)
class Rebinding:
    """A proposal to rebind an identity to a new certificate (wallet recovery): ``status`` is
    ``open`` or ``done``; ``approved_by`` the MSP ids of the hospitals that approved, in order."""

    ibe_id: str
    cert_sha256: str
    status: str
    quorum: int
    approved_by: tuple[str, ...]
    expires_at: int
    data: dict[str, Any] = field(repr=False, compare=False)

    @property
    def done(self) -> bool:
        """Whether the rebinding took effect (the identity is bound to the new certificate)."""
        return self.status == "done"

    @classmethod
    def from_chain(cls, data: dict[str, Any]) -> Rebinding:
        """Build from a chaincode rebinding proposal."""
        return cls(
            str(data["ibe_id"]),
            str(data["cert_sha256"]),
            str(data["status"]),
            int(data["quorum"]),
            tuple(str(a["msp_id"]) for a in data["approvals"]),
            int(data["expires_at"]),
            data,
        )


@dataclass(frozen=True, slots=True)
class EmergencyPolicy:
    """A patient's break-glass policy (``default``: none on chain, the consortium's applies):
    the type labels (and, given labels, clinical types) an emergency opens, how long it lasts,
    how many admins' approvals it needs and whether from distinct other hospitals, and the
    emergency identity the patient pre-grants to."""

    patient: str
    identity: str
    generation: int
    labels: tuple[str, ...]
    types: tuple[str | None, ...]
    duration_s: int
    approvals: int
    distinct_hospitals: bool
    default: bool

    @classmethod
    def from_chain(cls, data: dict[str, Any], labels: TypeLabels | None = None) -> EmergencyPolicy:
        """Build from a chaincode emergency policy."""
        raw = tuple(str(t) for t in data["types"])
        return cls(
            str(data["patient"]),
            str(data["identity"]),
            int(data["generation"]),
            raw,
            tuple(labels.reveal(t) if labels is not None else None for t in raw),
            int(data["duration_s"]),
            int(data["approvals"]),
            bool(data["distinct_hospitals"]),
            bool(data.get("default", False)),
        )


@dataclass(frozen=True, slots=True)
class EmergencyRequest:
    """A clinician's emergency request: ``status`` ``pending`` or ``approved`` (in force until
    ``expires_at``); ``approved_by`` the approving admins in order; ``review`` ``pending``,
    ``acknowledged`` or "" (never approved); ``grants`` (from GetEmergency only) the patient's
    grant to the emergency identity per type label."""

    request_id: str
    patient: str
    requester: str
    reason: str
    status: str
    approvals_needed: int
    approved_by: tuple[str, ...]
    identity: str
    labels: tuple[str, ...]
    requested_at: int
    expires_at: int
    review: str
    grants: dict[str, str] = field(compare=False)
    data: dict[str, Any] = field(repr=False, compare=False)

    def in_force(self, now: int) -> bool:
        """Whether the emergency lets its requester read at ``now`` (unix seconds)."""
        return self.status == "approved" and now < self.expires_at

    @classmethod
    def from_chain(cls, data: dict[str, Any]) -> EmergencyRequest:
        """Build from a chaincode emergency request."""
        policy = data["policy"]
        review = data.get("review") or {}
        return cls(
            str(data["request_id"]),
            str(data["patient"]),
            str(data["requester"]),
            str(data["reason"]),
            str(data["status"]),
            int(policy["approvals"]),
            tuple(str(a["admin"]) for a in data["approvals"]),
            str(policy["identity"]),
            tuple(str(t) for t in policy["types"]),
            int(data["requested_at"]),
            int(data["expires_at"]),
            str(review.get("state", "")),
            {str(k): str(v) for k, v in dict(data.get("grants") or {}).items()},
            data,
        )


@dataclass(frozen=True, slots=True)
class TypeKey:
    """A member's type public key for one type label, base64 as on chain; ``epoch`` is the
    master key it was proven under (None on a key from before epochs)."""

    ibe_id: str
    label: str
    key: str
    epoch: str | None

    @classmethod
    def from_chain(cls, data: dict[str, Any]) -> TypeKey:
        """Build from a chaincode type key."""
        epoch = data.get("epoch")
        return cls(
            str(data["ibe_id"]),
            str(data["type"]),
            str(data["key"]),
            None if epoch is None else str(epoch),
        )


@dataclass(frozen=True, slots=True)
class TypeKeyEpoch:
    """The current type-key epoch of a member's type label and its key (base64; ``""`` while a
    rotation is not finished): what a writer seals a new record of that owner and type to."""

    ibe_id: str
    label: str
    type_epoch: int
    key: str
    epoch: str | None

    @classmethod
    def from_chain(cls, data: dict[str, Any]) -> TypeKeyEpoch:
        """Build from a chaincode type-key epoch."""
        epoch = data.get("epoch")
        return cls(
            str(data["owner"]),
            str(data["type"]),
            int(data["type_epoch"]),
            str(data["key"]),
            None if not epoch else str(epoch),
        )


@dataclass(frozen=True, slots=True)
class RecordRef:
    """A pointer to a record on chain: what :meth:`Session.read_record` takes.

    ``type`` is the clinical type (``None`` when the label is not one this profile knows);
    ``label`` is the opaque label stored on chain.
    """

    record_id: str
    owner: str
    type: str | None
    label: str
    cid: str
    sha256: str
    version: int
    creator: str
    created_at: int
    updated_at: int = 0
    """When this version was registered (``created_at`` for version 1)."""
    kind: str = ""
    """The opaque on-chain label of the record's FHIR resourceType
    (:meth:`~ehrshare.fhir.TypeLabels.kind`); empty on a record registered without one."""

    @classmethod
    def from_chain(cls, data: dict[str, Any], labels: TypeLabels | None = None) -> RecordRef:
        """Build from a chaincode record."""
        return cls(
            record_id=data["record_id"],
            owner=data["owner"],
            type=_reveal(labels, data["type"]),
            label=data["type"],
            cid=data["cid"],
            sha256=data["sha256"],
            version=int(data["version"]),
            creator=data["creator"],
            created_at=int(data["created_at"]),
            updated_at=int(data.get("updated_at") or data["created_at"]),
            kind=str(data.get("kind", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record pointer with what only a reader needs: its capsule and the master key epoch
    it was encrypted under (None on a record from before epochs)."""

    ref: RecordRef
    capsule: bytes = field(repr=False)
    epoch: str | None
    type_epoch: int = 0
    """The owner's type-key epoch the capsule is sealed under (0 before any rotation)."""

    @classmethod
    def from_chain(cls, data: dict[str, Any], labels: TypeLabels | None = None) -> StoredRecord:
        """Build from a chaincode record."""
        epoch = data.get("epoch")
        return cls(
            RecordRef.from_chain(data, labels),
            base64.b64decode(data["capsule"]),
            None if epoch is None else str(epoch),
            int(data.get("type_epoch", 0)),
        )


@dataclass(frozen=True, slots=True)
class RecordVersion:
    """One version of a record as ListRecordVersions names it: what a store must hold."""

    record_id: str
    version: int
    cid: str
    sha256: str
    creator_msp: str = ""
    """The MSP id of the hospital that registered the record: its origin."""

    @classmethod
    def from_chain(cls, data: dict[str, Any]) -> RecordVersion:
        """Build from a ListRecordVersions item."""
        return cls(
            data["record_id"],
            int(data["version"]),
            data["cid"],
            data["sha256"],
            str(data.get("creator_msp", "")),
        )


@dataclass(frozen=True, slots=True)
class GrantPins:
    """A grant valid now as ListGrantPins names it: the hospital whose node should hold the
    records it covers (``(record_id, version, cid)``, the latest version of each)."""

    grant_id: str
    grantee_msp: str
    expiry: int
    records: tuple[tuple[str, int, str], ...]

    @classmethod
    def from_chain(cls, data: dict[str, Any]) -> GrantPins:
        """Build from a ListGrantPins item."""
        return cls(
            data["grant_id"],
            data["grantee_msp"],
            int(data["expiry"]),
            tuple((r["record_id"], int(r["version"]), r["cid"]) for r in data["records"]),
        )


@dataclass(frozen=True, slots=True)
class Grant:
    """A grant as committed: who may read which type of whose records, until when, how far."""

    grant_id: str
    owner: str
    grantor: str
    grantee: str
    type: str | None
    label: str
    expiry: int
    max_hops: int
    hop: int
    parent_grant_id: str
    state: str
    proxy: str = ""
    type_epochs: tuple[int, ...] = field(default=(), compare=False)
    """A root grant's owner type-key epochs its proxy holds a re-key for (a forward: ())."""

    @classmethod
    def from_chain(cls, data: dict[str, Any], labels: TypeLabels | None = None) -> Grant:
        """Build from a chaincode grant."""
        return cls(
            grant_id=data["grant_id"],
            owner=data["owner"],
            grantor=data["grantor"],
            grantee=data["grantee"],
            type=_reveal(labels, data["type"]),
            label=data["type"],
            expiry=int(data["expiry"]),
            max_hops=int(data["max_hops"]),
            hop=int(data["hop"]),
            parent_grant_id=data["parent_grant_id"],
            state=data["state"],
            proxy=str(data.get("proxy", "")),
            type_epochs=tuple(
                int(e) for e in data.get("type_epochs", [0] if int(data["hop"]) == 0 else [])
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(frozen=True, slots=True)
class Hop:
    """One grant of an access's chain (root first) and the proxy holding its re-key."""

    grant_id: str
    proxy: str


@dataclass(frozen=True, slots=True)
class Reencryption:
    """A proxy's report that it released a capsule carrying ``applied`` hops of an access."""

    applied: int
    proxy: str
    capsule_sha256: str


@dataclass(frozen=True, slots=True)
class Access:
    """An access decision (RequestAccess), or a committed approval (CheckApproval, which adds
    the re-encryptions reported so far). ``record`` is the pointer decided on, when an allowed
    RequestAccess carries it; ``capsule_sha256`` is None on an approval from before capsule
    hashes."""

    access_id: str
    record_id: str
    record_version: int
    owner: str
    label: str
    requester: str
    decision: str
    reason: str
    grant_id: str
    capsule_sha256: str | None
    chain: tuple[Hop, ...]
    reports: tuple[Reencryption, ...] = ()
    record: StoredRecord | None = field(default=None, repr=False)
    type_epoch: int = 0
    """The record's type-key epoch: the root hop's proxy applies that epoch's re-key."""

    @property
    def allowed(self) -> bool:
        """Whether the decision is allow."""
        return self.decision == "allow"

    @classmethod
    def from_chain(cls, data: dict[str, Any]) -> Access:
        """Build from a chaincode access entry."""
        digest = data.get("capsule_sha256")
        return cls(
            access_id=str(data["access_id"]),
            record_id=str(data["record_id"]),
            record_version=int(data["record_version"]),
            owner=str(data["owner"]),
            label=str(data["type"]),
            requester=str(data["requester"]),
            decision=str(data["decision"]),
            reason=str(data["reason"]),
            grant_id=str(data["grant_id"]),
            capsule_sha256=None if digest is None else str(digest),
            chain=tuple(
                Hop(str(h["grant_id"]), str(h.get("proxy", ""))) for h in data.get("chain", [])
            ),
            reports=tuple(
                Reencryption(int(r["applied"]), str(r["proxy"]), str(r["capsule_sha256"]))
                for r in data.get("reports", [])
            ),
            record=StoredRecord.from_chain(data["record"]) if data.get("record") else None,
            type_epoch=int(data.get("type_epoch", 0)),
        )


@dataclass(frozen=True, slots=True)
class AuditCheck:
    """The chaincode's recomputation of one hash-chained log (VerifyAuditTrail), or the same
    rule run offline (:func:`ehrshare_chaincode.auditlog.verify_entries`); ``head`` is set
    when valid."""

    chain: str
    valid: bool
    length: int
    first_bad_seq: int
    reason: str
    head: str | None = None

    @classmethod
    def from_chain(cls, data: Mapping[str, Any]) -> AuditCheck:
        """Build from a verification result."""
        head = data.get("head")
        return cls(
            chain=str(data["chain"]),
            valid=bool(data["valid"]),
            length=int(data["length"]),
            first_bad_seq=int(data["first_bad_seq"]),
            reason=str(data["reason"]),
            head=None if head is None else str(head),
        )

    def to_dict(self) -> dict[str, Any]:
        """The result as the chaincode gives it."""
        out: dict[str, Any] = {
            "chain": self.chain,
            "valid": self.valid,
            "length": self.length,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
        }
        if self.head is not None:
            out["head"] = self.head
        return out


@dataclass(frozen=True, slots=True)
class StateDigest:
    """SHA-256 over the contract's world state and the number of keys (equal on every peer at
    the same height)."""

    sha256: str
    keys: int

    @classmethod
    def from_chain(cls, data: Mapping[str, Any]) -> StateDigest:
        """Build from a StateDigest answer."""
        return cls(str(data["sha256"]), int(data["keys"]))


@dataclass(frozen=True, slots=True)
class AuditTrail:
    """The operation-log entries of a patient's chain (or of one record), oldest first."""

    chain: str
    entries: tuple[dict[str, Any], ...]
    record_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {"chain": self.chain, "record_id": self.record_id, "entries": list(self.entries)}


@dataclass(frozen=True, slots=True)
class AuditVerification:
    """The outcome of :meth:`Session.verify_audit`: valid only if every check passed."""

    chain: str
    valid: bool
    length: int
    first_bad_seq: int
    reason: str
    checks: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {
            "chain": self.chain,
            "valid": self.valid,
            "length": self.length,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "checks": self.checks,
        }
