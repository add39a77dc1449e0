"""The chaincode as DKG board: :class:`LedgerBoard` and :class:`LedgerPhaser`.

:class:`LedgerBoard` is a :class:`~ehrshare.hazmat.board.Board` over the chaincode's DKG
functions (through :class:`~ehrshare.contract.dkg.DkgBoardClient`); :class:`LedgerPhaser` is the
:class:`~ehrshare.hazmat.board.Phaser` that ends a phase only once its CloseDKGPhase committed.
This module must not hold key material or drive a session: the participations and
:func:`~ehrshare.hazmat.board.drive` do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ehrshare.contract.dkg import (
    PHASE_FAILED,
    PHASE_NAMES,
    DkgBoardClient,
    failure_text,
    phase_closed,
    senders,
)
from ehrshare.hazmat.dkg import BundleKind, DKGError
from ehrshare.ledger.api import Contract
from ehrshare.ledger.errors import LedgerError
from ehrshare.services.kgc.errors import DKGSessionFailed

__all__ = ["LedgerBoard", "LedgerPhaser", "try_abort"]

# Log lines keep the name operators filter on (one logger for the whole key centre).
_log = logging.getLogger("ehrshare.services.kgc")


class LedgerBoard:
    """A :class:`~ehrshare.hazmat.board.Board` over the chaincode's DKG functions.

    Each KGC node posts with its own contract handle: the chaincode names the poster from the
    client certificate, refuses a second bundle per poster and phase (so equivocation on chain is
    impossible rather than merely provable), and refuses a bundle whose header names another
    sender index than the poster's roster position. Reading a phase is refused by the chaincode
    until its close committed (:meth:`wait_closed`), so every node reads the same set.
    """

    def __init__(self, contract: Contract) -> None:
        self.chain = DkgBoardClient(contract)

    def post(self, session: bytes, phase: BundleKind, bundle: bytes) -> None:
        """Submit PostDKGBundle; returns once the transaction committed."""
        self.chain.post_bundle(session, phase, bundle)

    def posted(self, session: bytes, phase: BundleKind) -> list[tuple[str, bytes]]:
        """(poster identity, bundle bytes) for every bundle of a closed phase."""
        return self.chain.bundles(session, phase)

    def read(self, session: bytes, phase: BundleKind) -> list[bytes]:
        """Every bundle of a closed phase (the nodes check signatures and de-duplicate)."""
        return [bundle for _, bundle in self.posted(session, phase)]

    def session_state(self, session: bytes) -> dict[str, Any]:
        """The session on chain: roster, key snapshot, τ, open phase and who posted in it."""
        return self.chain.session_state(session)

    def close_phase(self, session: bytes, phase: BundleKind) -> dict[str, Any]:
        """Submit CloseDKGPhase (refused unless everyone posted or the phase timed out)."""
        return self.chain.close_phase(session, phase)

    def abort(self, session: bytes, reason: str) -> dict[str, Any]:
        """Submit AbortDKGSession (refused unless the chain shows the session cannot finish)."""
        return self.chain.abort(session, reason)

    def wait_closed(
        self,
        session: bytes,
        phase: BundleKind,
        *,
        give_up: float,
        poll: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> dict[str, Any]:
        """Return once the close of ``phase`` is committed; submit the close when it is due.

        The close is due when every roster node posted, or when ``now()`` (the node's idea of
        transaction time, seconds) passed the phase's timeout, or (justification phase) when
        every accused dealer posted; the chaincode decides by the transaction's own time, and a
        close that another node committed first simply fails here. Raises
        :class:`~ehrshare.hazmat.dkg.DKGError` after ``give_up`` seconds.
        """
        name = PHASE_NAMES[BundleKind(phase)]
        stop = clock() + give_up
        while True:
            state = self.session_state(session)
            if state["phase"] == PHASE_FAILED:
                raise DKGSessionFailed(failure_text(state))
            if phase_closed(state, phase):
                return state
            if state["phase"] == name and (
                len(state["posted"]) >= len(senders(state, phase))
                or now() >= int(state["phase_opened_at"]) + int(state["phase_timeout_s"])
                # Justifications: the chaincode closes early once the accused dealers posted,
                # which only it works out; ask, and a refusal costs one endorsement.
                or phase is BundleKind.JUSTIFICATION
            ):
                try:
                    return self.close_phase(session, phase)
                except LedgerError as exc:
                    # Another node's close committed first, or the chain's clock is behind ours.
                    _log.debug("closing %s of %s: %s", name, session.hex()[:16], exc.message)
            if clock() >= stop:
                raise DKGError(
                    f"the {name} phase of dkg session {session.hex()} was not closed within "
                    f"{give_up:.0f} s"
                )
            sleep(poll)


class LedgerPhaser:
    """The :class:`~ehrshare.hazmat.board.Phaser` of a session on chain: a phase ends when its
    CloseDKGPhase committed (:meth:`LedgerBoard.wait_closed`, ``give_up`` seconds at most).

    ``on_deal_closed`` sees the session state once the deal phase closed (a driver checks there
    that enough dealers posted). With a ``tag`` each step is logged under it.
    """

    def __init__(
        self,
        board: LedgerBoard,
        session: bytes,
        *,
        give_up: float,
        poll: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], float] = time.time,
        on_deal_closed: Callable[[dict[str, Any]], None] | None = None,
        tag: str | None = None,
    ) -> None:
        self._board = board
        self._session = session
        self._give_up = give_up
        self._poll = poll
        self._sleep = sleep
        self._now = now
        self._on_deal_closed = on_deal_closed
        self._tag = tag

    def _log(self, message: str, *args: object) -> None:
        if self._tag is not None:
            _log.info("%s: " + message, self._tag, *args)

    def close(self, phase: BundleKind) -> None:
        """Wait for the committed close of ``phase`` (submitting it when due)."""
        before = {
            BundleKind.DEAL: "posted its deal",
            BundleKind.RESPONSE: "posted its response",
            BundleKind.JUSTIFICATION: "dealers were accused; waiting for the justification phase",
        }[BundleKind(phase)]
        self._log(before)
        state = self._board.wait_closed(
            self._session,
            phase,
            give_up=self._give_up,
            poll=self._poll,
            sleep=self._sleep,
            now=self._now,
        )
        if phase is BundleKind.DEAL and self._on_deal_closed is not None:
            self._on_deal_closed(state)
        elif phase is BundleKind.RESPONSE:
            self._log("response phase closed")


def try_abort(board: LedgerBoard, nonce: bytes, reason: str) -> dict[str, Any] | None:
    """Mark the session failed; the failed session (by us or a node that was first), or None
    when the chain says it can still finish."""
    try:
        state = board.abort(nonce, reason)
        _log.warning("%s", failure_text(state))
        return state
    except LedgerError as exc:
        state = board.session_state(nonce)
        if state["phase"] == PHASE_FAILED:
            return state
        _log.info("abort of dkg session %s refused: %s", nonce.hex()[:16], exc.message)
        return None
