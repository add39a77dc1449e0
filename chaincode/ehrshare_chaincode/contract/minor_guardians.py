"""A minor's guardian: the registering hospital's admin proposes, admins of two other hospitals
approve, and only then does the guardianship take effect.

A patient who cannot act (a minor) cannot sign :meth:`~.guardians.Guardians.RegisterGuardian`.
The admin of the hospital that registered the patient (the patient's MSP), after checking the
family relation out of band, proposes the guardian with its limits; admins of
:data:`MINOR_APPROVALS` other hospitals, one per hospital, approve. The approval that reaches
that count makes the guardianship ``active`` in the same transaction; until then it is
``proposed`` and :func:`~.guardians.guardian_problem` treats the guardian as nobody's. The
stored entry is the ordinary guardianship (same key, same limits) with ``kind: minor``, so
every guardian check applies unchanged, and the patient can remove or replace it once able to
act (docs/security.md, *A minor's guardian*).

What this module must not do: let the registering hospital alone, or one other hospital alone,
make a guardianship effective; count an approval twice; let an approval of a proposal that
lapsed or was replaced take effect.
"""

from __future__ import annotations

from typing import Any, Final

from ..stub import ChaincodeError
from .checks import check_ibe
from .context import ADMIN, PATIENT, TxContext
from .functions import submit
from .guardians import guardian_limits
from .identities import load_identity
from .keys import K_GUARDIAN, K_ORG_CA

__all__ = ["MINOR_APPROVALS", "MINOR_PROPOSAL_TTL_S", "MinorGuardians"]

MINOR_APPROVALS: Final = 2
"""Hospitals other than the registering one whose admins must approve a minor's guardian."""
MINOR_PROPOSAL_TTL_S: Final = 7 * 24 * 3600
"""A proposal not approved within this time is void (propose again)."""


class MinorGuardians:
    """ProposeMinorGuardian and ApproveMinorGuardian (GetGuardian reads either state)."""

    @submit
    def ProposeMinorGuardian(
        self, ctx: TxContext, patient: str, guardian: str, actions: str, types: str, expiry: str
    ) -> Any:
        """The registering hospital's admin proposes ``guardian`` for ``patient`` (a minor).

        The limits are RegisterGuardian's (``actions``, ``types``, ``expiry``). It takes effect
        when admins of :data:`MINOR_APPROVALS` other hospitals have approved it.
        """
        admin = ctx.registered(ADMIN)
        ident = load_identity(ctx, patient)
        if ident["role"] != PATIENT:
            raise ChaincodeError(f"identity {patient} has role {ident['role']}, not patient")
        if ident["msp_id"] != admin.msp_id:
            raise ChaincodeError(
                f"identity {admin.name} is not an admin of {ident['msp_id']}, which registered "
                f"{patient}"
            )
        entry = guardian_limits(ctx, patient, guardian, actions, types, expiry)
        others = [
            kv
            for kv in ctx.stub.get_state_by_partial_composite_key(K_ORG_CA, [])
            if ctx.stub.split_composite_key(kv.key)[1] != [admin.msp_id]
        ]
        if len(others) < MINOR_APPROVALS:
            raise ChaincodeError(
                f"a minor's guardian needs approvals by admins of {MINOR_APPROVALS} other "
                f"hospitals; {len(others)} other hospitals have a registered ca"
            )
        current = ctx.get_json(K_GUARDIAN, patient, guardian)
        if current is not None and current["state"] == "active":
            raise ChaincodeError(f"identity {guardian} is already a guardian of {patient}")
        if current is not None and _open(ctx, current):
            raise ChaincodeError(
                f"a guardianship of {guardian} for {patient} is already proposed; admins of "
                "other hospitals approve it with ApproveMinorGuardian"
            )
        entry.update(
            {
                "state": "proposed",
                "kind": "minor",
                "registering_msp": admin.msp_id,
                "proposed_by": admin.name,
                "proposed_at": ctx.now,
                "proposal_expires_at": ctx.now + MINOR_PROPOSAL_TTL_S,
                "approvals": [],
                "approvals_needed": MINOR_APPROVALS,
            }
        )
        ctx.put_json(entry, K_GUARDIAN, patient, guardian)
        ctx.log(
            patient,
            "ProposeMinorGuardian",
            "ok",
            detail={k: entry[k] for k in ("guardian", "actions", "types", "expiry")},
        )
        return entry

    @submit
    def ApproveMinorGuardian(self, ctx: TxContext, patient: str, guardian: str) -> Any:
        """An admin of another hospital approves a proposed minor's guardian; the approval that
        reaches :data:`MINOR_APPROVALS` hospitals makes it active."""
        admin = ctx.registered(ADMIN)
        check_ibe(patient, "patient")
        check_ibe(guardian, "guardian")
        entry = ctx.get_json(K_GUARDIAN, patient, guardian)
        if entry is None or entry.get("kind") != "minor" or entry["state"] == "removed":
            raise ChaincodeError(f"no guardianship of {guardian} for {patient} was proposed")
        if entry["state"] == "active":
            raise ChaincodeError(f"the guardianship of {guardian} for {patient} is already active")
        if not _open(ctx, entry):
            raise ChaincodeError(
                f"the proposed guardianship of {guardian} for {patient} expired at "
                f"{entry['proposal_expires_at']}; propose it again"
            )
        if admin.msp_id == entry["registering_msp"]:
            raise ChaincodeError(
                f"hospital {admin.msp_id} proposed the guardianship of {guardian} for "
                f"{patient}; admins of other hospitals approve it"
            )
        if any(a["msp_id"] == admin.msp_id for a in entry["approvals"]):
            raise ChaincodeError(
                f"hospital {admin.msp_id} already approved the guardianship of {guardian} for "
                f"{patient}"
            )
        entry["approvals"].append({"admin": admin.name, "msp_id": admin.msp_id, "at": ctx.now})
        count = len(entry["approvals"])
        ctx.log(
            patient,
            "ApproveMinorGuardian",
            "ok",
            detail={"guardian": guardian, "approvals": count},
        )
        if count >= int(entry["approvals_needed"]):
            entry["state"] = "active"
            entry["activated_at"] = ctx.now
            ctx.log(
                patient,
                "MinorGuardianActive",
                "ok",
                detail={
                    "guardian": guardian,
                    "proposed_by": entry["proposed_by"],
                    "approved_by": [a["admin"] for a in entry["approvals"]],
                },
            )
        ctx.put_json(entry, K_GUARDIAN, patient, guardian)
        return entry


def _open(ctx: TxContext, entry: dict[str, Any]) -> bool:
    return entry["state"] == "proposed" and ctx.now <= int(entry["proposal_expires_at"])
