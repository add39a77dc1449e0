"""Break-glass emergency access, as each party's session runs it.

The patient sets a policy and pre-grants each of its types to its emergency identity
(:meth:`EmergencyAccess.set_emergency_policy`); a clinician requests
(:meth:`~EmergencyAccess.emergency_request`); hospital admins approve
(:meth:`~EmergencyAccess.approve_emergency`); while the emergency is in force the clinician gets
the emergency identity's key from τ KGC nodes (each checks the chain) and reads under the
pre-grants (:meth:`~EmergencyAccess.read_emergency_record`), every read logged with purpose
``emergency``; the patient (or a guardian) reviews (:meth:`~EmergencyAccess.review_emergency`).
The rules are the chaincode's (docs/chaincode.md, *Emergency access*); this module only
sequences the calls so that each step may be run again after a crash.
"""

from __future__ import annotations

import base64
import datetime as _dt
import logging
from collections.abc import Sequence
from typing import Final

from fhir_core.fhirabstractmodel import FHIRAbstractModel

from ehrshare.contract import Grant, RecordRef
from ehrshare.contract.types import EmergencyPolicy, EmergencyRequest
from ehrshare.faults import fault_point
from ehrshare.hazmat import tipre
from ehrshare.session.access import Sharing
from ehrshare.session.errors import EmergencyKeyRefused, NotInEmergency, RequestRejected
from ehrshare.session.records import Records

_log = logging.getLogger(__name__)

__all__ = ["EmergencyAccess"]

PREGRANT_LIFETIME: Final = _dt.timedelta(days=5 * 365)
"""How long a pre-grant to the emergency identity lasts (setting the policy again renews it)."""


