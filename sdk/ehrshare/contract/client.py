"""The typed client for the EHR chaincode: :class:`EhrContract`, one method per function.

Each method builds its function's positional string arguments (once, here: the builders
:func:`grant_access_args` and :func:`register_record_args` also serve callers that batch
proposals through a contract's fine-grained flow) and parses the
answer into a type of :mod:`ehrshare.contract.types`. Whether a function is submitted (ordered
and committed) or evaluated (a query on one peer) is decided in one place,
:func:`~ehrshare.contract.calls.transact`, from the chaincode's own function table.
The DKG board and KGC roster functions have their own client (:mod:`ehrshare.contract.dkg`).

A failed call raises the ledger's :class:`~ehrshare.ledger.errors.LedgerError` unless the
caller gave ``errors=``, which maps it to the caller's own error (a
:class:`~ehrshare.session.Session` turns refusals into ``RequestRejected``). This module must
not decide anything the chaincode decides: it only names arguments and parses answers.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from ehrshare.contract.calls import ErrorMap, transact
from ehrshare.contract.dkg import DkgBoardClient
from ehrshare.contract.types import (
    Access,
    AuditCheck,
    AuditRead,
    EmergencyPolicy,
    EmergencyRequest,
    Grant,
    GrantPins,
    Guardianship,
    Member,
    OrgCA,
    Page,
    Rebinding,
    RecordVersion,
    StateDigest,
    StoredRecord,
    TypeKey,
    TypeKeyEpoch,
)
from ehrshare.fhir import TypeLabels
from ehrshare.ledger.api import Contract

__all__ = [
    "COVERED",
    "EhrContract",
    "ErrorMap",
    "grant_access_args",
    "register_record_args",
    "request_access_args",
]

COVERED: Final[frozenset[str]] = frozenset(
    {
        "RegisterIdentity",
        "RegisterMember",
        "RegisterOrgCA",
        "RotateOrgCA",
        "GetOrgCA",
        "GetIdentity",
        "PublishTypeKey",
        "GetTypeKey",
        "GetTypeKeyEpoch",
        "RotateTypeKey",
        "RekeyGrant",
        "RegisterRecord",
        "AmendRecord",
        "WriteRecords",
        "GetRecord",
        "GetRecordHistory",
        "ListRecords",
        "ListRecordVersions",
        "ListGrantedRecords",
        "ListGrantPins",
        "FindClaim",
        "GrantAccess",
        "RevokeAccess",
        "GetGrant",
        "ListGrants",
        "RequestAccess",
        "CheckApproval",
        "ReportReencryption",
        "GetAuditTrail",
        "VerifyAuditTrail",
        "StateDigest",
        "ProposeRebinding",
        "ApproveRebinding",
        "GetRebinding",
        "RegisterGuardian",
        "RemoveGuardian",
        "GetGuardian",
        "ProposeMinorGuardian",
        "ApproveMinorGuardian",
        "LogAuditRead",
        "SetEmergencyPolicy",
        "GetEmergencyPolicy",
        "RequestEmergency",
        "ApproveEmergency",
        "GetEmergency",
        "ListEmergencies",
        "ListEmergencyRecords",
        "ReviewEmergency",
        "CheckEmergencyExtraction",
    }
)
"""Every chaincode function :class:`EhrContract` calls (the DKG board and KGC roster functions
are :class:`~ehrshare.contract.dkg.DkgBoardClient`'s). Whether each is submitted or evaluated
is the chaincode's own declaration (:func:`~ehrshare.contract.calls.transact`)."""


def _page_size(page_size: int | None) -> str:
    return "" if page_size is None else str(page_size)


def grant_access_args(
    *,
    label: str,
    grantee: str,
    expiry: int,
    max_hops: int,
    allowed_next: Sequence[str],
    parent_grant_id: str,
    proxy: str,
    grant_id: str = "",
) -> tuple[str, ...]:
    """GrantAccess's positional arguments; without ``grant_id`` the chaincode picks one (and
    the argument is left off, as the benchmark has always sent it)."""
    args = (
        label,
        grantee,
        str(expiry),
        str(max_hops),
        json.dumps(sorted(allowed_next)) if allowed_next else "",
        parent_grant_id,
        proxy,
    )
    return (*args, grant_id) if grant_id else args


def register_record_args(
    *,
    record_id: str,
    owner: str,
    label: str,
    cid: str,
    sha256: str,
    capsule: bytes,
    format_version: str,
    type_epoch: int | None = None,
    kind: str = "",
    claim: str = "",
) -> tuple[str, ...]:
    """RegisterRecord's positional arguments (the capsule base64 as on chain); ``type_epoch``
    the owner's type-key epoch it is sealed under (None: not stated); ``kind`` the label of
    the record's resourceType (:meth:`~ehrshare.fhir.TypeLabels.kind`; empty: none);
    ``claim`` a conditional create's claim (:meth:`~ehrshare.fhir.TypeLabels.claim`; empty:
    none)."""
    args: tuple[str, ...] = (
        record_id,
        owner,
        label,
        cid,
        sha256,
        base64.b64encode(capsule).decode(),
        format_version,
    )
    if type_epoch is not None or kind or claim:
        args = (*args, "" if type_epoch is None else str(type_epoch))
    if kind or claim:
        args = (*args, kind)
    return (*args, claim) if claim else args


def request_access_args(
    record_id: str, grant_id: str = "", *, owner: str = "", label: str = ""
) -> tuple[str, ...]:
    """RequestAccess's positional arguments. ``owner`` and ``label`` are hints — the record's
    owner and on-chain label as a :class:`~ehrshare.contract.types.RecordRef` gives them — that
    let a Fabric >= 3.1 peer answer the log head, the grant scan and its first grant with the
    caller's identity and the record (one or two round trips fewer per endorsement); the
    chaincode decides on the record it reads, never on them. Without them the call is the
    two-argument one every chaincode version takes."""
    return (record_id, grant_id, owner, label) if owner else (record_id, grant_id)


class EhrContract:
    """The EHR chaincode with a method per function, called with ``contract``'s identity.

    ``labels`` names the clinical types of the records and grants it returns; ``errors`` maps a
    failed call to the caller's error (see the module docstring). Use :meth:`call` only for a
    function this class has no method for.
    """

    def __init__(
        self,
        contract: Contract,
        *,
        labels: TypeLabels | None = None,
        errors: ErrorMap | None = None,
    ) -> None:
        self.contract = contract
        self.labels = labels
        self._errors = errors

    def __repr__(self) -> str:
        return f"EhrContract({self.contract.chaincode_name!r})"

    @property
    def dkg(self) -> DkgBoardClient:
        """The DKG board and KGC roster functions, on the same contract handle."""
        return DkgBoardClient(self.contract, errors=self._errors)

    def call(self, function: str, *args: str) -> Any:
        """Submit or evaluate ``function`` as the chaincode declares it; its decoded JSON answer."""
        return json.loads(transact(self.contract, function, *args, errors=self._errors))

    # --- identities and organisations --------------------------------------------------------

    def register_identity(self) -> Member:
        """Register the caller (its role comes from its certificate)."""
        return Member.from_chain(self.call("RegisterIdentity"))

    def register_member(self, cert_pem: str, role: str) -> Member:
        """An org admin registers a member of its organisation by certificate."""
        return Member.from_chain(self.call("RegisterMember", cert_pem, role))

    def register_org_ca(self, ca_pem: str) -> OrgCA:
        """An org admin registers its organisation's member CA."""
        return OrgCA.from_chain(self.call("RegisterOrgCA", ca_pem))

    def rotate_org_ca(self, ca_pem: str, previous_sha256: str) -> OrgCA:
        """An org admin replaces its organisation's member CA."""
        return OrgCA.from_chain(self.call("RotateOrgCA", ca_pem, previous_sha256))

    def get_org_ca(self, msp_id: str) -> OrgCA:
        """An organisation's member CA."""
        return OrgCA.from_chain(self.call("GetOrgCA", msp_id))

    def get_identity(self, ibe_id: str) -> Member:
        """A registered identity."""
        return Member.from_chain(self.call("GetIdentity", ibe_id))

    def publish_type_key(self, label: str, key_b64: str, format_version: str) -> TypeKey:
        """Publish the caller's type public key for ``label`` (republishing rotates it)."""
        return TypeKey.from_chain(self.call("PublishTypeKey", label, key_b64, format_version))

    def get_type_key(self, ibe_id: str, label: str) -> TypeKey:
        """Someone's type public key for ``label`` (of type-key epoch 0: what re-keys to them
        are made to)."""
        return TypeKey.from_chain(self.call("GetTypeKey", ibe_id, label))

    def get_type_key_epoch(self, ibe_id: str, label: str) -> TypeKeyEpoch:
        """Someone's current type-key epoch of ``label`` and its key: what to seal a new record
        of theirs to."""
        return TypeKeyEpoch.from_chain(self.call("GetTypeKeyEpoch", ibe_id, label))

    def rotate_type_key(
        self, label: str, type_epoch: int, key_b64: str, format_version: str
    ) -> TypeKeyEpoch:
        """Publish the caller's key of type-key epoch ``type_epoch`` (the next one, or the
        current one while it has none)."""
        return TypeKeyEpoch.from_chain(
            self.call("RotateTypeKey", label, str(type_epoch), key_b64, format_version)
        )

    def rekey_grant(self, grant_id: str, type_epoch: int) -> Grant:
        """The owner says the grant's proxy has the re-key of the current type-key epoch."""
        return self._grant(self.call("RekeyGrant", grant_id, str(type_epoch)))

    # --- recovery of a lost wallet ------------------------------------------------------------

    def propose_rebinding(self, ibe_id: str, cert_pem: str, quorum: int | None = None) -> Rebinding:
        """An admin proposes to rebind ``ibe_id`` to a new certificate (its own approval too;
        proposing the same certificate again approves the open proposal)."""
        args = (ibe_id, cert_pem) if quorum is None else (ibe_id, cert_pem, str(quorum))
        return Rebinding.from_chain(self.call("ProposeRebinding", *args))

    def approve_rebinding(self, ibe_id: str, cert_sha256: str) -> Rebinding:
        """An admin of another hospital approves; the quorum's last approval rebinds."""
        return Rebinding.from_chain(self.call("ApproveRebinding", ibe_id, cert_sha256))

    def get_rebinding(self, ibe_id: str, cert_sha256: str) -> Rebinding:
        """A rebinding proposal and its approvals."""
        return Rebinding.from_chain(self.call("GetRebinding", ibe_id, cert_sha256))

    # --- guardians ---------------------------------------------------------------------------

    def register_guardian(
        self, guardian: str, *, actions: Sequence[str], labels: Sequence[str], expiry: int
    ) -> Guardianship:
        """A patient registers a guardian with its actions, type labels (none: every type)
        and expiry (registering again replaces them)."""
        data = self.call(
            "RegisterGuardian",
            guardian,
            json.dumps(sorted(actions)),
            json.dumps(sorted(labels)) if labels else "",
            str(expiry),
        )
        return Guardianship.from_chain(data)

    def remove_guardian(self, guardian: str) -> Guardianship:
        """A patient ends a guardianship."""
        return Guardianship.from_chain(self.call("RemoveGuardian", guardian))

    def get_guardian(self, patient: str, guardian: str) -> Guardianship:
        """A guardianship (for the patient, the guardian, auditors and admins)."""
        return Guardianship.from_chain(self.call("GetGuardian", patient, guardian))

    def propose_minor_guardian(
        self,
        patient: str,
        guardian: str,
        *,
        actions: Sequence[str],
        labels: Sequence[str],
        expiry: int,
    ) -> Guardianship:
        """The registering hospital's admin proposes a guardian for a patient who cannot act
        (a minor); it takes effect when admins of two other hospitals approve."""
        data = self.call(
            "ProposeMinorGuardian",
            patient,
            guardian,
            json.dumps(sorted(actions)),
            json.dumps(sorted(labels)) if labels else "",
            str(expiry),
        )
        return Guardianship.from_chain(data)

    def approve_minor_guardian(self, patient: str, guardian: str) -> Guardianship:
        """An admin of another hospital approves a proposed minor's guardian."""
        return Guardianship.from_chain(self.call("ApproveMinorGuardian", patient, guardian))

    def log_audit_read(self, patient: str) -> AuditRead:
        """A guardian logs its read of the patient's audit trail (before reading under it)."""
        return AuditRead.from_chain(self.call("LogAuditRead", patient))

    # --- emergency access (break-glass) -------------------------------------------------------

    def set_emergency_policy(
        self,
        *,
        labels: Sequence[str],
        duration_s: int,
        approvals: int,
        distinct_hospitals: bool,
        type_keys: Mapping[str, str],
        generation: int | None = None,
    ) -> EmergencyPolicy:
        """A patient sets its emergency policy with its emergency identity's type keys (base64
        by label); ``generation`` None keeps the current emergency identity."""
        data = self.call(
            "SetEmergencyPolicy",
            json.dumps(sorted(labels)),
            str(duration_s),
            str(approvals),
            "true" if distinct_hospitals else "false",
            json.dumps(dict(sorted(type_keys.items()))),
            "" if generation is None else str(generation),
        )
        return EmergencyPolicy.from_chain(data, self.labels)

    def get_emergency_policy(self, patient: str) -> EmergencyPolicy:
        """A patient's emergency policy, or the consortium default (``default``)."""
        return EmergencyPolicy.from_chain(self.call("GetEmergencyPolicy", patient), self.labels)

    def request_emergency(self, patient: str, reason: str) -> EmergencyRequest:
        """A clinician requests emergency access to a patient's records."""
        return EmergencyRequest.from_chain(self.call("RequestEmergency", patient, reason))

    def approve_emergency(self, request_id: str) -> EmergencyRequest:
        """A hospital admin approves an emergency request."""
        return EmergencyRequest.from_chain(self.call("ApproveEmergency", request_id))

    def get_emergency(self, request_id: str) -> EmergencyRequest:
        """One emergency request."""
        return EmergencyRequest.from_chain(self.call("GetEmergency", request_id))

    def list_emergencies(
        self, patient: str, *, page_size: int | None = None, bookmark: str = ""
    ) -> Page[EmergencyRequest]:
        """One page of a patient's emergency requests."""
        data = self.call("ListEmergencies", patient, _page_size(page_size), bookmark)
        return Page.from_chain(data, "emergencies", EmergencyRequest.from_chain)

    def list_emergency_records(
        self, request_id: str, *, page_size: int | None = None, bookmark: str = ""
    ) -> tuple[Page[StoredRecord], dict[str, str]]:
        """For the requester of an emergency in force: one page of the records it opens (a
        page may hold fewer than asked: follow the bookmark until it is empty), and the
        patient's grant to its emergency identity per type label (what RequestAccess names)."""
        data = self.call("ListEmergencyRecords", request_id, _page_size(page_size), bookmark)
        grants = {str(k): str(v) for k, v in dict(data.get("grants", {})).items()}
        return Page.from_chain(data, "records", self._stored), grants

    def review_emergency(self, request_id: str, note: str = "") -> EmergencyRequest:
        """The patient (or a guardian) acknowledges an approved emergency."""
        return EmergencyRequest.from_chain(self.call("ReviewEmergency", request_id, note))

    def check_emergency_extraction(self, emergency_id: str, requester: str) -> dict[str, Any]:
        """For a KGC node: may ``requester`` have the key of ``emergency_id`` now? Its answer
        (``cert_sha256`` of the requester, ``owner``, ``request_id``) or the ledger's refusal."""
        answer: dict[str, Any] = self.call("CheckEmergencyExtraction", emergency_id, requester)
        return answer

    # --- records -----------------------------------------------------------------------------

    def register_record(
        self,
        *,
        record_id: str,
        owner: str,
        label: str,
        cid: str,
        sha256: str,
        capsule: bytes,
        format_version: str,
        type_epoch: int | None = None,
        kind: str = "",
        claim: str = "",
    ) -> StoredRecord:
        """Register a record's pointer (its ciphertext already stored), sealed under the
        owner's type-key epoch ``type_epoch``, with the label ``kind`` of its resourceType,
        taking ``claim`` (refused if a record of the owner holds it)."""
        args = register_record_args(
            record_id=record_id,
            owner=owner,
            label=label,
            cid=cid,
            sha256=sha256,
            capsule=capsule,
            format_version=format_version,
            type_epoch=type_epoch,
            kind=kind,
            claim=claim,
        )
        return StoredRecord.from_chain(self.call("RegisterRecord", *args), self.labels)

    def find_claim(self, owner: str, claim: str) -> tuple[str, StoredRecord | None]:
        """Which record of ``owner`` holds ``claim`` (``""``: none) and its pointer if you may
        read it (the patient itself and clinicians may ask)."""
        data = self.call("FindClaim", owner, claim)
        record = data.get("record")
        stored = None if record is None else StoredRecord.from_chain(record, self.labels)
        return str(data.get("record_id") or ""), stored

    def amend_record(
        self,
        *,
        record_id: str,
        cid: str,
        sha256: str,
        capsule: bytes,
        format_version: str,
        type_epoch: int | None = None,
        expected_version: int | None = None,
    ) -> StoredRecord:
        """Register a new version of a record (refused unless the record is at
        ``expected_version``, when given)."""
        args: tuple[str, ...] = (
            record_id,
            cid,
            sha256,
            base64.b64encode(capsule).decode(),
            format_version,
        )
        if type_epoch is not None or expected_version is not None:
            args = (*args, "" if type_epoch is None else str(type_epoch))
        if expected_version is not None:
            args = (*args, str(expected_version))
        return StoredRecord.from_chain(self.call("AmendRecord", *args), self.labels)

    def write_records(self, writes: Sequence[tuple[str, ...]]) -> list[StoredRecord]:
        """Register several records and versions in one transaction (all or none): each write
        is ``("RegisterRecord", *its arguments)`` (see :func:`register_record_args`) or
        ``("AmendRecord", *its arguments)``. The records written, in order."""
        answer = self.call("WriteRecords", json.dumps([list(w) for w in writes]))
        return [StoredRecord.from_chain(r, self.labels) for r in answer]

    def get_record(self, record_id: str, version: int | None = None) -> StoredRecord:
        """A record's pointer: the latest version, or ``version``."""
        args = (record_id,) if version is None else (record_id, str(version))
        return StoredRecord.from_chain(self.call("GetRecord", *args), self.labels)

    def get_record_history(self, record_id: str) -> list[StoredRecord]:
        """Every version of a record, oldest first."""
        return [
            StoredRecord.from_chain(r, self.labels)
            for r in self.call("GetRecordHistory", record_id)
        ]

    def list_records(
        self, patient: str, *, page_size: int | None = None, bookmark: str = ""
    ) -> Page[StoredRecord]:
        """One page of a patient's records."""
        data = self.call("ListRecords", patient, _page_size(page_size), bookmark)
        return Page.from_chain(data, "records", self._stored)

    def list_record_versions(
        self, *, page_size: int | None = None, bookmark: str = ""
    ) -> Page[RecordVersion]:
        """One page of every version of every record (org admins and auditors)."""
        data = self.call("ListRecordVersions", _page_size(page_size), bookmark)
        return Page.from_chain(data, "versions", RecordVersion.from_chain)

    def list_granted_records(
        self, grant_id: str, *, page_size: int | None = None, bookmark: str = ""
    ) -> Page[StoredRecord]:
        """One page of the records a grant lets its grantee read now (a page may hold fewer
        than asked, even none, before the last: follow the bookmark until it is empty)."""
        data = self.call("ListGrantedRecords", grant_id, _page_size(page_size), bookmark)
        return Page.from_chain(data, "records", self._stored)

    def list_grant_pins(
        self, *, page_size: int | None = None, bookmark: str = ""
    ) -> Page[GrantPins]:
        """One page of the grants valid now, each with its grantee's hospital and the latest
        version of each record it covers (org admins and auditors; a page holds at most
        ``page_size`` records, a grant with more is split across pages, each part with some of
        its records: merge them by ``grant_id``, as :func:`ehrshare.storemaint.grant_pins`
        does; a page may hold fewer than asked, even none, before the last: follow the
        bookmark until it is empty)."""
        data = self.call("ListGrantPins", _page_size(page_size), bookmark)
        return Page.from_chain(data, "grants", GrantPins.from_chain)

    def _stored(self, data: dict[str, Any]) -> StoredRecord:
        return StoredRecord.from_chain(data, self.labels)

    # --- access ------------------------------------------------------------------------------

    def grant_access(
        self,
        *,
        label: str,
        grantee: str,
        expiry: int,
        max_hops: int,
        allowed_next: Sequence[str],
        parent_grant_id: str,
        proxy: str,
        grant_id: str = "",
    ) -> Grant:
        """Grant (or, with ``parent_grant_id``, forward) access to a type of records."""
        args = grant_access_args(
            label=label,
            grantee=grantee,
            expiry=expiry,
            max_hops=max_hops,
            allowed_next=allowed_next,
            parent_grant_id=parent_grant_id,
            proxy=proxy,
            grant_id=grant_id,
        )
        return self._grant(self.call("GrantAccess", *args))

    def revoke_access(self, grant_id: str) -> Grant:
        """Revoke a grant (its owner or grantor)."""
        return self._grant(self.call("RevokeAccess", grant_id))

    def get_grant(self, grant_id: str) -> Grant:
        """One grant."""
        return self._grant(self.call("GetGrant", grant_id))

    def list_grants(
        self,
        party: str,
        side: Literal["owner", "grantor", "grantee"],
        *,
        page_size: int | None = None,
        bookmark: str = "",
    ) -> Page[Grant]:
        """One page of the grants ``party`` gave as patient, forwarded, or received."""
        data = self.call("ListGrants", party, side, _page_size(page_size), bookmark)
        return Page.from_chain(data, "grants", self._grant)

    def _grant(self, data: dict[str, Any]) -> Grant:
        return Grant.from_chain(data, self.labels)

    def request_access(
        self, record_id: str, grant_id: str = "", *, owner: str = "", label: str = ""
    ) -> Access:
        """Ask to read a record (under ``grant_id``, or the first grant that covers it); the
        decision is committed and logged either way. ``owner`` / ``label``: the record's, when
        known, as hints that save round trips on the peer (:func:`request_access_args`)."""
        args = request_access_args(record_id, grant_id, owner=owner, label=label)
        return Access.from_chain(self.call("RequestAccess", *args))

    def check_approval(self, access_id: str) -> Access:
        """For a proxy (or an auditor): the committed approval and its reported hops."""
        return Access.from_chain(self.call("CheckApproval", access_id))

    def report_reencryption(
        self,
        access_id: str,
        outcome: Literal["ok", "failed"],
        detail: str = "",
        *,
        applied: int | None = None,
        capsule_sha256: str = "",
    ) -> dict[str, Any]:
        """For a proxy: report a re-encryption it performed (with the hops the released capsule
        carries and its hash) or refused; returns the log entry."""
        args = [access_id, outcome, detail]
        if applied is not None:
            args += [str(applied), capsule_sha256]
        entry: dict[str, Any] = self.call("ReportReencryption", *args)
        return entry

    # --- audit -------------------------------------------------------------------------------

    def get_audit_trail(
        self,
        kind: Literal["patient", "record"],
        subject: str,
        *,
        page_size: int | None = None,
        bookmark: str = "",
        read_id: str = "",
    ) -> Page[dict[str, Any]]:
        """One page of the operation log of a patient or of one record (a guardian names its
        logged read, :meth:`log_audit_read`)."""
        args = (kind, subject, _page_size(page_size), bookmark) + ((read_id,) if read_id else ())
        return Page.from_chain(self.call("GetAuditTrail", *args), "entries", dict)

    def verify_audit_trail(self, chain: str, read_id: str = "") -> AuditCheck:
        """The chaincode's recomputation of a patient's log against its head (a guardian's: up
        to its logged read)."""
        args = (chain, read_id) if read_id else (chain,)
        return AuditCheck.from_chain(self.call("VerifyAuditTrail", *args))

    def state_digest(self) -> StateDigest:
        """SHA-256 over the contract's world state (compare it across organisations)."""
        return StateDigest.from_chain(self.call("StateDigest"))
