"""A guardian's read of a patient's audit trail is logged before it happens.

Queries are evaluated, never committed, so a read cannot log itself. A guardian therefore
submits :meth:`GuardianReads.LogAuditRead` first: it appends an ``AuditRead`` entry to the
patient's chain (the guardian as actor, the patient in ``detail.on_behalf_of``) and stores a
read id. GetAuditTrail and VerifyAuditTrail serve a guardian only under a read id of its own
for that patient, and only the entries up to and including that read's own entry: whatever a
guardian sees was logged, on the patient's chain, before it could see it. Re-reading under an
old read id shows nothing that was not already shown (docs/security.md).

What this module must not do: serve a guardian any entry written after its logged read, or a
read id of another guardian or another patient.
"""

from __future__ import annotations

from typing import Any

from ..stub import ChaincodeError
from .checks import check_ibe, check_id
from .context import GUARDIAN, Caller, TxContext
from .functions import submit
from .guardians import guardian_problem
from .keys import K_GUARDIAN_READ

__all__ = ["GuardianReads", "guardian_read_limit"]


class GuardianReads:
    """LogAuditRead."""

    @submit
    def LogAuditRead(self, ctx: TxContext, patient: str) -> Any:
        """A guardian logs its read of ``patient``'s audit trail; returns the read id to name
        in GetAuditTrail / VerifyAuditTrail and the last entry it may see (``upto_seq``)."""
        caller = ctx.registered(GUARDIAN)
        check_ibe(patient, "patient")
        problem = guardian_problem(ctx, caller, patient, "audit")
        if problem is not None:
            raise ChaincodeError(problem)
        read_id = "ar-" + ctx.tx_id[:32]
        entry = ctx.log(
            patient,
            "AuditRead",
            "ok",
            detail={"read_id": read_id, "on_behalf_of": patient},
        )
        read = {
            "read_id": read_id,
            "patient": patient,
            "guardian": caller.name,
            "upto_seq": entry["seq"],
            "upto_hash": entry["hash"],
            "logged_at": ctx.now,
        }
        ctx.put_json(read, K_GUARDIAN_READ, read_id)
        return read


def guardian_read_limit(ctx: TxContext, caller: Caller, chain: str, read_id: str) -> dict[str, Any]:
    """The logged read ``read_id`` of ``caller`` (a guardian) on ``chain``: its ``upto_seq``
    and ``upto_hash`` bound what it may be shown."""
    if read_id == "":
        raise ChaincodeError(
            f"identity {caller.name} reads the audit trail of {chain} as a guardian: log the "
            "read first (LogAuditRead) and name its read id"
        )
    check_id(read_id, "read id")
    read = ctx.get_json(K_GUARDIAN_READ, read_id)
    if read is None or read["guardian"] != caller.name or read["patient"] != chain:
        raise ChaincodeError(f"read {read_id} is not a logged read of {chain} by {caller.name}")
    return dict(read)