class EmergencyAccess(Records, Sharing):
    """A session's part in break-glass access: policy, request, approval, reads and review."""

    # --- the patient -------------------------------------------------------------------------

    def set_emergency_policy(
        self,
        types: Sequence[str],
        *,
        duration: _dt.timedelta = _dt.timedelta(hours=24),
        approvals: int = 2,
        distinct_hospitals: bool = True,
    ) -> EmergencyPolicy:
        """Set your emergency policy and pre-grant ``types`` to your emergency identity.

        Steps, each safe to repeat: get the emergency identity's key from the KGC nodes (it is
        yours), commit the policy with its type keys, then grant each type to it (a type
        already granted and unexpired is skipped; a type no longer in the policy has its grant
        revoked). A crash between steps leaves a policy whose missing grants the next run makes.
        """
        labels = sorted({self._label(t) for t in types})
        if not labels:
            raise ValueError("an emergency policy names at least one type")
        current = self.chain.get_emergency_policy(self.ibe_id)
        return self._commit_policy(
            labels,
            generation=None,
            identity=current.identity,
            duration=duration,
            approvals=approvals,
            distinct_hospitals=distinct_hospitals,
        )

    def rotate_emergency_identity(self) -> EmergencyPolicy:
        """Move your emergency policy to a new emergency identity (``~emergency-<n+1>``) and
        revoke the pre-grants to the old one: a clinician who was given the old identity's key
        in an emergency can then read nothing new even with a proxy's help. Refused while an
        emergency of the current identity is in force (it would cut off that care). Safe to
        repeat after a crash: a rerun (or ``set_emergency_policy``) finishes the grants."""
        current = self.chain.get_emergency_policy(self.ibe_id)
        if current.default:
            raise RequestRejected(
                "emergency rotation", f"{self.ibe_id} has no emergency policy to rotate"
            )
        now = self._now()
        for request in self.emergency_reviews(pending_only=False):
            if request.identity == current.identity and request.in_force(now):
                raise RequestRejected(
                    "emergency rotation",
                    f"emergency {request.request_id} of {current.identity} is in force until "
                    f"{request.expires_at}; rotate after it expired",
                )
        identity = current.identity.rsplit("-", 1)[0] + f"-{current.generation + 1}"
        return self._commit_policy(
            list(current.labels),
            generation=current.generation + 1,
            identity=identity,
            duration=_dt.timedelta(seconds=current.duration_s),
            approvals=current.approvals,
            distinct_hospitals=current.distinct_hospitals,
        )

    def _commit_policy(
        self,
        labels: list[str],
        *,
        generation: int | None,
        identity: str,
        duration: _dt.timedelta,
        approvals: int,
        distinct_hospitals: bool,
    ) -> EmergencyPolicy:
        sk = self._emergency_key(identity)
        mpk, _ = self._master()
        keys = {
            label: _b64(sk.type_secret(label, 0).public_key(mpk).to_bytes()) for label in labels
        }
        fault_point("emergency_policy.after_extract")
        policy = self.chain.set_emergency_policy(
            labels=labels,
            duration_s=int(duration.total_seconds()),
            approvals=approvals,
            distinct_hospitals=distinct_hospitals,
            type_keys=keys,
            generation=generation,
        )
        fault_point("emergency_policy.after_commit")
        self._pregrant(policy)
        return policy

    def _pregrant(self, policy: EmergencyPolicy) -> None:
        now = self._now()
        held: dict[str, Grant] = {}
        earlier: list[Grant] = []
        mark = f"{self.ibe_id}~emergency-"
        for g in self.grants("owner"):
            if g.state != "active" or g.expiry <= now or not g.grantee.startswith(mark):
                continue
            if g.grantee == policy.identity:
                held.setdefault(g.label, g)
            else:
                earlier.append(g)  # to an emergency identity of an earlier generation
        for g in earlier:
            self.revoke(g)
            fault_point("emergency_policy.after_revoke")
        for label in policy.labels:
            if label in held:
                continue
            name = self.labels.reveal(label) or label
            # The re-key sits at the patient's own hospital's proxy: the emergency identity is
            # no member, so it has no hospital of its own.
            proxy = self._route_for(self.ibe_id, None).ibe_id
            self.grant(policy.identity, name, expires=PREGRANT_LIFETIME, proxy=proxy)
            fault_point("emergency_policy.after_grant")
        for label, g in held.items():
            if label not in policy.labels:
                self.revoke(g)

    def emergency_policy(self, patient: str | None = None) -> EmergencyPolicy:
        """A patient's emergency policy (yours by default), or the consortium default."""
        return self.chain.get_emergency_policy(patient or self.ibe_id)

    def emergency_reviews(
        self, patient: str | None = None, *, pending_only: bool = True
    ) -> list[EmergencyRequest]:
        """The approved emergencies of a patient (yours by default) and their review state;
        with ``pending_only`` only those not yet acknowledged."""
        who = patient or self.ibe_id
        out = []
        for request in self._pages(
            lambda bookmark: self.chain.list_emergencies(who, bookmark=bookmark)
        ):
            if request.status != "approved":
                continue
            if pending_only and request.review != "pending":
                continue
            out.append(request)
        return out

    def review_emergency(self, request_id: str, note: str = "") -> EmergencyRequest:
        """Acknowledge an approved emergency (as the patient, or a guardian allowed ``audit``).

        Safe to repeat: one already acknowledged is returned as it is."""
        try:
            reviewed = self.chain.review_emergency(request_id, note)
            fault_point("emergency_review.after_submit")
            return reviewed
        except RequestRejected as exc:
            if exc.reason != f"emergency {request_id} is already reviewed":
                raise
            return self.chain.get_emergency(request_id)

    # --- the clinician and the admins --------------------------------------------------------

    def emergency_request(self, patient: str, reason: str) -> EmergencyRequest:
        """Ask for emergency access to ``patient``'s records (a clinician), giving a reason."""
        request = self.chain.request_emergency(patient, reason)
        fault_point("emergency_request.after_submit")
        return request

    def approve_emergency(self, request_id: str) -> EmergencyRequest:
        """Approve an emergency request (a hospital admin). Safe to repeat: an approval this
        admin's hospital (or this admin) already gave, or a request already in force, is
        returned as it is."""
        current = self.chain.get_emergency(request_id)
        mine = self.ibe_id in current.approved_by or (
            bool(current.data["policy"].get("distinct_hospitals"))
            and any(a["msp_id"] == self.identity.msp_id for a in current.data["approvals"])
        )
        if current.status == "approved" or mine:
            return current
        fault_point("emergency_approve.before_submit")
        result = self.chain.approve_emergency(request_id)
        fault_point("emergency_approve.after_submit")
        return result

    def emergency(self, request_id: str) -> EmergencyRequest:
        """One emergency request and its approvals."""
        return self.chain.get_emergency(request_id)

    def emergency_records(self, request_id: str) -> list[RecordRef]:
        """The records an emergency in force opens to you (its requester)."""
        out: list[RecordRef] = []
        bookmark = ""
        while True:
            page, _ = self.chain.list_emergency_records(request_id, bookmark=bookmark)
            out.extend(r.ref for r in page.items)
            if not page.bookmark or page.bookmark == bookmark:
                return out
            bookmark = page.bookmark

    def read_emergency_record(
        self, request_id: str, ref: RecordRef | str
    ) -> tuple[RecordRef, FHIRAbstractModel]:
        """Read a record under an emergency in force (you are its requester): RequestAccess
        under the patient's pre-grant (logged with purpose ``emergency``, a denial too), the
        proxy re-encrypts to the emergency identity, opened with its key from τ KGC nodes."""
        record_id = ref.record_id if isinstance(ref, RecordRef) else ref
        request = self.chain.get_emergency(request_id)
        if not request.grants:
            raise NotInEmergency(
                f"{request.patient} has no active pre-grant to its emergency identity "
                f"{request.identity}; emergency {request_id} opens nothing"
            )
        # The record's type is not readable before the read (GetRecord is not open to the
        # requester): try the pre-grants; one of another type is refused unlogged, unchanged.
        for grant_id in sorted(request.grants.values()):
            try:
                # RequestAccess first, so a denial (too few approvals, expired) is logged; the
                # KGC nodes are asked only after an allow.
                return self._read(
                    record_id,
                    grant_id,
                    with_keys=lambda: [self._emergency_key(request.identity)],
                    hints=(request.patient, ""),  # the owner; the label is not known here
                )
            except RequestRejected as exc:
                if exc.reason != f"grant {grant_id} does not cover record {record_id}":
                    raise
        raise NotInEmergency(
            f"record {record_id} is not one emergency {request_id} opens (it opens "
            f"{request.patient}'s records of {len(request.labels)} types)"
        )

    def _emergency_key(self, identity: str) -> tipre.IdentitySecretKey:
        from ehrshare.key_extraction import ExtractionFailed, extract_identity_key

        _, public = self._master()
        try:
            outcome = extract_identity_key(
                self.kgc,
                self.identity,
                self._signer,
                public=public,
                roster=self.roster,
                clock=self._clock,
                for_identity=identity,
            )
        except ExtractionFailed as exc:
            raise EmergencyKeyRefused(
                f"the KGC nodes did not give the key of {identity} to {self.ibe_id}: {exc}"
            ) from None
        return outcome.secret_key


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
