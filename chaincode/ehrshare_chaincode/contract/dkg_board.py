"""The DKG board: bundles posted per phase, phases closed by committed transactions, sessions
aborted when the chain shows they cannot finish, and results final at τ agreeing views.

Phases close by a committed CloseDKGPhase (every roster node posted, or the phase timed out by
transaction time), and every post reads the session record a close writes, so MVCC orders a late
post against the close: all nodes read the same closed set. The result is final once τ roster
nodes posted byte-identical views.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from .. import canonical
from ..auditlog import SYSTEM_CHAIN
from ..stub import ChaincodeError
from .checks import check_b64, check_ibe, check_version, json_list
from .context import ADMIN, KGC, TxContext
from .dkg_sessions import (
    DKG_DONE,
    DKG_FAILED,
    DKG_HEADER_SIZE,
    DKG_PHASES,
    MAX_DKG_BUNDLE_BYTES,
    MAX_MPK_BYTES,
    check_bundle_header,
    check_nonce,
    check_phase,
    check_reason,
    dealer_threshold,
    dkg_posters,
    failed_message,
    is_reshare,
    load_dkg_session,
    phase_senders,
    takes_part,
    view_counts,
)
from .functions import evaluate, submit
from .keys import K_DKG, K_DKG_LATEST, K_DKG_RESULT, K_DKG_SESSION, K_DKG_VIEW

__all__ = ["DkgBoard"]


class DkgBoard:
    """PostDKGBundle, CloseDKGPhase, AbortDKGSession, GetDKGBundles and the DKG results."""

    @staticmethod
    def _phase_must_be_open(session: dict[str, Any], phase: str) -> None:
        current = session["phase"]
        if current == phase:
            return
        nonce = session["nonce"]
        if current == DKG_FAILED:
            raise ChaincodeError(failed_message(session))
        if current == DKG_DONE or DKG_PHASES.index(phase) < DKG_PHASES.index(current):
            raise ChaincodeError(f"{phase} phase of dkg session {nonce} is closed")
        raise ChaincodeError(
            f"{phase} phase of dkg session {nonce} is not open yet; the open phase is {current}"
        )

    @submit
    def PostDKGBundle(
        self, ctx: TxContext, nonce: str, phase: str, bundle_b64: str, format_version: str
    ) -> Any:
        """A roster node posts its deal, response or justification bundle in the open phase.

        The bundle's header must name this session, this phase and the poster's own roster
        position as sender (the chain binds a sender index to the identity that posts it).
        """
        caller = ctx.registered(KGC)
        assert caller.ibe_id is not None
        check_nonce(nonce)
        check_phase(phase)
        check_b64(bundle_b64, "dkg bundle", MAX_DKG_BUNDLE_BYTES)
        version = check_version(format_version)
        # Read before anything else that may fail late: this read is what makes a post conflict
        # (MVCC) with a close of its phase that commits first.
        session = load_dkg_session(ctx, nonce)
        senders = phase_senders(session, phase)
        if caller.ibe_id not in senders:
            if is_reshare(session):
                who = "the new committee" if phase == DKG_PHASES[1] else "the dealers"
                raise ChaincodeError(
                    f"kgc {caller.ibe_id} is not in {who} of reshare session {nonce}; "
                    f"{phase} bundles come from {who}"
                )
            raise ChaincodeError(f"kgc {caller.ibe_id} is not in the roster of dkg session {nonce}")
        self._phase_must_be_open(session, phase)
        position = senders.index(caller.ibe_id) + 1
        check_bundle_header(base64.b64decode(bundle_b64), nonce, phase, position, caller.ibe_id)
        if ctx.stub.get_state(ctx.key(K_DKG, nonce, phase, caller.ibe_id)) is not None:
            raise ChaincodeError(
                f"kgc {caller.ibe_id} already posted a {phase} bundle for session {nonce}"
            )
        bundle = {
            "nonce": nonce,
            "phase": phase,
            "poster": caller.ibe_id,
            "sender": position,
            "bundle": bundle_b64,
            "format_version": version,
            "posted_at": ctx.now,
            "tx_id": ctx.tx_id,
        }
        ctx.put_json(bundle, K_DKG, nonce, phase, caller.ibe_id)
        ctx.log(
            SYSTEM_CHAIN,
            "PostDKGBundle",
            "ok",
            detail={"nonce": nonce, "phase": phase, "sender": position},
        )
        return {k: v for k, v in bundle.items() if k != "bundle"}

    @submit
    def CloseDKGPhase(self, ctx: TxContext, nonce: str, phase: str) -> Any:
        """Close the open phase once every roster node posted in it or its timeout passed
        (by transaction time); the next phase opens. Bundles of a closed phase are refused.

        The justification phase also closes once every accused dealer posted: only dealers
        named in a complaint post in it, so waiting for all n would always mean the timeout.
        """
        caller = ctx.registered()
        check_nonce(nonce)
        check_phase(phase)
        session = load_dkg_session(ctx, nonce)
        if caller.role != ADMIN and not takes_part(session, caller.ibe_id):
            raise ChaincodeError(
                f"identity {caller.name} may not close phases of dkg session {nonce}: "
                "it is neither in the roster nor an admin"
            )
        self._phase_must_be_open(session, phase)
        posters = dkg_posters(ctx, nonce, phase)
        n = len(phase_senders(session, phase))
        deadline = int(session["phase_opened_at"]) + int(session["phase_timeout_s"])
        timed_out = len(posters) < n and ctx.now >= deadline
        if len(posters) < n and not timed_out:
            waiting = (
                sorted(set(self._accused(ctx, session)) - set(posters))
                if phase == DKG_PHASES[2]
                else None
            )
            if waiting is None:
                raise ChaincodeError(
                    f"{phase} phase of dkg session {nonce} cannot close yet: {len(posters)} of "
                    f"{n} roster nodes posted and its timeout ends at {deadline}"
                )
            if waiting:
                raise ChaincodeError(
                    f"{phase} phase of dkg session {nonce} cannot close yet: accused dealers "
                    f"{', '.join(waiting)} have not posted and its timeout ends at {deadline}"
                )
        updated = self._end_phase(ctx, session, caller.name, posters=posters, timed_out=timed_out)
        ctx.log(
            SYSTEM_CHAIN,
            "CloseDKGPhase",
            "ok",
            detail={"nonce": nonce, "phase": phase, "posters": len(posters)},
        )
        return updated

    def _end_phase(
        self,
        ctx: TxContext,
        session: dict[str, Any],
        closed_by: str,
        *,
        posters: list[str] | None = None,
        by_result: bool = False,
        timed_out: bool = False,
    ) -> dict[str, Any]:
        """Write the session with its open phase closed and the next one (or done) open."""
        phase = session["phase"]
        nonce = session["nonce"]
        if posters is None:
            posters = dkg_posters(ctx, nonce, phase)
        following = DKG_PHASES.index(phase) + 1
        closed = {
            "phase": phase,
            "closed_at": ctx.now,
            "closed_by": closed_by,
            "posters": sorted(posters),
            "timed_out": timed_out,
            "by_result": by_result,
        }
        updated = dict(session)
        updated.update(
            {
                "phase": DKG_PHASES[following] if following < len(DKG_PHASES) else DKG_DONE,
                "phase_opened_at": ctx.now,
                "closed": [*session["closed"], closed],
            }
        )
        if by_result:
            updated["phase"] = DKG_DONE
        ctx.put_json(updated, K_DKG_SESSION, nonce)
        return updated

    def _accused(self, ctx: TxContext, session: dict[str, Any]) -> list[str]:
        """Dealers that some response of the (closed) response phase did not accept.

        Reads only the response layout after the header (u16 n, then n status bytes; 0 is
        accepted) and counts every structurally whole response, signed validly or not, and
        every dealer that posted a deal. Nodes count only verified ones, so this set is a
        superset of theirs: an error here can only make the phase wait for its timeout, never
        close it before a dealer the nodes expect had its say.
        """
        nonce = session["nonce"]
        roster: list[str] = session["roster"]
        dealer_list = phase_senders(session, DKG_PHASES[0])
        dealers = set(dkg_posters(ctx, nonce, DKG_PHASES[0]))
        accused: set[str] = set()
        for kv in ctx.stub.get_state_by_partial_composite_key(K_DKG, [nonce, DKG_PHASES[1]]):
            row = canonical.loads(kv.value, "stored dkg bundle")
            raw = base64.b64decode(row["bundle"])
            if len(raw) < DKG_HEADER_SIZE + 2:
                continue
            count = int.from_bytes(raw[DKG_HEADER_SIZE : DKG_HEADER_SIZE + 2], "big")
            statuses = raw[DKG_HEADER_SIZE + 2 : DKG_HEADER_SIZE + 2 + count]
            if len(statuses) != count:
                continue
            responder = roster.index(row["poster"]) + 1
            for dealer, status in enumerate(statuses[: len(dealer_list)], start=1):
                if status == 0 or dealer_list[dealer - 1] not in dealers:
                    continue
                if dealer != responder or is_reshare(session):
                    accused.add(dealer_list[dealer - 1])
        return sorted(accused)

    @submit
    def AbortDKGSession(self, ctx: TxContext, nonce: str, reason: str) -> Any:
        """Mark a session that can no longer finish as failed (a roster node or an admin).

        Allowed only when the chain itself shows the session cannot finish: the deal phase
        closed with fewer than τ dealers (QUAL is a subset of them), or so many views disagree
        that no view can reach τ any more, or every phase closed and the result phase's timeout
        passed without τ agreeing views. The caller's ``reason`` is kept beside the chain's
        ``cause``; the session then refuses bundles, closes and views.
        """
        caller = ctx.registered()
        check_nonce(nonce)
        check_reason(reason)
        session = load_dkg_session(ctx, nonce)
        if caller.role != ADMIN and not takes_part(session, caller.ibe_id):
            raise ChaincodeError(
                f"identity {caller.name} may not abort dkg session {nonce}: it is neither in "
                "the roster nor an admin"
            )
        if session["phase"] == DKG_FAILED:
            raise ChaincodeError(failed_message(session))
        if ctx.stub.get_state(ctx.key(K_DKG_RESULT, nonce)) is not None:
            raise ChaincodeError(f"dkg session {nonce} has a final result; it cannot be aborted")
        cause = self._abort_cause(ctx, session)
        failure = {
            "cause": cause,
            "reason": reason,
            "by": caller.name,
            "at": ctx.now,
            "tx_id": ctx.tx_id,
            "phase": session["phase"],
        }
        updated = {**session, "phase": DKG_FAILED, "phase_opened_at": ctx.now, "failure": failure}
        ctx.put_json(updated, K_DKG_SESSION, nonce)
        ctx.log(
            SYSTEM_CHAIN,
            "AbortDKGSession",
            "failed",
            detail={"nonce": nonce, "cause": cause, "reason": reason},
        )
        return updated

    def _abort_cause(self, ctx: TxContext, session: dict[str, Any]) -> str:
        """Why the session cannot finish, as the chain sees it; refuses while it still can."""
        nonce = session["nonce"]
        tau = int(session["threshold"])
        roster: list[str] = session["roster"]
        phase = session["phase"]
        if phase == DKG_PHASES[0]:
            raise ChaincodeError(
                f"dkg session {nonce} can still finish: its deal phase is open (close it first)"
            )
        dealers = len(dkg_posters(ctx, nonce, DKG_PHASES[0]))
        need = dealer_threshold(session)
        if dealers < need:
            return (
                f"only {dealers} of {len(phase_senders(session, DKG_PHASES[0]))} dealers posted a "
                f"deal; threshold is {need}"
            )
        counts = view_counts(ctx, nonce)
        silent = len(roster) - sum(counts.values())
        best = max(counts.values(), default=0)
        if best + silent < tau:
            return (
                f"{len(counts)} different result views, at most {best} agree and {silent} "
                f"roster nodes have not published; threshold is {tau}"
            )
        deadline = int(session["phase_opened_at"]) + int(session["phase_timeout_s"])
        if phase == DKG_DONE and ctx.now >= deadline:
            return (
                f"every phase closed and the result timeout passed at {deadline} with {best} "
                f"of {tau} agreeing views"
            )
        if phase == DKG_DONE:
            raise ChaincodeError(
                f"dkg session {nonce} can still finish: {best} of {tau} views agree and its "
                f"result timeout ends at {deadline}"
            )
        raise ChaincodeError(
            f"dkg session {nonce} can still finish: its {phase} phase is open and "
            f"{dealers} dealers posted a deal (threshold {tau})"
        )

    @evaluate
    def GetDKGBundles(self, ctx: TxContext, nonce: str, phase: str) -> Any:
        """Every bundle of a closed phase of a session, ordered by poster.

        An open phase is refused: its set can still grow, and nodes must all read the same set.
        """
        ctx.registered()
        check_nonce(nonce)
        check_phase(phase)
        session = load_dkg_session(ctx, nonce)
        closed = {str(c["phase"]) for c in session["closed"]}
        if session["phase"] != DKG_DONE and phase not in closed:
            raise ChaincodeError(
                f"{phase} phase of dkg session {nonce} is not closed; read its bundles after "
                "CloseDKGPhase commits"
            )
        rows = ctx.stub.get_state_by_partial_composite_key(K_DKG, [nonce, phase])
        return [canonical.loads(kv.value, "stored dkg bundle") for kv in rows]

    @submit
    def PublishDKGResult(
        self,
        ctx: TxContext,
        nonce: str,
        mpk_b64: str,
        public_poly: str,
        qual: str,
        format_version: str,
    ) -> Any:
        """A QUAL member posts its view of the result (mpk, public polynomial, QUAL).

        The result becomes final when τ distinct roster nodes posted byte-identical views; a
        view that differs is recorded (evidence) and does not count.
        """
        caller = ctx.registered(KGC)
        assert caller.ibe_id is not None
        check_nonce(nonce)
        check_b64(mpk_b64, "mpk", MAX_MPK_BYTES)
        poly = json_list(public_poly, "public polynomial")
        if not poly:
            raise ChaincodeError("public polynomial is empty")
        for i, c in enumerate(poly):
            check_b64(c, f"public polynomial coefficient {i}", MAX_MPK_BYTES)
        members = [check_ibe(x, "qual member") for x in json_list(qual, "qual")]
        if not members:
            raise ChaincodeError("qual is empty")
        version = check_version(format_version)
        session = load_dkg_session(ctx, nonce)
        roster: list[str] = session["roster"]
        tau = int(session["threshold"])
        reshare = is_reshare(session)
        if caller.ibe_id not in roster:
            raise ChaincodeError(f"kgc {caller.ibe_id} is not in the roster of dkg session {nonce}")
        if session["phase"] == DKG_FAILED:
            raise ChaincodeError(failed_message(session))
        if session["phase"] in DKG_PHASES[:2]:
            raise ChaincodeError(
                f"dkg session {nonce} is still collecting {session['phase']} bundles; publish "
                "the result after the response phase closes"
            )
        if len(poly) != tau:
            raise ChaincodeError(
                f"public polynomial has {len(poly)} coefficients; dkg session {nonce} has "
                f"threshold {tau}"
            )
        if reshare and mpk_b64 != session["mpk"]:
            raise ChaincodeError(
                f"reshare session {nonce} must keep the master key; the published mpk differs "
                f"from the mpk of dkg session {session['previous']}"
            )
        dealers: list[str] = session["dealers"] if reshare else roster
        for member in members:
            if member not in dealers:
                raise ChaincodeError(
                    f"qual member {member} is not "
                    + (
                        f"a dealer of reshare session {nonce}"
                        if reshare
                        else f"in the roster of dkg session {nonce}"
                    )
                )
        qual_sorted = sorted(set(members))
        if len(qual_sorted) < dealer_threshold(session):
            raise ChaincodeError(
                f"qual has {len(qual_sorted)} members; dkg session {nonce} has threshold "
                f"{dealer_threshold(session)}"
            )
        if not reshare and caller.ibe_id not in qual_sorted:
            raise ChaincodeError(
                f"kgc {caller.ibe_id} is not in the qual it published; only qual members publish"
            )
        view = {"mpk": mpk_b64, "public_poly": poly, "qual": qual_sorted, "format_version": version}
        digest = hashlib.sha256(canonical.dumps(view)).hexdigest()
        views = {
            str(v["publisher"]): v
            for v in (
                canonical.loads(kv.value, "stored dkg view")
                for kv in ctx.stub.get_state_by_partial_composite_key(K_DKG_VIEW, [nonce])
            )
        }
        mine = views.get(caller.ibe_id)
        if mine is not None:
            if mine["digest"] != digest:
                raise ChaincodeError(
                    f"kgc {caller.ibe_id} already published a different result for dkg session "
                    f"{nonce}"
                )
            status = self._dkg_status(ctx, session, views, digest)
            ctx.log(
                SYSTEM_CHAIN,
                "PublishDKGResult",
                "repeated",
                detail={"nonce": nonce, "digest": digest, "agree": status["agree"]},
            )
            return status
        final = ctx.get_json(K_DKG_RESULT, nonce)
        agreeing = sorted([p for p, v in views.items() if v["digest"] == digest] + [caller.ibe_id])
        record = {
            "nonce": nonce,
            "publisher": caller.ibe_id,
            "digest": digest,
            **view,
            "published_at": ctx.now,
            "tx_id": ctx.tx_id,
        }
        ctx.put_json(record, K_DKG_VIEW, nonce, caller.ibe_id)
        if final is not None:
            outcome = "confirmed" if final["digest"] == digest else "conflict"
        elif len(agreeing) >= tau:
            latest = ctx.get_json(K_DKG_LATEST)
            if reshare and (latest is None or latest["nonce"] != session["previous"]):
                raise ChaincodeError(
                    f"reshare session {nonce} reshares the key of dkg session "
                    f"{session['previous']}, but dkg session "
                    f"{(latest or {}).get('nonce')} became final since; open a new resharing"
                )
            outcome = "final"
            result = {
                "nonce": nonce,
                **view,
                "digest": digest,
                "threshold": tau,
                "roster": roster,
                "keys": session["keys"],
                **(
                    {
                        "kind": "reshare",
                        "indices": session["indices"],
                        "previous": session["previous"],
                    }
                    if reshare
                    else {}
                ),
                "agreed_by": agreeing,
                "final_at": ctx.now,
                "tx_id": ctx.tx_id,
            }
            ctx.put_json(result, K_DKG_RESULT, nonce)
            ctx.put_json({"nonce": nonce}, K_DKG_LATEST)
            if session["phase"] != DKG_DONE:
                # τ nodes agree: a still-open justification phase is moot (nodes that needed
                # justifications waited for its close), so the session stops collecting now.
                self._end_phase(ctx, session, caller.name, by_result=True)
        else:
            outcome = "pending"
        others = sum(1 for v in views.values() if v["digest"] != digest)
        ctx.log(
            SYSTEM_CHAIN,
            "PublishDKGResult",
            outcome,
            detail={"nonce": nonce, "digest": digest, "agree": len(agreeing)},
        )
        return {
            "nonce": nonce,
            "publisher": caller.ibe_id,
            "digest": digest,
            "outcome": outcome,
            "agree": len(agreeing),
            "disagree": others,
            "threshold": tau,
        }

    def _dkg_status(
        self,
        ctx: TxContext,
        session: dict[str, Any],
        views: dict[str, Any],
        digest: str,
    ) -> dict[str, Any]:
        """What a repeated publication answers: the view's standing (only the log grows)."""
        nonce = session["nonce"]
        final = ctx.get_json(K_DKG_RESULT, nonce)
        agree = sum(1 for v in views.values() if v["digest"] == digest)
        if final is not None:
            outcome = "confirmed" if final["digest"] == digest else "conflict"
        else:
            outcome = "pending"
        return {
            "nonce": nonce,
            "publisher": ctx.caller.name,
            "digest": digest,
            "outcome": outcome,
            "agree": agree,
            "disagree": len(views) - agree,
            "threshold": int(session["threshold"]),
        }

    @evaluate
    def GetDKGResult(self, ctx: TxContext, nonce: str = "") -> Any:
        """The final result of a session (with its roster and key snapshot), or of the latest
        session that became final when nonce is empty. A result τ nodes have not yet agreed on
        is refused."""
        ctx.registered()
        if nonce == "":
            latest = ctx.get_json(K_DKG_LATEST)
            if latest is None:
                raise ChaincodeError("no dkg session has finished")
            nonce = latest["nonce"]
        check_nonce(nonce)
        result = ctx.get_json(K_DKG_RESULT, nonce)
        if result is not None:
            return result
        session = load_dkg_session(ctx, nonce)
        if session["phase"] == DKG_FAILED:
            raise ChaincodeError(failed_message(session))
        counts = view_counts(ctx, nonce)
        best = max(counts.values(), default=0)
        raise ChaincodeError(
            f"dkg session {nonce} result is not final yet: {best} of {session['threshold']} agree"
        )
