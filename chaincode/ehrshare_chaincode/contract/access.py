"""Access decisions and the proxies' side: RequestAccess, CheckApproval, ReportReencryption.

A decision is made at the transaction's time and always committed (a denial is logged too); only
an allowed one writes the approval a proxy checks before re-encrypting.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from .. import canonical
from ..stub import ChaincodeError, create_composite_key
from .checks import SHA256_RE, check_id, check_int
from .context import AUDITOR, PROXY, TxContext
from .emergency import emergency_problem, is_emergency_identity
from .functions import evaluate, prepare, reads, submit
from .grants import grant_problem, load_grant, valid_grant
from .keys import (
    K_ACCESS,
    K_APPROVAL,
    K_EMERGENCY,
    K_GRANT,
    K_GRANT_MATCH,
    K_LOG_HEAD,
    K_RECORD,
    K_REENCRYPTION,
    seq,
)
from .records import load_record

__all__ = ["Access"]


def _follow_hints(
    ctx: TxContext, _record_id: str, grant_id: str = "", owner: str = "", record_type: str = ""
) -> None:
    """RequestAccess's hints, followed before the caller is read (``functions.prepare``).

    The owner's log head is read by every RequestAccess; with ``record_type`` and no named grant
    the grant-match scan of (owner, type, the caller's likely IBE identity) runs now, its answer
    kept in ``ctx.scanned`` for :func:`~.grants.valid_grant`, which uses it only when the record
    and the caller turn out to give the same prefix, and its first grant (the one the grant walk
    reads first) is declared. Skipped when the likely caller is the owner (the owner's read
    scans no grants) or a hint holds a reserved character.
    """
    if not owner:
        return
    keys: list[tuple[str, ...]] = [(K_LOG_HEAD, owner)]
    grantee = ctx.likely_ibe_id()
    if not grant_id and record_type and grantee is not None and grantee != owner:
        prefix = [owner, record_type, grantee]
        try:
            create_composite_key(K_GRANT_MATCH, prefix)
        except ChaincodeError:
            prefix = []
        if prefix:
            rows = ctx.stub.get_state_by_partial_composite_key(K_GRANT_MATCH, prefix)
            ctx.scanned[(K_GRANT_MATCH, *prefix)] = rows
            if rows:
                keys.append((K_GRANT, ctx.stub.split_composite_key(rows[0].key)[1][3]))
    ctx.prefetch(*keys)


class Access:
    """RequestAccess, CheckApproval and ReportReencryption."""

    @staticmethod
    def _grant_chain(walked: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The hops of a forwarding chain walked leaf first, root first: grant id and proxy."""
        return [{"grant_id": g["grant_id"], "proxy": g["proxy"]} for g in reversed(walked)]

    @submit
    @reads(
        lambda record_id, grant_id="", _owner="", _record_type="": (
            [(K_RECORD, record_id)] + [(K_GRANT, grant_id)] * bool(grant_id)
        )
    )
    @prepare(_follow_hints)
    def RequestAccess(
        self,
        ctx: TxContext,
        record_id: str,
        grant_id: str = "",
        owner: str = "",
        record_type: str = "",
    ) -> Any:
        """Decide a request to read a record at the transaction's time, and log it either way.

        A denial is a successful transaction with ``decision: deny``: the attempt is audit-worthy
        and grants nothing. Only an allowed decision creates the approval the proxy checks.
        ``grant_id`` names the grant the requester reads under (its re-keys sit at the proxies
        that grant's chain names); without it the first valid grant in key order is used. A
        named grant that is not the caller's or does not cover the record is an error. An
        allowed answer also carries ``record``, the record pointer decided on.

        ``owner`` and ``record_type`` are optional hints — the record's owner and type as the
        requester already knows them (an SDK ``RecordRef``) — that only save round trips to a
        Fabric >= 3.1 peer: the owner's log head, and without ``grant_id`` the grant-match scan
        and its first grant, are fetched with the caller's identity and the record. Nothing is
        decided on them: the record read decides, and a wrong hint only adds a key or a range
        to the read set (docs/chaincode.md, "Hints").
        """
        caller = ctx.registered()
        assert caller.ibe_id is not None
        record = load_record(ctx, record_id)
        owner = record["owner"]  # the record decides; the hint only fetched ahead
        ctx.prefetch((K_LOG_HEAD, owner))  # read with the grant walk's first key
        epoch = str(record.get("epoch", ""))
        t_epoch = int(record.get("type_epoch", 0))
        grant: dict[str, Any] | None
        named: dict[str, Any] | None = None
        walked: list[dict[str, Any]] = []  # the decided grant's chain, leaf first
        emergency: dict[str, Any] | None = None
        emergency_why: str | None = None
        if grant_id != "":
            named = load_grant(ctx, grant_id)
            if is_emergency_identity(str(named["grantee"])) and caller.ibe_id != owner:
                # A read under a patient's emergency grant (emergency.py): only while the
                # caller's own emergency is in force.
                emergency, emergency_why = emergency_problem(ctx, caller, named)
            elif named["grantee"] != caller.ibe_id:
                raise ChaincodeError(
                    f"identity {caller.name} is not the grantee of grant {grant_id}"
                )
            if named["owner"] != owner or named["type"] != record["type"]:
                raise ChaincodeError(f"grant {grant_id} does not cover record {record_id}")
        if caller.ibe_id == owner:
            grant, reason, grant_id, hop = None, "owner", "owner", 0
            decision = "allow"
        else:
            if emergency_why is not None:
                grant, reason = None, emergency_why
            elif named is not None:
                problem = grant_problem(ctx, named, walked, epoch, t_epoch)
                grant, reason = (named, "") if problem is None else (None, problem)
            else:
                grant, reason = valid_grant(
                    ctx, owner, record["type"], caller.ibe_id, walked, epoch, t_epoch
                )
            decision = "allow" if grant is not None else "deny"
            grant_id = grant["grant_id"] if grant is not None else ""
            hop = int(grant["hop"]) if grant is not None else 0
            if grant is not None:
                reason = "grant"
        access_id = "a-" + ctx.tx_id[:32]
        access = {
            "access_id": access_id,
            "record_id": record_id,
            "record_version": record["version"],
            "capsule_sha256": hashlib.sha256(base64.b64decode(record["capsule"])).hexdigest(),
            "owner": owner,
            "type": record["type"],
            "type_epoch": t_epoch,
            "requester": caller.ibe_id,
            "decision": decision,
            "reason": reason,
            "grant_id": grant_id,
            "hop": hop,
            "chain": self._grant_chain(walked) if grant is not None else [],
            "at": ctx.now,
            "tx_id": ctx.tx_id,
        }
        purpose: dict[str, Any] = {}
        if named is not None and is_emergency_identity(str(named["grantee"])):
            purpose = {"purpose": "emergency"}
            if emergency is not None:
                purpose["emergency_id"] = emergency["request_id"]
            access |= purpose
        ctx.put_json(access, K_ACCESS, access_id)
        if decision == "allow":
            ctx.put_json(access, K_APPROVAL, access_id)
        ctx.log(
            owner,
            "RequestAccess",
            "requested",
            record_id=record_id,
            detail={"requester": caller.ibe_id, "access_id": access_id} | purpose,
        )
        ctx.log(
            owner,
            "AccessDecision",
            decision,
            record_id=record_id,
            grant_id=grant_id,
            detail={"requester": caller.ibe_id, "access_id": access_id, "reason": reason} | purpose,
        )
        if decision == "allow":
            # The pointer the requester may now read (the version decided on), returned but not
            # stored: the reader needs its CID and capsule and need not ask GetRecord for it.
            return access | {"record": record}
        return access

    @evaluate
    @reads(lambda access_id: [(K_APPROVAL, access_id)])
    def CheckApproval(self, ctx: TxContext, access_id: str) -> Any:
        """For the proxy: the committed approval ``access_id`` (what RequestAccess returned).

        Approvals are keyed by access id, so concurrent requests of one record by one member
        each get their own. The approval must still stand now: a grant revoked or expired since
        then fails. A proxy may check only an approval whose grant chain names it (it holds one
        of the chain's re-keys). The answer carries the re-encryptions reported so far
        (``reports``: hops applied, proxy, output capsule hash), so the proxy of a later hop can
        check the partly re-encrypted capsule it is given. The proxy compares record,
        requester, grant and capsule hash itself and enforces single use.
        """
        caller = ctx.registered(PROXY, AUDITOR)
        check_id(access_id, "access id")
        access = ctx.get_json(K_APPROVAL, access_id)
        if access is None:
            raise ChaincodeError(f"access {access_id} has no committed approval")
        if caller.role == PROXY:
            self._require_named_proxy(access, caller.name)
        grant_id = str(access["grant_id"])
        if grant_id != "owner":
            problem = grant_problem(ctx, load_grant(ctx, grant_id))
            if problem is not None:
                raise ChaincodeError(problem)
        if access.get("emergency_id"):
            # An emergency read stands only while its emergency is in force (emergency.py).
            emergency = ctx.get_json(K_EMERGENCY, str(access["emergency_id"]))
            if emergency is None or ctx.now >= int(emergency["expires_at"]):
                raise ChaincodeError(f"emergency {access['emergency_id']} has expired")
        rows = ctx.stub.get_state_by_partial_composite_key(K_REENCRYPTION, [access_id])
        reports = [canonical.loads(kv.value, "stored re-encryption report") for kv in rows]
        return dict(access) | {"reports": reports}

    def _require_named_proxy(self, access: dict[str, Any], proxy: str) -> None:
        if not any(hop.get("proxy") == proxy for hop in access.get("chain", [])):
            raise ChaincodeError(f"no grant of access {access['access_id']} names proxy {proxy}")

    @submit
    def ReportReencryption(
        self,
        ctx: TxContext,
        access_id: str,
        outcome: str,
        detail: str = "",
        applied: str = "",
        capsule_sha256: str = "",
    ) -> Any:
        """The proxy reports a re-encryption it performed (or refused) for an access.

        A proxy named by the access's grant chain reports; with ``applied`` (how many hops the
        capsule it released carries) and ``capsule_sha256`` (that capsule's hash) the report is
        kept, once per hop count, for the proxy of the next hop to check its input against.
        """
        caller = ctx.registered(PROXY)
        check_id(access_id, "access id")
        if outcome not in ("ok", "failed"):
            raise ChaincodeError(f"outcome {outcome!r} is not ok or failed")
        if len(detail) > 256:
            raise ChaincodeError("detail is longer than 256 characters")
        access = ctx.get_json(K_ACCESS, access_id)
        if access is None:
            raise ChaincodeError(f"access {access_id} does not exist")
        if access["decision"] != "allow":
            raise ChaincodeError(f"access {access_id} was denied")
        self._require_named_proxy(access, caller.name)
        log_detail: dict[str, Any] = {"access_id": access_id, "proxy": caller.name, "note": detail}
        if applied != "" or capsule_sha256 != "":
            chain = access["chain"]
            n = check_int(applied, "applied hops", 1, len(chain))
            if outcome != "ok":
                raise ChaincodeError("only an ok re-encryption reports applied hops")
            if not SHA256_RE.fullmatch(capsule_sha256):
                raise ChaincodeError("capsule sha256 must be 64 lower-case hex digits")
            if chain[n - 1]["proxy"] != caller.name:
                raise ChaincodeError(
                    f"hop {n} of access {access_id} is for proxy {chain[n - 1]['proxy']}, not "
                    f"{caller.name}"
                )
            if ctx.stub.get_state(ctx.key(K_REENCRYPTION, access_id, seq(n))) is not None:
                raise ChaincodeError(f"hop {n} of access {access_id} was already reported")
            report = {
                "access_id": access_id,
                "applied": n,
                "proxy": caller.name,
                "capsule_sha256": capsule_sha256,
                "tx_id": ctx.tx_id,
            }
            ctx.put_json(report, K_REENCRYPTION, access_id, seq(n))
            log_detail |= {"applied": n, "capsule_sha256": capsule_sha256}
        entry = ctx.log(
            access["owner"],
            "ReportReencryption",
            outcome,
            record_id=access["record_id"],
            grant_id=access["grant_id"],
            detail=log_detail,
        )
        return entry
