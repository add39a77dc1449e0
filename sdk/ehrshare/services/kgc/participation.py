"""A KGC node's part in one session: :class:`DkgParticipation` and :class:`ReshareParticipation`.

Each is a :class:`~ehrshare.hazmat.board.Participant` (deal, response, justification, finish)
that :func:`~ehrshare.hazmat.board.drive` runs: the pure protocol object comes from the node
(:meth:`KgcNode.new_dkg_protocol`, :meth:`KgcNode.new_reshare_protocol`), bundles go to the board,
and the finished share is sealed through the node and the node's view published on chain. This
module must not touch the node's key or share files other than through the node's methods.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ehrshare import faults
from ehrshare.contract.dkg import DkgBoardClient
from ehrshare.hazmat.board import Board
from ehrshare.hazmat.dkg import BundleKind, DKGConfig, DKGNode, DKGResult, KeyShare, Phase
from ehrshare.hazmat.reshare import ReshareConfig, ReshareNode, ResharePhase
from ehrshare.services.kgc.board import LedgerBoard

if TYPE_CHECKING:
    from ehrshare.services.kgc.node import KgcNode

__all__ = ["DkgParticipation", "ReshareParticipation", "publish_reshare_view"]

_log = logging.getLogger("ehrshare.services.kgc")


@dataclass
class DkgParticipation:
    """One node's way through one DKG session, one board phase per call.

    Call :meth:`post_deal`, then (once every node did) :meth:`post_response`, then
    :meth:`post_justification`, then :meth:`finish` — or let
    :func:`~ehrshare.hazmat.board.drive` do it (:func:`run_local_dkg` drives several nodes,
    :meth:`KgcNode.run_dkg` one node with phase deadlines).
    """

    node: KgcNode
    config: DKGConfig
    board: Board
    _proto: DKGNode = field(init=False)

    def __post_init__(self) -> None:
        self._proto = self.node.new_dkg_protocol(self.config)
        if self._proto.index != self.node.index:
            raise ValueError(
                f"KGC node {self.node.index} is at position {self._proto.index} of the DKG roster"
            )

    @property
    def session(self) -> bytes:
        """The session nonce."""
        return self.config.nonce

    def post_deal(self) -> None:
        """Deal: post commitments and the shares sealed to each node."""
        self.board.post(self.session, BundleKind.DEAL, self._proto.deals().to_bytes())

    def post_response(self) -> None:
        """Read every deal, post this node's verdict on each dealer."""
        response = self._proto.process_deals(self.board.read(self.session, BundleKind.DEAL))
        self.board.post(self.session, BundleKind.RESPONSE, response.to_bytes())

    def post_justification(self) -> bool:
        """Read the responses; post a justification if this node was complained about.

        Returns True when the session needs a justification phase (anyone complained).
        """
        justification = self._proto.process_responses(
            self.board.read(self.session, BundleKind.RESPONSE)
        )
        if justification is not None:
            self.board.post(self.session, BundleKind.JUSTIFICATION, justification.to_bytes())
        return self._proto.phase is Phase.AWAITING_JUSTIFICATIONS

    def finish(self) -> DKGResult:
        """Finish, seal the share into the state directory, publish mpk on chain."""
        if self._proto.phase is Phase.AWAITING_JUSTIFICATIONS:
            self._proto.process_justifications(
                self.board.read(self.session, BundleKind.JUSTIFICATION)
            )
        result = self._proto.result()
        if isinstance(self.board, LedgerBoard):
            # Sealed now, answering only once the chain's result is final (adopt_final): until
            # then users still verify partial keys against the previous final result.
            self.node.seal_share(result)
            if self._publish(self.board, result) in ("final", "confirmed"):
                self.node.adopt_final(result.nonce)
        else:
            self.node.store_share(result)
        _log.info(
            "kgc node %d finished dkg session %s: qual=%s",
            self.node.index,
            self.session.hex()[:16],
            list(result.qual),
        )
        return result

    def _publish(self, board: LedgerBoard, result: DKGResult) -> str:
        """Post this node's view of the result; it counts once τ nodes posted the same.
        Returns the chain's outcome (``pending``, ``final``, ``confirmed``, ``conflict``), or
        ``""`` when the node is outside QUAL and does not publish."""
        if self.node.index not in result.qual:
            # Still a share holder (it received shares from QUAL), but only QUAL members'
            # views count on chain: a disqualified dealer gets no say in the result.
            _log.info("kgc node %d is outside QUAL; it does not publish", self.node.index)
            return ""
        roster = [str(x) for x in board.session_state(self.session)["roster"]]
        # Views of one session are posted concurrently and each reads the others' range:
        # a read conflict is proposed again by the ledger client (the answer is idempotent).
        answer = board.chain.publish_result(
            self.session, result.public, [roster[j - 1] for j in result.qual]
        )
        _log.info(
            "kgc node %d published its dkg result view: %s (%d of %d agree)",
            self.node.index,
            answer.outcome,
            answer.agree,
            answer.threshold,
        )
        return answer.outcome


