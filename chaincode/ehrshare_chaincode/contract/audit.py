"""The operation log's reads and the state digest: GetAuditTrail, VerifyAuditTrail, StateDigest.

Appending to the log is :meth:`.context.TxContext.log`; the hash rule is :mod:`..auditlog`,
shared with the client's offline check.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .. import canonical
from ..auditlog import SYSTEM_CHAIN, verify_entries
from ..stub import ChaincodeError
from .checks import check_bookmark, check_ibe, check_page_size
from .context import ADMIN, AUDITOR, GUARDIAN, Caller, TxContext
from .functions import evaluate
from .guardian_reads import guardian_read_limit
from .guardians import guardian_problem
from .keys import K_LOG, K_LOG_BY_RECORD, K_LOG_HEAD, STATE_TYPES
from .records import load_record

__all__ = ["Audit"]


class Audit:
    """GetAuditTrail, StateDigest and VerifyAuditTrail."""

    def _may_audit(
        self, ctx: TxContext, caller: Caller, chain: str, read_id: str = ""
    ) -> int | None:
        """Refuse a caller who may not read ``chain``; for a guardian, the last entry it may
        see (its logged read's own, :mod:`.guardian_reads`), else None (no bound)."""
        if caller.role == AUDITOR or caller.name == chain:
            return None
        if chain == SYSTEM_CHAIN and caller.role == ADMIN:
            return None
        if caller.role == GUARDIAN and chain != SYSTEM_CHAIN:
            problem = guardian_problem(ctx, caller, chain, "audit")
            if problem is not None and problem.startswith("the guardianship"):
                raise ChaincodeError(problem)
            if problem is None:
                return int(guardian_read_limit(ctx, caller, chain, read_id)["upto_seq"])
        raise ChaincodeError(f"identity {caller.name} may not read the audit trail of {chain}")

    @evaluate
    def GetAuditTrail(
        self,
        ctx: TxContext,
        kind: str,
        subject: str,
        page_size: str = "",
        bookmark: str = "",
        read_id: str = "",
    ) -> Any:
        """One page of the operation log of a patient (kind ``patient``) or a record.

        A guardian names the read id of its logged read (LogAuditRead) and sees the entries up
        to that read's own entry."""
        caller = ctx.registered()
        size = check_page_size(page_size)
        if kind == "patient":
            if subject != SYSTEM_CHAIN:
                check_ibe(subject, "patient")
            upto = self._may_audit(ctx, caller, subject, read_id)
            check_bookmark(bookmark, K_LOG, subject)
            rows, next_bm = ctx.stub.get_state_by_partial_composite_key_with_pagination(
                K_LOG, [subject], size, bookmark
            )
            entries = [canonical.loads(kv.value, "stored log entry") for kv in rows]
        elif kind == "record":
            record = load_record(ctx, subject)
            upto = self._may_audit(ctx, caller, record["owner"], read_id)
            entries, next_bm = ctx.index_page(K_LOG_BY_RECORD, subject, K_LOG, page_size, bookmark)
        else:
            raise ChaincodeError(f"audit trail kind {kind!r} is not patient or record")
        if upto is not None and any(int(e["seq"]) > upto for e in entries):
            # Entries come in sequence order: nothing after the logged read, and no next page.
            entries, next_bm = [e for e in entries if int(e["seq"]) <= upto], ""
        return {"entries": entries, "bookmark": next_bm}

    @evaluate
    def StateDigest(self, ctx: TxContext) -> Any:
        """SHA-256 over every key and value of this contract's world state, in key order, and
        the number of keys: equal on every peer at the same height. Blocks are signed and
        compared across organisations; a peer's state database is not, and queries are read
        from it, so ``ledger verify`` compares this digest across the organisations' peers to
        catch a hand edit of one peer's state. Any registered member; it reveals nothing but
        the count of keys."""
        ctx.registered()
        digest = hashlib.sha256()
        count = 0
        for object_type in STATE_TYPES:
            for kv in ctx.stub.get_state_by_partial_composite_key(object_type, []):
                value = kv.value if isinstance(kv.value, bytes) else str(kv.value).encode()
                digest.update(len(kv.key).to_bytes(4, "big") + kv.key.encode("utf-8"))
                digest.update(len(value).to_bytes(4, "big") + value)
                count += 1
        return {"sha256": digest.hexdigest(), "keys": count}

    @evaluate
    def VerifyAuditTrail(self, ctx: TxContext, chain: str, read_id: str = "") -> Any:
        """Recompute a chain's hashes and links against its head (a guardian: up to its logged
        read's own entry, named by ``read_id``)."""
        caller = ctx.registered()
        if chain != SYSTEM_CHAIN:
            check_ibe(chain, "patient")
        upto = self._may_audit(ctx, caller, chain, read_id)
        rows = ctx.stub.get_state_by_partial_composite_key(K_LOG, [chain])
        entries = [canonical.loads(kv.value, "stored log entry") for kv in rows]
        head = ctx.get_json(K_LOG_HEAD, chain)
        if upto is not None:
            read = guardian_read_limit(ctx, caller, chain, read_id)
            entries = [e for e in entries if int(e["seq"]) <= upto]
            head = {"chain": chain, "seq": upto, "hash": read["upto_hash"]}
        return verify_entries(chain, entries, head)
