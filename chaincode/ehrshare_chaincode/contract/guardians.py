"""Guardians: a member with role ``guardian`` acting for a patient within stated limits.

A patient registers a guardian with the actions it may take (``grant``, ``revoke``, ``audit``),
the record types it covers (none listed: every type) and an expiry. Within them the guardian
revokes the patient's grants, reads the patient's audit trail, and grants on the patient's
behalf — cryptographically a forward of a grant the patient gave the guardian (only the
patient's key makes a re-key from the patient), which the chaincode refuses beyond the limits.
Every such change is logged on the patient's chain with the guardian as actor and the patient
in ``detail.on_behalf_of``.

What this module must not do: let a guardian act after the patient removed it or after its
expiry, or for an action or type the registration does not state.
"""

from __future__ import annotations

from typing import Any, Final

from ..stub import ChaincodeError
from .checks import check_ibe, check_int, check_type, json_list
from .context import ADMIN, AUDITOR, GUARDIAN, PATIENT, Caller, TxContext
from .functions import evaluate, submit
from .identities import load_identity
from .keys import K_GUARDIAN

__all__ = ["GUARDIAN_ACTIONS", "Guardians", "guardian_limits", "guardian_problem"]

GUARDIAN_ACTIONS: Final = ("audit", "grant", "revoke")


class Guardians:
    """RegisterGuardian, RemoveGuardian and GetGuardian."""

    @submit
    def RegisterGuardian(
        self, ctx: TxContext, guardian: str, actions: str, types: str, expiry: str
    ) -> Any:
        """A patient registers (or re-registers, replacing the limits) a guardian.

        ``actions``: a JSON list of ``grant``, ``revoke``, ``audit``; ``types``: a JSON list of
        type labels, or "" for every type; ``expiry``: unix seconds after the transaction time.
        """
        caller = ctx.registered(PATIENT)
        assert caller.ibe_id is not None
        entry = guardian_limits(ctx, caller.ibe_id, guardian, actions, types, expiry)
        entry.update({"state": "active", "registered_at": ctx.now})
        ctx.put_json(entry, K_GUARDIAN, caller.ibe_id, guardian)
        ctx.log(
            caller.ibe_id,
            "RegisterGuardian",
            "ok",
            detail={k: entry[k] for k in ("guardian", "actions", "types", "expiry")},
        )
        return entry

    @submit
    def RemoveGuardian(self, ctx: TxContext, guardian: str) -> Any:
        """The patient ends a guardianship; from this commit the guardian acts for it no more."""
        caller = ctx.registered(PATIENT)
        assert caller.ibe_id is not None
        check_ibe(guardian, "guardian")
        entry = ctx.get_json(K_GUARDIAN, caller.ibe_id, guardian)
        if entry is None or entry["state"] != "active":
            raise ChaincodeError(f"identity {guardian} is not a guardian of {caller.ibe_id}")
        entry["state"] = "removed"
        entry["removed_at"] = ctx.now
        ctx.put_json(entry, K_GUARDIAN, caller.ibe_id, guardian)
        ctx.log(caller.ibe_id, "RemoveGuardian", "ok", detail={"guardian": guardian})
        return entry

    @evaluate
    def GetGuardian(self, ctx: TxContext, patient: str, guardian: str) -> Any:
        """A guardianship: the patient, the guardian, auditors and admins may read it."""
        caller = ctx.registered()
        check_ibe(patient, "patient")
        check_ibe(guardian, "guardian")
        if caller.name not in (patient, guardian) and caller.role not in (AUDITOR, ADMIN):
            raise ChaincodeError(f"identity {caller.name} may not read the guardians of {patient}")
        entry = ctx.get_json(K_GUARDIAN, patient, guardian)
        if entry is None:
            raise ChaincodeError(f"identity {guardian} is not a guardian of {patient}")
        return entry


def guardian_problem(
    ctx: TxContext, caller: Caller, patient: str, action: str, record_type: str = ""
) -> str | None:
    """Why ``caller`` may not take ``action`` for ``patient`` (on ``record_type``), or None."""
    entry = ctx.get_json(K_GUARDIAN, patient, caller.name)
    if entry is None or entry["state"] != "active" or caller.role != GUARDIAN:
        return f"identity {caller.name} is not a guardian of {patient}"
    if ctx.now >= int(entry["expiry"]):
        return f"the guardianship of {caller.name} for {patient} expired at {entry['expiry']}"
    if action not in entry["actions"]:
        return f"the guardianship of {caller.name} for {patient} does not allow {action}"
    if record_type and entry["types"] and record_type not in entry["types"]:
        return f"the guardianship of {caller.name} for {patient} does not cover type {record_type}"
    return None


def guardian_limits(
    ctx: TxContext, patient: str, guardian: str, actions: str, types: str, expiry: str
) -> dict[str, Any]:
    """A guardianship's checked limits (RegisterGuardian's and ProposeMinorGuardian's)."""
    ident = load_identity(ctx, guardian)
    if ident["role"] != GUARDIAN:
        raise ChaincodeError(f"identity {guardian} has role {ident['role']}, not guardian")
    wanted = json_list(actions, "actions")
    if not wanted:
        raise ChaincodeError("a guardian needs at least one action")
    for action in wanted:
        if action not in GUARDIAN_ACTIONS:
            raise ChaincodeError(f"action {action!r} is not one of {', '.join(GUARDIAN_ACTIONS)}")
    covered = [check_type(t) for t in json_list(types, "types")]
    exp = check_int(expiry, "expiry", 0, 2**62)
    if exp <= ctx.now:
        raise ChaincodeError(f"expiry {exp} is not after the transaction time {ctx.now}")
    return {
        "patient": patient,
        "guardian": guardian,
        "actions": sorted(set(wanted)),
        "types": sorted(set(covered)),
        "expiry": exp,
    }
