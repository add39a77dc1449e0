"""A minor's guardian, as hospital admins' sessions register it.

A patient who cannot act (a minor) cannot register a guardian. The admin of the hospital that
registered the patient proposes one on chain with its limits; admins of two other hospitals
approve (docs/chaincode.md, *Guardians*; the argument in docs/security.md). Both calls are safe
to run again after a crash. Nothing here gives the guardian a grant: only the patient's key
makes a re-key from the patient (docs/security.md, *A minor's guardian*).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ehrshare.contract.types import Guardianship
from ehrshare.faults import fault_point
from ehrshare.session.access import Sharing
from ehrshare.session.core import Expiry
from ehrshare.session.errors import RequestRejected

_log = logging.getLogger(__name__)

__all__ = ["MinorGuardians"]


class MinorGuardians(Sharing):
    """A session's part in registering a minor's guardian (hospital admins only)."""

    def _current_guardianship(self, patient: str, guardian: str) -> Guardianship | None:
        """The guardianship as it stands, or None where there is none or this member may not
        read it (the call that follows then refuses with the chaincode's reason)."""
        try:
            return self.chain.get_guardian(patient, guardian)
        except RequestRejected as exc:
            if "is not a guardian of" not in exc.reason and "may not read" not in exc.reason:
                raise
            return None

    def propose_minor_guardian(
        self,
        patient: str,
        guardian: str,
        *,
        types: Sequence[str],
        expires: Expiry,
        actions: Sequence[str] = ("audit", "revoke"),
    ) -> Guardianship:
        """As an admin of the hospital that registered ``patient``, propose ``guardian`` for
        it with these limits (``types``: none means every type). It acts from the approval of
        admins of two other hospitals (:meth:`approve_minor_guardian`).

        Safe to run again: an open proposal with the same actions and types, or the
        guardianship it became, is returned as it is."""
        labels = sorted({self._label(t) for t in types})
        current = self._current_guardianship(patient, guardian)
        if (
            current is not None
            and current.kind == "minor"
            and current.actions == tuple(sorted(set(actions)))
            and current.labels == tuple(labels)
            and (
                current.state == "active"
                or (
                    current.state == "proposed"
                    and int(current.data["proposal_expires_at"]) >= self._now()
                )
            )
        ):
            return current
        expiry = self._expiry(expires)
        fault_point("minor_guardian.before_propose")
        entry = self.chain.propose_minor_guardian(
            patient, guardian, actions=actions, labels=labels, expiry=expiry
        )
        _log.info("proposed %s as the guardian of %s", guardian, patient)
        fault_point("minor_guardian.after_propose")
        return entry

    def approve_minor_guardian(self, patient: str, guardian: str) -> Guardianship:
        """As an admin of another hospital, approve a proposed minor's guardian; the second
        hospital's approval makes it act. Safe to run again (returns it as it stands once this
        hospital approved or it took effect)."""
        current = self._current_guardianship(patient, guardian)
        if (
            current is not None
            and current.kind == "minor"
            and (current.state == "active" or self.identity.msp_id in current.approved_by)
        ):
            return current
        fault_point("minor_guardian.before_approve")
        entry = self.chain.approve_minor_guardian(patient, guardian)
        _log.info(
            "approved %s as the guardian of %s (%d hospitals)",
            guardian,
            patient,
            len(entry.approved_by),
        )
        fault_point("minor_guardian.after_approve")
        return entry
