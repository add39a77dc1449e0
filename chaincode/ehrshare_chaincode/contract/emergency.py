"""Break-glass emergency access: a patient's policy, a clinician's request, hospitals' approvals.

A patient's emergency policy names the record types an emergency may open, how long an approved
emergency lasts, how many approvals it needs and whether they must come from distinct hospitals
other than the requester's. With the policy the patient publishes the type keys of its
*emergency identity* ``<patient>~emergency-<n>`` (an IBE identity that is no member) and then
grants each type to it like to anyone; those re-keys sit at the proxies. A clinician's request
names the patient and a reason; hospital admins approve it; the approval that reaches the
policy's count puts the emergency in force until ``expires_at``. While it is in force the
requester may read under the emergency grants (:func:`emergency_problem`, called by
RequestAccess: every read is logged with purpose ``emergency``) and the KGC nodes extract the
emergency identity's key for that requester (CheckEmergencyExtraction). The patient (or a
guardian allowed ``audit``) acknowledges each approved emergency with ReviewEmergency.

No policy on chain means :data:`DEFAULT_POLICY` (no types: nothing is readable, because no key
path exists until the patient pre-grants).

What this module must not do: let an emergency be in force before its last required approval
commits or after ``expires_at``; count a hospital (or, without ``distinct_hospitals``, an admin)
twice; count the requester's own hospital when the policy says distinct hospitals; let anyone
but the requester read under it.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Final

from .. import canonical, typekey
from ..stub import ChaincodeError
from .checks import (
    MAX_TYPE_KEY_BYTES,
    check_b64,
    check_ibe,
    check_id,
    check_int,
    check_type,
    json_list,
)
from .context import ADMIN, AUDITOR, CLINICIAN, GUARDIAN, KGC, PATIENT, Caller, TxContext
from .functions import evaluate, submit
from .guardians import guardian_problem
from .identities import Identities, current_epoch, load_identity
from .keys import (
    K_EMERGENCY,
    K_EMERGENCY_BY_PATIENT,
    K_EMERGENCY_POLICY,
    K_GRANT,
    K_GRANT_MATCH,
    K_RECORD,
    K_RECORD_BY_OWNER,
    K_TYPEKEY,
)

__all__ = [
    "DEFAULT_POLICY",
    "EMERGENCY_MARK",
    "REQUEST_TTL_S",
    "Emergency",
    "emergency_identity",
    "emergency_problem",
    "is_emergency_identity",
    "pregrant_allowed",
]

EMERGENCY_MARK: Final = "~emergency-"
"""What an emergency identity's enrollment part carries; no member may be registered with it."""
DEFAULT_POLICY: Final = {
    "types": [],
    "duration_s": 24 * 3600,
    "approvals": 2,
    "distinct_hospitals": True,
}
"""The consortium default for a patient without a policy: 2 approvals by admins of 2 hospitals
other than the requester's, 24 hours — and no types, because nothing was pre-granted."""
REQUEST_TTL_S: Final = 6 * 3600
"""A request not approved by its count within this time is void (request again)."""
MIN_DURATION_S: Final = 60
MAX_DURATION_S: Final = 7 * 24 * 3600
MAX_APPROVALS: Final = 16
MAX_TYPES: Final = 32
MAX_REASON_CHARS: Final = 500
MAX_NOTE_CHARS: Final = 500
_TEXT_RE: Final = re.compile(r"[^\x00-\x1f\x7f]+")
_ID_RE: Final = re.compile(r"(.+)~emergency-([1-9][0-9]{0,5})")


def emergency_identity(patient: str, generation: int) -> str:
    """The IBE identity a patient's emergency grants of ``generation`` go to."""
    return f"{patient}{EMERGENCY_MARK}{generation}"


def is_emergency_identity(ibe_id: str) -> bool:
    """Whether ``ibe_id`` names an emergency identity (never a member)."""
    return EMERGENCY_MARK in ibe_id


def _parse_identity(ibe_id: str) -> tuple[str, int]:
    match = _ID_RE.fullmatch(ibe_id)
    if match is None:
        raise ChaincodeError(
            f"identity {ibe_id!r} is not an emergency identity (<patient>~emergency-<n>)"
        )
    return match.group(1), int(match.group(2))


