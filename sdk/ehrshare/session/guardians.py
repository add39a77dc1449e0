"""Guardians: a patient registers a member with role ``guardian``; the guardian grants, revokes
and reads the audit trail for the patient within the limits the registration states.

Granting for the patient is a forward of a grant the patient gave the guardian (only the
patient's key makes a re-key from the patient): :meth:`Guardians.add_guardian` registers the
guardianship on chain and, when it includes ``grant``, gives the guardian a grant with hops to
spare for each type it covers; :meth:`Guardians.grant_for` forwards it. Revoking and reading
the audit trail for the patient are the ordinary :meth:`revoke` and :meth:`audit`, which the
chaincode allows a guardian within its limits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ehrshare.contract.types import Grant, Guardianship
from ehrshare.faults import fault_point
from ehrshare.session.access import Sharing
from ehrshare.session.core import Expiry
from ehrshare.session.errors import RequestRejected

_log = logging.getLogger(__name__)

__all__ = ["GUARDIAN_HOPS", "Guardians"]

GUARDIAN_HOPS = 1
"""Hops a guardian's own grant leaves for the grants it makes for the patient (forwards)."""


class Guardians(Sharing):
    """A session's guardian verbs: the patient's (add, remove) and the guardian's (grant_for)."""

    def add_guardian(
        self,
        guardian: str,
        *,
        types: Sequence[str],
        expires: Expiry,
        actions: Sequence[str] = ("grant", "revoke", "audit"),
    ) -> Guardianship:
        """Register ``guardian`` for your records of ``types`` (type names) with ``actions``
        until ``expires``; with ``grant``, also give it a grant of each type it forwards from.

        Safe to run again (it replaces the limits and skips grants the guardian already holds).
        """
        labels = [self._label(t) for t in types]
        expiry = self._expiry(expires)
        entry = self.chain.register_guardian(
            guardian, actions=actions, labels=labels, expiry=expiry
        )
        fault_point("guardian.after_register")
        if "grant" in actions:
            held = {
                g.label
                for g in self.grants("owner")
                if g.grantee == guardian and g.state == "active" and g.max_hops >= GUARDIAN_HOPS
            }
            for name, label in zip(types, labels, strict=True):
                if label not in held:
                    self.grant(guardian, name, expires=expiry, max_hops=GUARDIAN_HOPS)
        return entry

    def remove_guardian(self, guardian: str) -> Guardianship:
        """End a guardianship and revoke every grant you gave the guardian (and so every grant
        it made for you, which hang below them). Safe to run again: a guardianship already
        removed (a run killed before its revocations) has its grants revoked."""
        current = self.chain.get_guardian(self.ibe_id, guardian)
        entry = current if current.state == "removed" else self.chain.remove_guardian(guardian)
        fault_point("guardian.after_remove")
        for g in self.grants("owner"):
            if g.grantee == guardian and g.state == "active" and g.hop == 0:
                self.revoke(g)
        return entry

    def guardianship(self, patient: str, guardian: str) -> Guardianship:
        """A guardianship as registered on chain."""
        return self.chain.get_guardian(patient, guardian)

    def grant_for(
        self, patient: str, grantee: str, type: str, *, expires: Expiry | None = None
    ) -> Grant:
        """As ``patient``'s guardian, grant ``grantee`` access to the patient's records of
        ``type`` (a forward of the patient's grant to you; refused beyond your limits)."""
        label = self._label(type)
        now = self._now()
        for g in self.grants("grantee"):
            if (
                g.owner == patient
                and g.label == label
                and g.hop == 0
                and g.state == "active"
                and g.expiry > now
                and g.max_hops >= 1
            ):
                return self.forward(g, grantee, expires=expires)
        raise RequestRejected(
            "GrantAccess",
            f"{patient} gave you no grant of type {type} to grant from (the patient's "
            "add_guardian gives one when the guardianship includes grant)",
        )
