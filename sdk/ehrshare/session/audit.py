"""Audit: the operation log of a patient or a record, and its verification (the chaincode's,
offline, and the ledger's own check where the session was given one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ehrshare.contract import AuditTrail, AuditVerification
from ehrshare.faults import fault_point
from ehrshare.session.core import _PAGE, SessionCore
from ehrshare.session.errors import RequestRejected
from ehrshare_chaincode.auditlog import SYSTEM_CHAIN


class Auditing(SessionCore):
    """A session's audit: reading and verifying the hash-chained operation log."""

    # This identity's role as registered on chain, read once: a registered identity's role
    # never changes (RegisterIdentity refuses an identity or ibe id that is taken), so asking
    # GetIdentity again on every read of another member's log would be a wasted round trip.
    _registered_role: str | None = None

    def audit(self, patient: str | None = None, *, record: str | None = None) -> AuditTrail:
        """The operation log of a patient (yourself by default) or of one record.

        A guardian's read of a patient's log is logged on that log first (LogAuditRead), and
        shows the entries up to that read; a guardian names the patient of a record's log."""
        if record is not None:
            read_id = self._audit_read(patient, record=record)
            entries = list(
                self._pages(
                    lambda bookmark: self.chain.get_audit_trail(
                        "record", record, page_size=_PAGE, bookmark=bookmark, read_id=read_id
                    )
                )
            )
            chain = entries[0]["chain"] if entries else ""
            return AuditTrail(chain, tuple(entries), record)
        chain = patient or self.ibe_id
        return self._trail(chain, self._audit_read(chain))

    def _trail(self, chain: str, read_id: str) -> AuditTrail:
        pages = self._pages(
            lambda bookmark: self.chain.get_audit_trail(
                "patient", chain, page_size=_PAGE, bookmark=bookmark, read_id=read_id
            )
        )
        return AuditTrail(chain, tuple(pages))

    def _audit_read(self, chain: str | None, *, record: str | None = None) -> str:
        """The read id to read ``chain`` under: "" unless this session is a guardian reading
        another member's log, whose read is logged first (:meth:`EhrContract.log_audit_read`)."""
        if chain == self.ibe_id or chain == SYSTEM_CHAIN:
            return ""
        if self._registered_role is None:
            self._registered_role = self.chain.get_identity(self.ibe_id).role
        if self._registered_role != "guardian":
            return ""
        if chain is None:
            raise RequestRejected(
                "GetAuditTrail",
                f"as a guardian, name the patient whose record {record} you read the log of "
                "(audit show --patient)",
            )
        fault_point("guardian.before_audit_read")
        read = self.chain.log_audit_read(chain)
        fault_point("guardian.after_audit_read")
        return read.read_id

    def verify_audit(
        self,
        patient: str | None = None,
        *,
        trail: AuditTrail | None = None,
        against: Sequence[Any] = (),
    ) -> AuditVerification:
        """Verify a patient's hash-chained log: the chaincode's recomputation, an offline
        recomputation of the entries as downloaded (or of ``trail``, e.g. an exported copy),
        and the whole ledger where the session was given its check (a consortium's sessions
        are): on the embedded backend signed blocks, a replay of every transaction, history and
        state; on Fabric every peer organisation's copy of the blocks, compared
        (:func:`~ehrshare.ledger.fabric_blocks.verify_copies`); ``against``: witnessed heads,
        :class:`~ehrshare.ledger.witness.SignedHead`."""
        from ehrshare_chaincode.auditlog import verify_entries

        chain = trail.chain if trail is not None else (patient or self.ibe_id)
        read_id = self._audit_read(chain)
        server = self.chain.verify_audit_trail(chain, read_id).to_dict()
        entries = list(trail.entries if trail is not None else self._trail(chain, read_id).entries)
        head = (
            {"seq": server["length"], "hash": server["head"]}
            if server.get("valid")
            else ({"seq": len(entries), "hash": entries[-1].get("hash")} if entries else None)
        )
        offline = verify_entries(chain, entries, head)
        checks: dict[str, Any] = {"chaincode": server, "offline": offline}
        problems = [(r["first_bad_seq"], r["reason"]) for r in (server, offline) if not r["valid"]]
        if self._ledger_check is not None:
            try:
                report = self._ledger_check(against=tuple(against), audit_chains=(chain,))
                checks["ledger"] = {"valid": True, **report}
            except Exception as exc:
                block = getattr(exc, "block", None)
                checks["ledger"] = {"valid": False, "reason": str(exc), "first_bad_block": block}
                problems.append((0, f"ledger integrity: {exc}"))
        elif against:
            reason = "witnessed heads can be checked on the embedded ledger only"
            checks["ledger"] = {"valid": False, "reason": reason}
            problems.append((0, reason))
        valid = not problems
        first = min((s for s, _ in problems if s), default=0)
        reason = "; ".join(dict.fromkeys(r for _, r in problems))
        return AuditVerification(chain, valid, len(entries), first, reason, checks)
