"""Running one session from one node: the node's side of the phase deadlines and of finality.

:func:`run_session` is what :meth:`KgcNode.run_dkg` and :meth:`KgcNode.run_reshare` do once
the participation is built (:class:`~ehrshare.services.kgc.node.KgcNode`): it drives the
node's participation with :func:`~ehrshare.hazmat.board.drive` over a
:class:`~ehrshare.services.kgc.board.LedgerPhaser`, then waits for the chain's final result
(closing a due justification phase, aborting once the result phase timed out). It must not
promote or destroy a share itself: :meth:`KgcNode.adopt_final` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ehrshare.contract.dkg import (
    PHASE_DONE,
    PHASE_FAILED,
    PHASE_NAMES,
    closed_posters,
    dealer_threshold,
    failure_text,
    senders,
)
from ehrshare.hazmat.board import Step, drive
from ehrshare.hazmat.dkg import BundleKind, DKGError, DKGResult
from ehrshare.ledger.errors import LedgerError
from ehrshare.services.kgc.board import LedgerBoard, LedgerPhaser, try_abort
from ehrshare.services.kgc.errors import DKGSessionFailed
from ehrshare.services.kgc.participation import DkgParticipation, ReshareParticipation

if TYPE_CHECKING:
    from ehrshare.services.kgc.node import KgcNode

__all__ = ["run_session"]

_log = logging.getLogger("ehrshare.services.kgc")


def run_session(
    node: KgcNode,
    nonce: bytes,
    participation: DkgParticipation | ReshareParticipation,
    board: LedgerBoard,
    give_up: float | None,
    poll: float,
    sleep: Callable[[float], None],
    now: Callable[[], float],
    clock: Callable[[], float],
) -> DKGResult | None:
    state = board.session_state(nonce)
    tau = dealer_threshold(state)
    limit = give_up if give_up is not None else 2.0 * int(state["phase_timeout_s"]) + 60.0
    what = "reshare" if state.get("kind") == "reshare" else "dkg"
    tag = f"kgc node {node.index}: {what} session {nonce.hex()[:16]}"

    def enough_dealers(closed: dict[str, Any]) -> None:
        dealers = closed_posters(closed, BundleKind.DEAL)
        _log.info(
            "%s: deal phase closed with %d of %d dealers",
            tag,
            len(dealers),
            len(senders(closed, BundleKind.DEAL)),
        )
        if len(dealers) < tau:
            reason = f"kgc node {node.index}: {len(dealers)} dealers posted, threshold {tau}"
            failed = try_abort(board, nonce, reason)
            if failed is None:
                raise DKGError(f"{tag}: too few dealers, but the chain refused to abort it")
            raise DKGSessionFailed(failure_text(failed))

    def tolerate(step: Step, exc: DKGError) -> bool:
        # QUAL < τ, or no valid share for this node: it publishes nothing, and the session
        # either finishes without it or times out and is marked failed (below).
        return step is not Step.RESPONSE and not isinstance(exc, DKGSessionFailed)

    phaser = LedgerPhaser(
        board,
        nonce,
        give_up=limit,
        poll=poll,
        sleep=sleep,
        now=now,
        on_deal_closed=enough_dealers,
        tag=tag,
    )
    driven = drive([participation], phaser, tolerate=tolerate)
    result = driven.results.get(0)
    if 0 in driven.failures:
        _log.warning("%s: no result at this node: %s", tag, driven.failures[0])
    else:
        _log.info("%s: finished its part (a new share sealed: %s)", tag, result is not None)
    if isinstance(participation, ReshareParticipation) and not participation.receives:
        _await_final_leaving(node, board, nonce, tag, limit, poll, sleep, now, clock)
        return None
    return _await_final(node, board, nonce, result, tag, limit, poll, sleep, now, clock)


def _await_final_leaving(
    node: KgcNode,
    board: LedgerBoard,
    nonce: bytes,
    tag: str,
    limit: float,
    poll: float,
    sleep: Callable[[float], None],
    now: Callable[[], float],
    clock: Callable[[], float],
) -> None:
    """A dealer leaving the committee: wait for the new committee's final result, then
    destroy this node's share (not before: until then it is the share that answers)."""
    stop = clock() + limit
    while True:
        if node.adopt_final(nonce):
            _log.info("%s: the new committee's result is final; share destroyed", tag)
            return
        state = board.session_state(nonce)
        if state["phase"] == PHASE_FAILED:
            raise DKGSessionFailed(failure_text(state))
        if state["phase"] == PHASE_DONE and now() >= int(state["phase_opened_at"]) + int(
            state["phase_timeout_s"]
        ):
            failed = try_abort(board, nonce, f"kgc node {node.index}: no final result")
            if failed is not None:
                raise DKGSessionFailed(failure_text(failed))
        if clock() >= stop:
            raise DKGError(f"{tag}: no final result within {limit:.0f} s")
        sleep(poll)


def _await_final(
    node: KgcNode,
    board: LedgerBoard,
    nonce: bytes,
    result: DKGResult | None,
    tag: str,
    limit: float,
    poll: float,
    sleep: Callable[[float], None],
    now: Callable[[], float],
    clock: Callable[[], float],
) -> DKGResult:
    """Wait until the session's result is final (then answer under it) or the session
    failed; close a due justification phase and abort once the result phase timed out."""
    stop = clock() + limit
    while True:
        if node._chain.is_final(nonce):
            if result is not None and node.adopt_final(nonce):
                return result
            raise DKGError(
                f"{tag}: the final result does not hold this node's share "
                f"({'its view differs' if result is not None else 'it has no result'}); "
                "it keeps answering under its previous session"
            )
        state = board.session_state(nonce)
        phase = str(state["phase"])
        if phase == PHASE_FAILED:
            raise DKGSessionFailed(failure_text(state))
        due = int(state["phase_opened_at"]) + int(state["phase_timeout_s"])
        if phase == PHASE_NAMES[BundleKind.JUSTIFICATION]:
            # Nodes without complaints do not wait for this phase; once it closes (at once
            # when nobody is accused) the result phase's timeout starts.
            try:
                board.close_phase(nonce, BundleKind.JUSTIFICATION)
            except LedgerError as exc:
                _log.debug("%s: closing justification: %s", tag, exc.message)
        elif phase == PHASE_DONE and now() >= due:
            reason = f"kgc node {node.index}: no final result by the result timeout"
            failed = try_abort(board, nonce, reason)
            if failed is not None:
                raise DKGSessionFailed(failure_text(failed))
        if clock() >= stop:
            raise DKGError(f"{tag}: no final result within {limit:.0f} s")
        sleep(poll)
