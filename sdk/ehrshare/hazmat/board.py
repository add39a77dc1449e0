"""The DKG broadcast board, an in-memory implementation, and the one driver that runs a session.

A :class:`Board` stores opaque bundle bytes per (session nonce, phase) and hands back everything
posted for a phase. In production the chaincode is the board (it stores the bytes as base64 in the
world state, binds each bundle's sender index to the posting identity, and ends each phase with a
committed CloseDKGPhase that later posts cannot pass; see ``ehrshare.services.kgc.LedgerBoard``);
:class:`InMemoryBoard` serves tests and the benchmark.

:func:`drive` is the protocol driver of dedis/kyber's ``dkg.Protocol``: deal → response →
justification → finish for any :class:`Participant` (a DKG or a resharing participation, in
memory or on chain), with the end of each phase left to a :class:`Phaser` — :class:`HookPhaser`
closes at once after a hook (tests inject faults there), the ledger's phaser waits for the
chain's committed close. :func:`run_dkg` and :func:`run_reshare` drive n in-process protocol
objects with it.

The board does not verify bundles (nodes do, so a lying board can only withhold or reorder, never
forge); it must not parse secrets (there are none on it) and does no cryptography.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from ehrshare.hazmat.dkg import (
    NONCE_SIZE,
    BundleKind,
    DKGError,
    DKGNode,
    DKGResult,
    Phase,
)
from ehrshare.hazmat.reshare import ReshareNode, ResharePhase

__all__ = [
    "Board",
    "DKGRun",
    "Driven",
    "HookPhaser",
    "InMemoryBoard",
    "Participant",
    "PhaseHook",
    "Phaser",
    "Step",
    "deadline_hook",
    "drive",
    "run_dkg",
    "run_reshare",
]

_log = logging.getLogger(__name__)


@runtime_checkable
class Board(Protocol):
    """Where DKG nodes publish bundles. Implementations: :class:`InMemoryBoard`, the chaincode.

    ``post`` must be append-only (a second, different bundle from one sender stays visible so
    that equivocation can be proven); ``read`` returns every bundle of a phase in posting order.
    """

    def post(self, session: bytes, phase: BundleKind, bundle: bytes) -> None:
        """Append one bundle's bytes to a session's phase."""
        ...

    def read(self, session: bytes, phase: BundleKind) -> list[bytes]:
        """All bundles posted to a session's phase, oldest first."""
        ...


class InMemoryBoard:
    """A :class:`Board` in a dict, safe to share between threads. For tests and benchmarks."""

    def __init__(self) -> None:
        self._entries: dict[tuple[bytes, BundleKind], list[bytes]] = {}
        self._lock = threading.Lock()

    def post(self, session: bytes, phase: BundleKind, bundle: bytes) -> None:
        """Append ``bundle``; identical re-posts are kept too (nodes de-duplicate)."""
        if len(session) != NONCE_SIZE:
            raise ValueError(f"session nonce must be {NONCE_SIZE} bytes, got {len(session)}")
        if not isinstance(bundle, bytes) or not bundle:
            raise ValueError("bundle must be non-empty bytes")
        with self._lock:
            self._entries.setdefault((session, BundleKind(phase)), []).append(bundle)

    def read(self, session: bytes, phase: BundleKind) -> list[bytes]:
        """A copy of the phase's bundles, oldest first."""
        with self._lock:
            return list(self._entries.get((session, BundleKind(phase)), []))

    def __repr__(self) -> str:
        with self._lock:
            sizes = {f"{s.hex()[:8]}/{p.name}": len(v) for (s, p), v in self._entries.items()}
        return f"InMemoryBoard({sizes})"


PhaseHook = Callable[[BundleKind, Board], None]
"""Called after every node posted for a phase and before anyone reads it (deadline, faults)."""


def deadline_hook(seconds: float, *, sleep: Callable[[float], None] = time.sleep) -> PhaseHook:
    """A :data:`PhaseHook` that waits ``seconds`` at the end of every phase.

    For runs where bundles arrive from elsewhere (other processes posting to a shared board):
    the phase closes when the wait is over, and whatever is on the board then is what counts.
    """
    if seconds < 0:
        raise ValueError(f"phase deadline must be ≥ 0 seconds, got {seconds}")

    def hook(phase: BundleKind, board: Board) -> None:
        _log.debug("phase %s: waiting %.3f s for late bundles", phase.name, seconds)
        sleep(seconds)

    return hook


class Step(enum.Enum):
    """Where in a session a participant's call (or the justification wait) failed."""

    RESPONSE = "response"
    JUSTIFICATION = "justification"
    JUSTIFICATION_WAIT = "justification-wait"
    FINISH = "finish"


_R_co = TypeVar("_R_co", covariant=True)
_R = TypeVar("_R")
_T = TypeVar("_T")