def _text(value: str, what: str, limit: int) -> str:
    if not value or not _TEXT_RE.fullmatch(value):
        raise ChaincodeError(f"{what} must be 1 to {limit} printable characters")
    if len(value) > limit:
        raise ChaincodeError(f"{what} is {len(value)} characters; the limit is {limit}")
    return value


def _bool(value: str, what: str) -> bool:
    if value not in ("true", "false"):
        raise ChaincodeError(f"{what} {value!r} is not true or false")
    return value == "true"


def effective_policy(ctx: TxContext, patient: str) -> dict[str, Any]:
    """The patient's policy on chain, or the consortium default (``default: true``)."""
    stored = ctx.get_json(K_EMERGENCY_POLICY, patient)
    if stored is not None:
        result: dict[str, Any] = stored
        return result
    return {
        "patient": patient,
        "identity": emergency_identity(patient, 1),
        "generation": 1,
        **DEFAULT_POLICY,
        "default": True,
    }


def pregrant_allowed(ctx: TxContext, owner: str, grantee: str) -> bool:
    """Whether ``grantee`` is the emergency identity of ``owner``'s policy (GrantAccess lets a
    patient grant to it although it is no member)."""
    stored = ctx.get_json(K_EMERGENCY_POLICY, owner)
    return stored is not None and stored["identity"] == grantee


def _in_force(ctx: TxContext, request: dict[str, Any]) -> str | None:
    """Why an emergency is not in force now, or None."""
    rid = request["request_id"]
    if request["status"] != "approved":
        have, need = len(request["approvals"]), int(request["policy"]["approvals"])
        return f"emergency {rid} has {have} of the {need} approvals it needs"
    if ctx.now >= int(request["expires_at"]):
        return f"emergency {rid} expired at {request['expires_at']}"
    return None


def _requests_of(ctx: TxContext, patient: str) -> list[dict[str, Any]]:
    rows = ctx.stub.get_state_by_partial_composite_key(K_EMERGENCY_BY_PATIENT, [patient])
    out = []
    for kv in rows:
        _, attrs = ctx.stub.split_composite_key(kv.key)
        request = ctx.get_json(K_EMERGENCY, attrs[1])
        if request is not None:
            out.append(request)
    return out


def emergency_problem(
    ctx: TxContext, caller: Caller, grant: dict[str, Any]
) -> tuple[dict[str, Any] | None, str | None]:
    """For RequestAccess under a grant to an emergency identity: the caller's emergency that
    covers it and None, or the newest such request (if any) and why it does not serve now."""
    identity, owner = str(grant["grantee"]), str(grant["owner"])
    mine = [
        r
        for r in _requests_of(ctx, owner)
        if r["requester"] == caller.name
        and r["policy"]["identity"] == identity
        and grant["type"] in r["policy"]["types"]
    ]
    if not mine:
        return None, (
            f"identity {caller.name} has no emergency request for {owner} covering grant "
            f"{grant['grant_id']}"
        )
    first_problem: str | None = None
    for request in sorted(mine, key=lambda r: (-int(r["requested_at"]), r["request_id"])):
        problem = _in_force(ctx, request)
        if problem is None:
            return request, None
        first_problem = first_problem or problem
    newest = max(mine, key=lambda r: (int(r["requested_at"]), r["request_id"]))
    return newest, first_problem


def _may_read(ctx: TxContext, caller: Caller, patient: str) -> bool:
    if caller.name == patient or caller.role in (ADMIN, AUDITOR, KGC):
        return True
    if caller.role == GUARDIAN:
        return guardian_problem(ctx, caller, patient, "audit") is None
    return False