@dataclass
class ReshareParticipation:
    """One node's way through one resharing session (dealer, new member or both), one board
    phase per call, like :class:`DkgParticipation`. Built by :meth:`KgcNode.reshare_session`."""

    node: KgcNode
    config: ReshareConfig
    board: LedgerBoard
    old_share: KeyShare | None
    state: dict[str, Any]
    _proto: ReshareNode = field(init=False)

    def __post_init__(self) -> None:
        self._proto = self.node.new_reshare_protocol(self.config, self.old_share)

    @property
    def session(self) -> bytes:
        """The session nonce."""
        return self.config.nonce

    @property
    def receives(self) -> bool:
        """Whether this node is in the new committee."""
        return self._proto.recipient_position is not None

    def post_deal(self) -> None:
        """A dealer posts its re-dealt share (new members that do not deal post nothing)."""
        deal = self._proto.deals()
        if deal is not None:
            self.board.post(self.session, BundleKind.DEAL, deal.to_bytes())

    def post_response(self) -> None:
        """Read every deal; a new member posts its verdict on each dealer."""
        response = self._proto.process_deals(self.board.read(self.session, BundleKind.DEAL))
        if response is not None:
            self.board.post(self.session, BundleKind.RESPONSE, response.to_bytes())

    def post_justification(self) -> bool:
        """Read the responses; a dealer complained about posts its justification. True when
        the session needs a justification phase."""
        justification = self._proto.process_responses(
            self.board.read(self.session, BundleKind.RESPONSE)
        )
        if justification is not None:
            self.board.post(self.session, BundleKind.JUSTIFICATION, justification.to_bytes())
        return self._proto.phase is ResharePhase.AWAITING_JUSTIFICATIONS

    def finish(self) -> DKGResult | None:
        """Finish; a new member seals its new share beside the current one (which keeps
        answering until the result is final) and publishes its view. None for a leaving dealer."""
        if self._proto.phase is ResharePhase.AWAITING_JUSTIFICATIONS:
            self._proto.process_justifications(
                self.board.read(self.session, BundleKind.JUSTIFICATION)
            )
        if not self.receives:
            return None
        result = self._proto.result()
        self.node.seal_share(result)
        faults.fault_point("reshare.sealed")
        if self._publish(result) in ("final", "confirmed"):
            self.node.adopt_final(result.nonce)
        _log.info(
            "kgc node %d finished reshare session %s: qual=%s",
            self.node.index,
            self.session.hex()[:16],
            list(result.qual),
        )
        return result

    def _publish(self, result: DKGResult) -> str:
        return publish_reshare_view(self.node, self.state, result)


def publish_reshare_view(node: KgcNode, state: dict[str, Any], result: DKGResult) -> str:
    """A new member posts its view of a resharing; QUAL is named by the dealers' identities.
    Returns the chain's outcome (``pending``, ``final``, ``confirmed``, ``conflict``)."""
    by_index = dict(
        zip((int(i) for i in state["dealer_indices"]), map(str, state["dealers"]), strict=True)
    )
    answer = DkgBoardClient(node.contract).publish_result(
        result.nonce, result.public, [by_index[i] for i in result.qual]
    )
    _log.info(
        "kgc node %d published its reshare view: %s (%d of %d agree)",
        node.index,
        answer.outcome,
        answer.agree,
        answer.threshold,
    )
    return answer.outcome