class Participant(Protocol[_R_co]):
    """One node's way through one session, one board phase per call (kyber's protocol object
    bound to its board). Implementations: the in-memory adapters below, and the KGC service's
    ``DkgParticipation`` / ``ReshareParticipation``."""

    def post_deal(self) -> None:
        """Post this node's deal (if it deals)."""
        ...

    def post_response(self) -> None:
        """Read the closed deal phase; post this node's verdict (if it responds)."""
        ...

    def post_justification(self) -> bool:
        """Read the closed response phase; post a justification if complained about. True when
        the session needs a justification phase."""
        ...

    def finish(self) -> _R_co:
        """Read the justifications (if any were needed) and return this node's outcome."""
        ...


class Phaser(Protocol):
    """Ends a phase: returns once the phase's bundle set is final (kyber's ``Phaser``)."""

    def close(self, phase: BundleKind) -> None:
        """Wait until ``phase`` is closed; raise when it never will be."""
        ...


class HookPhaser:
    """A :class:`Phaser` for an in-memory board: every participant posted, so a phase closes at
    once, after ``on_phase_end`` (deadline waits, injected faults) ran."""

    def __init__(self, board: Board, on_phase_end: PhaseHook | None = None) -> None:
        self._board = board
        self._hook = on_phase_end

    def close(self, phase: BundleKind) -> None:
        """Run the hook (if any); the phase is then closed."""
        if self._hook is not None:
            self._hook(phase, self._board)


@dataclass
class Driven(Generic[_R]):
    """What :func:`drive` saw, by position in its participant list."""

    results: dict[int, _R] = field(default_factory=dict)
    failures: dict[int, DKGError] = field(default_factory=dict)
    needed_justifications: bool = False


def _never(step: Step, exc: DKGError) -> bool:
    return False


def drive(
    participants: Sequence[Participant[_R]],
    phaser: Phaser,
    *,
    tolerate: Callable[[Step, DKGError], bool] = _never,
) -> Driven[_R]:
    """Run one session: every participant deals, the phaser closes the deal phase, everyone
    responds, the response phase closes, everyone justifies if it must, the justification
    phase closes when anyone needed it, and everyone finishes.

    A :class:`~ehrshare.hazmat.dkg.DKGError` at a participant's step that ``tolerate`` accepts
    drops that participant (recorded in ``failures``; the others go on); a failed justification
    wait that it accepts drops everyone still waiting. Anything else is raised at once. The
    deal step and the deal and response waits never tolerate: nothing can go on without them.
    """
    out: Driven[_R] = Driven()
    live = dict(enumerate(participants))

    def each(step: Step, call: Callable[[Participant[_R]], _T]) -> dict[int, _T]:
        answers: dict[int, _T] = {}
        for position, participant in list(live.items()):
            try:
                answers[position] = call(participant)
            except DKGError as exc:
                if not tolerate(step, exc):
                    raise
                out.failures[position] = exc
                del live[position]
        return answers

    for participant in participants:
        participant.post_deal()
    phaser.close(BundleKind.DEAL)
    each(Step.RESPONSE, lambda p: p.post_response())
    phaser.close(BundleKind.RESPONSE)
    needs = each(Step.JUSTIFICATION, lambda p: p.post_justification())
    if any(needs.values()):
        out.needed_justifications = True
        try:
            phaser.close(BundleKind.JUSTIFICATION)
        except DKGError as exc:
            if not tolerate(Step.JUSTIFICATION_WAIT, exc):
                raise
            for position in list(live):
                out.failures[position] = exc
                del live[position]
    out.results = each(Step.FINISH, lambda p: p.finish())
    return out


@dataclass
class DKGRun:
    """What :func:`run_dkg` observed at each node (by index)."""

    results: dict[int, DKGResult] = field(default_factory=dict)
    failures: dict[int, DKGError] = field(default_factory=dict)
    needed_justifications: bool = False

    @property
    def mpk_agreed(self) -> bool:
        """True when every node that finished holds the same public polynomial."""
        encodings = {r.public.to_bytes() for r in self.results.values()}
        return len(encodings) == 1

    def only_result(self) -> DKGResult:
        """Any one node's result, after checking that all finished nodes agree."""
        if not self.results:
            if self.failures:
                raise next(iter(self.failures.values()))
            raise RuntimeError("no node finished the DKG")
        if not self.mpk_agreed:
            raise AssertionError("nodes finished with different public polynomials")
        return next(iter(self.results.values()))


def _in_memory(step: Step, exc: DKGError) -> bool:
    # In memory a node that fails drops out and the others go on (tests look at who failed).
    return True