class Emergency:
    """SetEmergencyPolicy, GetEmergencyPolicy, RequestEmergency, ApproveEmergency, GetEmergency,
    ListEmergencies, ListEmergencyRecords, ReviewEmergency and CheckEmergencyExtraction."""

    @submit
    def SetEmergencyPolicy(
        self,
        ctx: TxContext,
        types: str,
        duration_s: str,
        approvals: str,
        distinct_hospitals: str,
        type_keys: str,
        generation: str = "",
    ) -> Any:
        """A patient sets (or replaces) its emergency policy and its emergency identity's keys.

        ``types``: a JSON list of type labels (1 to 32); ``type_keys``: a JSON object from each
        of those labels to the base64 type key of the emergency identity (made with its
        identity key, with a proof of knowledge under the current master key);
        ``distinct_hospitals``: ``true`` or ``false``; ``generation``: the emergency identity's
        number ("" keeps the current one, 1 at first; a higher one starts a new identity).
        """
        caller = ctx.registered(PATIENT)
        patient = str(caller.ibe_id)
        labels = [check_type(t) for t in json_list(types, "types")]
        if not 1 <= len(labels) <= MAX_TYPES:
            raise ChaincodeError(f"an emergency policy names 1 to {MAX_TYPES} types")
        duration = check_int(duration_s, "duration", MIN_DURATION_S, MAX_DURATION_S)
        need = check_int(approvals, "approvals", 1, MAX_APPROVALS)
        distinct = _bool(distinct_hospitals, "distinct hospitals")
        current = ctx.get_json(K_EMERGENCY_POLICY, patient)
        now_gen = int(current["generation"]) if current is not None else 1
        gen = now_gen if generation == "" else check_int(generation, "generation", now_gen, 999999)
        identity = emergency_identity(patient, gen)
        check_ibe(identity, "emergency identity")
        keys = canonical.loads(type_keys, "type keys") if type_keys else {}
        if not isinstance(keys, dict) or sorted(keys) != sorted(set(labels)):
            raise ChaincodeError("type keys must be a json object with one key per policy type")
        mpk = Identities()._current_mpk(ctx)
        epoch = current_epoch(ctx)
        for label in sorted(keys):
            key_b64 = keys[label]
            if not isinstance(key_b64, str):
                raise ChaincodeError(f"type key {label} must be a base64 string")
            check_b64(key_b64, f"type key {label}", MAX_TYPE_KEY_BYTES)
            typekey.check_type_key(
                base64.b64decode(key_b64), owner=identity, record_type=label, mpk_point=mpk
            )
            ctx.put_json(
                {
                    "ibe_id": identity,
                    "type": label,
                    "key": key_b64,
                    "format_version": 1,
                    "epoch": epoch,
                    "published_at": ctx.now,
                    "tx_id": ctx.tx_id,
                },
                K_TYPEKEY,
                identity,
                label,
            )
        policy = {
            "patient": patient,
            "identity": identity,
            "generation": gen,
            "types": sorted(set(labels)),
            "duration_s": duration,
            "approvals": need,
            "distinct_hospitals": distinct,
            "set_at": ctx.now,
            "default": False,
        }
        ctx.put_json(policy, K_EMERGENCY_POLICY, patient)
        detail = {k: policy[k] for k in ("types", "duration_s", "approvals", "distinct_hospitals")}
        ctx.log(patient, "SetEmergencyPolicy", "ok", detail=detail | {"identity": identity})
        return policy

    @evaluate
    def GetEmergencyPolicy(self, ctx: TxContext, patient: str) -> Any:
        """A patient's emergency policy, or the consortium default (any registered member)."""
        ctx.registered()
        check_ibe(patient, "patient")
        if load_identity(ctx, patient)["role"] != PATIENT:
            raise ChaincodeError(f"identity {patient} is not a patient")
        return effective_policy(ctx, patient)

    @submit
    def RequestEmergency(self, ctx: TxContext, patient: str, reason: str) -> Any:
        """A clinician asks for emergency access to a patient's records, giving a reason.

        The request snapshots the patient's policy (or the default) and waits for approvals;
        it is logged on the patient's chain, so the patient's event stream carries it.
        """
        caller = ctx.registered(CLINICIAN)
        check_ibe(patient, "patient")
        if load_identity(ctx, patient)["role"] != PATIENT:
            raise ChaincodeError(f"identity {patient} is not a patient")
        why = _text(reason, "reason", MAX_REASON_CHARS)
        policy = effective_policy(ctx, patient)
        request_id = "e-" + ctx.tx_id[:32]
        request = {
            "request_id": request_id,
            "patient": patient,
            "requester": caller.name,
            "requester_msp": caller.msp_id,
            "reason": why,
            "policy": {
                k: policy[k]
                for k in (
                    "identity",
                    "types",
                    "duration_s",
                    "approvals",
                    "distinct_hospitals",
                    "default",
                )
            },
            "approvals": [],
            "status": "pending",
            "requested_at": ctx.now,
            "approve_by": ctx.now + REQUEST_TTL_S,
            "expires_at": 0,
            "review": None,
        }
        ctx.put_json(request, K_EMERGENCY, request_id)
        ctx.put_index(K_EMERGENCY_BY_PATIENT, patient, request_id)
        ctx.log(
            patient,
            "RequestEmergency",
            "requested",
            detail={"request_id": request_id, "requester": caller.name, "reason": why},
        )
        return request

    @submit
    def ApproveEmergency(self, ctx: TxContext, request_id: str) -> Any:
        """A hospital admin approves an emergency request; the approval that reaches the
        policy's count puts it in force for the policy's duration from that commit."""
        admin = ctx.registered(ADMIN)
        request = _load(ctx, request_id)
        policy = request["policy"]
        if request["status"] == "approved":
            raise ChaincodeError(f"emergency {request_id} is already approved")
        if ctx.now > int(request["approve_by"]):
            raise ChaincodeError(
                f"emergency {request_id} was not approved by {request['approve_by']} and is "
                "void; request it again"
            )
        if policy["distinct_hospitals"]:
            if admin.msp_id == request["requester_msp"]:
                raise ChaincodeError(
                    f"hospital {admin.msp_id} is the requester's; the emergency policy of "
                    f"{request['patient']} needs approvals from other hospitals"
                )
            if any(a["msp_id"] == admin.msp_id for a in request["approvals"]):
                raise ChaincodeError(
                    f"hospital {admin.msp_id} already approved emergency {request_id}"
                )
        elif any(a["admin"] == admin.name for a in request["approvals"]):
            raise ChaincodeError(f"identity {admin.name} already approved emergency {request_id}")
        request["approvals"].append({"admin": admin.name, "msp_id": admin.msp_id, "at": ctx.now})
        count, need = len(request["approvals"]), int(policy["approvals"])
        patient = str(request["patient"])
        ctx.log(
            patient,
            "ApproveEmergency",
            "ok",
            detail={"request_id": request_id, "approvals": count, "needed": need},
        )
        if count >= need:
            request["status"] = "approved"
            request["approved_at"] = ctx.now
            request["expires_at"] = ctx.now + int(policy["duration_s"])
            request["review"] = {"state": "pending"}
            ctx.log(
                patient,
                "EmergencyApproved",
                "ok",
                detail={
                    "request_id": request_id,
                    "requester": request["requester"],
                    "expires_at": request["expires_at"],
                    "types": policy["types"],
                    "approved_by": [a["admin"] for a in request["approvals"]],
                    "review": "pending",
                },
            )
        ctx.put_json(request, K_EMERGENCY, request_id)
        return request

    @evaluate
    def GetEmergency(self, ctx: TxContext, request_id: str) -> Any:
        """One emergency request: its requester, the patient (or a guardian allowed ``audit``),
        admins, auditors and KGC nodes; with ``grants``, the patient's active grant to the
        emergency identity per type."""
        caller = ctx.registered()
        request = _load(ctx, request_id)
        if caller.name != request["requester"] and not _may_read(ctx, caller, request["patient"]):
            raise ChaincodeError(f"identity {caller.name} may not read emergency {request_id}")
        # The patient's grants to the emergency identity the requester names in RequestAccess.
        return request | {"grants": _pregrants(ctx, request)}

    @evaluate
    def ListEmergencies(
        self, ctx: TxContext, patient: str, page_size: str = "", bookmark: str = ""
    ) -> Any:
        """One page of a patient's emergency requests (the patient, a guardian allowed
        ``audit``, admins, auditors)."""
        caller = ctx.registered()
        check_ibe(patient, "patient")
        if not _may_read(ctx, caller, patient) or caller.role == KGC:
            raise ChaincodeError(f"identity {caller.name} may not list emergencies of {patient}")
        requests, next_bm = ctx.index_page(
            K_EMERGENCY_BY_PATIENT, patient, K_EMERGENCY, page_size, bookmark
        )
        return {"emergencies": requests, "bookmark": next_bm}

    @evaluate
    def ListEmergencyRecords(
        self, ctx: TxContext, request_id: str, page_size: str = "", bookmark: str = ""
    ) -> Any:
        """For the requester of an emergency in force: one page of the patient's records (those
        of other types are left out of the page, so a page may hold fewer)."""
        caller = ctx.registered()
        request = _load(ctx, request_id)
        if caller.name != request["requester"]:
            raise ChaincodeError(
                f"identity {caller.name} is not the requester of emergency {request_id}"
            )
        problem = _in_force(ctx, request)
        if problem is not None:
            raise ChaincodeError(problem)
        records, next_bm = ctx.index_page(
            K_RECORD_BY_OWNER, str(request["patient"]), K_RECORD, page_size, bookmark
        )
        types = set(request["policy"]["types"])
        return {
            "records": [r for r in records if r["type"] in types],
            "bookmark": next_bm,
            "grants": _pregrants(ctx, request),
        }

    @submit
    def ReviewEmergency(self, ctx: TxContext, request_id: str, note: str = "") -> Any:
        """The patient (or a guardian allowed ``audit``) acknowledges an approved emergency."""
        caller = ctx.registered(PATIENT, GUARDIAN)
        request = _load(ctx, request_id)
        patient = str(request["patient"])
        if caller.role == GUARDIAN:
            problem = guardian_problem(ctx, caller, patient, "audit")
            if problem is not None:
                raise ChaincodeError(problem)
        elif caller.name != patient:
            raise ChaincodeError(f"identity {caller.name} may not review emergency {request_id}")
        if request["status"] != "approved":
            raise ChaincodeError(f"emergency {request_id} was never approved; nothing to review")
        if request["review"] and request["review"].get("state") == "acknowledged":
            raise ChaincodeError(f"emergency {request_id} is already reviewed")
        text = _text(note, "note", MAX_NOTE_CHARS) if note else ""
        request["review"] = {"state": "acknowledged", "by": caller.name, "at": ctx.now}
        if text:
            request["review"]["note"] = text
        ctx.put_json(request, K_EMERGENCY, request_id)
        detail: dict[str, Any] = {"request_id": request_id}
        if caller.name != patient:
            detail["on_behalf_of"] = patient
        ctx.log(patient, "ReviewEmergency", "ok", detail=detail)
        return request

    @evaluate
    def CheckEmergencyExtraction(self, ctx: TxContext, emergency_id: str, requester: str) -> Any:
        """For a KGC node: may ``requester`` have the key of ``emergency_id``? The patient
        whose emergency identity it is may; a clinician only while an emergency of its own
        for that identity is in force. Returns the requester's registered ``cert_sha256``
        (the node compares it with the request's certificate) and the emergency, if any."""
        ctx.registered(KGC, AUDITOR)
        check_ibe(emergency_id, "emergency identity")
        patient, _ = _parse_identity(emergency_id)
        ident = load_identity(ctx, requester)
        if requester == patient:
            return {"requester": requester, "cert_sha256": ident["cert_sha256"], "owner": True}
        mine = [
            r
            for r in _requests_of(ctx, patient)
            if r["requester"] == requester and r["policy"]["identity"] == emergency_id
        ]
        if not mine:
            raise ChaincodeError(
                f"identity {requester} has no emergency request for {patient} ({emergency_id})"
            )
        problems = []
        for request in mine:
            problem = _in_force(ctx, request)
            if problem is None:
                return {
                    "requester": requester,
                    "cert_sha256": ident["cert_sha256"],
                    "owner": False,
                    "request_id": request["request_id"],
                    "expires_at": request["expires_at"],
                }
            problems.append(problem)
        raise ChaincodeError(problems[-1])


def _pregrants(ctx: TxContext, request: dict[str, Any]) -> dict[str, str]:
    """The first active, unexpired grant per policy type from the patient to the emergency
    identity (what the requester names in RequestAccess)."""
    found: dict[str, str] = {}
    patient, identity = str(request["patient"]), str(request["policy"]["identity"])
    for label in request["policy"]["types"]:
        rows = ctx.stub.get_state_by_partial_composite_key(
            K_GRANT_MATCH, [patient, str(label), identity]
        )
        for kv in rows:
            _, attrs = ctx.stub.split_composite_key(kv.key)
            grant = ctx.get_json(K_GRANT, attrs[3])
            if grant and grant["state"] == "active" and ctx.now < int(grant["expiry"]):
                found[str(label)] = str(grant["grant_id"])
                break
    return found


def _load(ctx: TxContext, request_id: str) -> dict[str, Any]:
    check_id(request_id, "emergency id")
    request = ctx.get_json(K_EMERGENCY, request_id)
    if request is None:
        raise ChaincodeError(f"emergency {request_id} does not exist")
    result: dict[str, Any] = request
    return result
