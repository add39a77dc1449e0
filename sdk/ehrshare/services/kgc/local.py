"""Opening sessions on chain and running them among in-process KGC nodes.

:func:`open_dkg_session` and :func:`open_reshare_session` are an org admin's transactions;
:func:`run_local_dkg` and :func:`run_local_reshare` drive every in-process node of a session
through the one protocol driver (:func:`~ehrshare.hazmat.board.drive`) over the chaincode
board — for the embedded backend, tests and demos. Deployed nodes run sessions on their own
(:class:`~ehrshare.services.kgc.follower.DkgFollower`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ehrshare.contract.dkg import (
    DEFAULT_PHASE_TIMEOUT_S,
    DkgBoardClient,
    closed_posters,
    dealer_threshold,
    failure_text,
    public_polynomial_from_chain,
)
from ehrshare.hazmat.board import drive
from ehrshare.hazmat.dkg import BundleKind, DKGError, DKGResult, PublicPolynomial
from ehrshare.ledger.api import Contract
from ehrshare.ledger.errors import LedgerError
from ehrshare.services.kgc.board import LedgerBoard, LedgerPhaser, try_abort
from ehrshare.services.kgc.errors import DKGSessionFailed
from ehrshare.services.kgc.node import KgcNode

__all__ = ["open_dkg_session", "open_reshare_session", "run_local_dkg", "run_local_reshare"]

_log = logging.getLogger("ehrshare.services.kgc")


def open_dkg_session(
    admin: Contract,
    *,
    nonce: bytes,
    roster: Sequence[str],
    threshold: int,
    phase_timeout_s: int = DEFAULT_PHASE_TIMEOUT_S,
    new_master_key: bool = False,
) -> dict[str, Any]:
    """Open a DKG session on chain (``admin``: a contract handle with an org admin identity).

    ``roster`` is the ordered KGC identities (node j is ``roster[j-1]``); each must have
    published its key (:meth:`KgcNode.publish_key`). Once records exist the chain refuses a
    new master key unless ``new_master_key`` (records then keep the key of their epoch).
    """
    return DkgBoardClient(admin).open_session(
        nonce=nonce,
        roster=roster,
        threshold=threshold,
        phase_timeout_s=phase_timeout_s,
        new_master_key=new_master_key,
    )


def open_reshare_session(
    admin: Contract,
    *,
    nonce: bytes,
    roster: Sequence[str],
    indices: Sequence[int],
    dealers: Sequence[str],
    threshold: int,
    phase_timeout_s: int = DEFAULT_PHASE_TIMEOUT_S,
) -> dict[str, Any]:
    """Open a resharing of the latest final key on chain (``admin``: an org admin's handle).

    ``roster``: the new committee in order, ``indices`` their share indices (a current member
    keeps its own); ``dealers``: current members that re-deal their shares (at least τ_old).
    """
    return DkgBoardClient(admin).open_reshare(
        nonce=nonce,
        roster=roster,
        indices=indices,
        dealers=dealers,
        threshold=threshold,
        phase_timeout_s=phase_timeout_s,
    )


def run_local_dkg(
    nodes: Sequence[KgcNode],
    *,
    nonce: bytes,
    admin: Contract,
    threshold: int = 0,
    phase_timeout_s: int = DEFAULT_PHASE_TIMEOUT_S,
    poll: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.time,
    new_master_key: bool = False,
) -> DKGResult:
    """Run one DKG session on chain among in-process KGC nodes, each posting as itself.

    For the embedded backend, tests and demos. Every node publishes its key, ``admin`` (an org
    admin's contract handle) opens the session with the nodes ordered by index as the roster
    (node j must have index j), and the phases run in lock step, each closed by a committed
    CloseDKGPhase before anyone reads it. Returns node 1's result once the chain holds a final
    result (τ nodes agreed) equal to it.
    """
    ordered = sorted(nodes, key=lambda n: n.index)
    if [n.index for n in ordered] != list(range(1, len(ordered) + 1)):
        raise ValueError(f"KGC node indices must be 1..n, got {[n.index for n in ordered]}")
    roster = [n.publish_key() for n in ordered]
    tau = threshold or len(ordered) // 2 + 1
    open_dkg_session(
        admin,
        nonce=nonce,
        roster=roster,
        threshold=tau,
        phase_timeout_s=phase_timeout_s,
        new_master_key=new_master_key,
    )
    sessions = [n.dkg_session(n.dkg_config(nonce)) for n in ordered]
    board = LedgerBoard(ordered[0].contract)

    phaser = LedgerPhaser(
        board, nonce, give_up=2.0 * phase_timeout_s + 60.0, poll=poll, sleep=sleep, now=now
    )
    driven = drive(sessions, phaser)
    results = [driven.results[i] for i in range(len(sessions))]
    if len({r.public.to_bytes() for r in results}) != 1:
        raise DKGError("KGC nodes finished with different public polynomials")
    final = board.chain.result(nonce)
    if public_polynomial_from_chain(final).to_bytes() != results[0].public.to_bytes():
        raise DKGError("the final dkg result on chain differs from the nodes' result")
    for node in ordered:
        node.adopt_final(nonce)
    return results[0]


def run_local_reshare(
    nodes: Sequence[KgcNode],
    *,
    nonce: bytes,
    admin: Contract,
    members: Sequence[int],
    dealers: Sequence[int],
    threshold: int = 0,
    phase_timeout_s: int = DEFAULT_PHASE_TIMEOUT_S,
    poll: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.time,
    skip: Sequence[int] = (),
) -> PublicPolynomial:
    """Reshare the latest final key among in-process KGC nodes, each posting as itself.

    ``members``: node indices of the new committee (each node's index is its share index);
    ``dealers``: node indices of current members that re-deal. ``nodes`` must hold every node
    named. ``skip`` names nodes that are down (they post nothing; a phase then closes at its
    timeout, so tests pass a ``now`` that moves). Returns the new public polynomial once the
    chain's result is final; every node adopts it (new share answers, old share destroyed).
    """
    by_index = {n.index: n for n in nodes}
    missing = sorted((set(members) | set(dealers)) - set(by_index))
    if missing:
        raise ValueError(f"no KGC node object for node indices {missing}")
    ids = {i: by_index[i].publish_key() for i in sorted(set(members) | set(dealers))}
    tau = threshold or len(members) // 2 + 1
    open_reshare_session(
        admin,
        nonce=nonce,
        roster=[ids[i] for i in members],
        indices=list(members),
        dealers=[ids[i] for i in dealers],
        threshold=tau,
        phase_timeout_s=phase_timeout_s,
    )
    live = [by_index[i] for i in sorted(set(members) | set(dealers)) if i not in skip]
    for node in by_index.values():
        if node.index not in skip:
            node.catch_up()  # a killed earlier run may have left a final result half-adopted
    board = LedgerBoard(live[0].contract)
    sessions = []
    for node in live:
        try:
            sessions.append(node.reshare_session(nonce, LedgerBoard(node.contract)))
        except DKGError as exc:  # a leaving dealer without a share: it has no part
            _log.warning(
                "kgc node %d sits out reshare session %s: %s", node.index, nonce.hex(), exc
            )

    def enough_dealers(closed: dict[str, Any]) -> None:
        state = board.session_state(nonce)
        if len(closed_posters(state, BundleKind.DEAL)) < dealer_threshold(state):
            failed = try_abort(board, nonce, "too few dealers posted")
            raise DKGSessionFailed(failure_text(failed or state))

    phaser = LedgerPhaser(
        board,
        nonce,
        give_up=2.0 * phase_timeout_s + 60.0,
        poll=poll,
        sleep=sleep,
        now=now,
        on_deal_closed=enough_dealers,
    )
    driven = drive(sessions, phaser)
    results = [r for r in (driven.results[i] for i in range(len(sessions))) if r is not None]
    if len({r.public.to_bytes() for r in results}) != 1:
        raise DKGError("KGC nodes finished the resharing with different public polynomials")
    try:
        final = board.chain.result(nonce)
    except LedgerError as exc:
        # The old shares keep answering: nothing was adopted or destroyed.
        raise DKGError(f"the resharing did not finish: {exc.message}") from None
    public = public_polynomial_from_chain(final)
    if public.to_bytes() != results[0].public.to_bytes():
        raise DKGError("the final reshare result on chain differs from the nodes' result")
    for node in live:
        node.adopt_final(nonce)
    for node in by_index.values():
        if node.index not in skip:
            node.catch_up()  # shares sealed for sessions a killed earlier run left behind go too
    return public