@dataclass
class _OnBoard:
    """A pure protocol object (:class:`~ehrshare.hazmat.dkg.DKGNode` or
    :class:`~ehrshare.hazmat.reshare.ReshareNode`) as a :class:`Participant` of one board."""

    node: DKGNode | ReshareNode
    board: Board
    posts: Callable[[BundleKind], bool] = lambda kind: True

    @property
    def session(self) -> bytes:
        return self.node.config.nonce

    def _post(self, kind: BundleKind, bundle: Any) -> None:
        if bundle is not None and self.posts(kind):
            self.board.post(self.session, kind, bundle.to_bytes())

    def post_deal(self) -> None:
        self._post(BundleKind.DEAL, self.node.deals())

    def post_response(self) -> None:
        bundles = self.board.read(self.session, BundleKind.DEAL)
        self._post(BundleKind.RESPONSE, self.node.process_deals(bundles))

    def post_justification(self) -> bool:
        bundles = self.board.read(self.session, BundleKind.RESPONSE)
        self._post(BundleKind.JUSTIFICATION, self.node.process_responses(bundles))
        return self.node.phase in (
            Phase.AWAITING_JUSTIFICATIONS,
            ResharePhase.AWAITING_JUSTIFICATIONS,
        )

    def finish(self) -> DKGResult | None:
        if self.node.phase in (Phase.AWAITING_JUSTIFICATIONS, ResharePhase.AWAITING_JUSTIFICATIONS):
            self.node.process_justifications(
                self.board.read(self.session, BundleKind.JUSTIFICATION)
            )
        if isinstance(self.node, ReshareNode) and self.node.index is None:
            return None  # a dealer leaving the committee: no new share
        return self.node.result()


def run_dkg(
    nodes: Sequence[DKGNode],
    board: Board,
    *,
    on_phase_end: PhaseHook | None = None,
    participating: Mapping[BundleKind, frozenset[int]] | None = None,
) -> DKGRun:
    """Run one DKG session among in-process ``nodes`` over ``board`` (with :func:`drive`).

    ``on_phase_end`` runs after each phase's posts (tests inject replays, equivocation or
    drops there). ``participating`` optionally limits which node indices post in a phase —
    e.g. ``{BundleKind.RESPONSE: frozenset({1, 2})}`` models nodes that go silent — while every
    node still reads the board. Nodes missing from ``nodes`` altogether are absent throughout.
    """
    if not nodes:
        raise ValueError("run_dkg needs at least one node")
    session = nodes[0].config.nonce
    if any(n.config != nodes[0].config for n in nodes):
        raise ValueError("all nodes of one run must share the same DKGConfig")
    everyone = frozenset(n.index for n in nodes)

    def posting(index: int) -> Callable[[BundleKind], bool]:
        def posts(kind: BundleKind) -> bool:
            return participating is None or index in participating.get(kind, everyone)

        return posts

    driven = drive(
        [_OnBoard(n, board, posting(n.index)) for n in nodes],
        HookPhaser(board, on_phase_end),
        tolerate=_in_memory,
    )
    run = DKGRun(needed_justifications=driven.needed_justifications)
    run.failures = {nodes[p].index: exc for p, exc in driven.failures.items()}
    run.results = {nodes[p].index: r for p, r in driven.results.items() if r is not None}
    _log.info(
        "dkg session %s: %d finished, %d failed",
        session.hex()[:16],
        len(run.results),
        len(run.failures),
    )
    return run


def run_reshare(
    nodes: Sequence[ReshareNode],
    board: Board,
    *,
    on_phase_end: PhaseHook | None = None,
) -> DKGRun:
    """Run one resharing session among in-process ``nodes`` (dealers, new members or both).

    Like :func:`run_dkg`: each node posts what a phase asks of it, ``on_phase_end`` runs before
    the phase is read. ``results`` holds the new members' results by new share index; a node
    that fails lands in ``failures`` under its new index (or, for a leaving dealer, under the
    negative of its old index).
    """
    if not nodes:
        raise ValueError("run_reshare needs at least one node")
    session = nodes[0].config.nonce
    if any(n.config != nodes[0].config for n in nodes):
        raise ValueError("all nodes of one run must share the same ReshareConfig")

    def key(node: ReshareNode) -> int:
        if node.index is not None:
            return node.index
        assert node.dealer_position is not None
        return -node.config.dealer_indices[node.dealer_position - 1]

    driven = drive(
        [_OnBoard(n, board) for n in nodes], HookPhaser(board, on_phase_end), tolerate=_in_memory
    )
    run = DKGRun(needed_justifications=driven.needed_justifications)
    run.failures = {key(nodes[p]): exc for p, exc in driven.failures.items()}
    run.results = {key(nodes[p]): r for p, r in driven.results.items() if r is not None}
    _log.info(
        "reshare session %s: %d new shares, %d failed",
        session.hex()[:16],
        len(run.results),
        len(run.failures),
    )
    return run
