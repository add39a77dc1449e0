"""The DKG broadcast board, an in-memory implementation, and a driver that runs a whole DKG.

A :class:`Board` stores opaque bundle bytes per (session nonce, phase) and hands back everything
posted for a phase. In production the chaincode is the board (it stores the bytes as base64 in the
world state, binds each bundle's sender index to the posting identity, and ends each phase with a
committed CloseDKGPhase that later posts cannot pass; see ``ehrshare.services.kgc.LedgerBoard``);
:class:`InMemoryBoard` serves tests and the benchmark. :func:`run_dkg` sequences the phases for n
in-process :class:`~ehrshare.hazmat.dkg.DKGNode` objects — the "phaser" of dedis/kyber, reduced to
calling a hook at the end of each phase (tests inject faults there; a deployment waits for the
chain's committed close instead).

The board does not verify bundles (nodes do, so a lying board can only withhold or reorder, never
forge); it must not parse secrets (there are none on it) and does no cryptography.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

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
    "InMemoryBoard",
    "PhaseHook",
    "deadline_hook",
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


def run_dkg(
    nodes: Sequence[DKGNode],
    board: Board,
    *,
    on_phase_end: PhaseHook | None = None,
    participating: Mapping[BundleKind, frozenset[int]] | None = None,
) -> DKGRun:
    """Run one DKG session among in-process ``nodes`` over ``board``.

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
    run = DKGRun()
    live = {n.index: n for n in nodes}

    def posts(kind: BundleKind, index: int) -> bool:
        return participating is None or index in participating.get(kind, frozenset(live))

    def end_phase(kind: BundleKind) -> None:
        if on_phase_end is not None:
            on_phase_end(kind, board)

    for node in nodes:
        deal = node.deals()
        if posts(BundleKind.DEAL, node.index):
            board.post(session, BundleKind.DEAL, deal.to_bytes())
    end_phase(BundleKind.DEAL)

    def step(
        read: BundleKind, post: BundleKind, call: Callable[[DKGNode, list[bytes]], Any]
    ) -> None:
        """Every live node reads one phase and posts its answer (if any) to the next."""
        bundles = board.read(session, read)
        for index, node in list(live.items()):
            try:
                answer = call(node, bundles)
            except DKGError as exc:
                run.failures[index] = exc
                del live[index]
                continue
            if answer is not None and posts(post, index):
                board.post(session, post, answer.to_bytes())

    step(BundleKind.DEAL, BundleKind.RESPONSE, DKGNode.process_deals)
    end_phase(BundleKind.RESPONSE)
    step(BundleKind.RESPONSE, BundleKind.JUSTIFICATION, DKGNode.process_responses)

    if any(n.phase is Phase.AWAITING_JUSTIFICATIONS for n in live.values()):
        run.needed_justifications = True
        end_phase(BundleKind.JUSTIFICATION)
        justifications = board.read(session, BundleKind.JUSTIFICATION)
        for index, node in list(live.items()):
            if node.phase is not Phase.AWAITING_JUSTIFICATIONS:
                continue
            try:
                node.process_justifications(justifications)
            except DKGError as exc:
                run.failures[index] = exc
                del live[index]

    for index, node in live.items():
        run.results[index] = node.result()
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
    run = DKGRun()

    def key(node: ReshareNode) -> int:
        if node.index is not None:
            return node.index
        assert node.dealer_position is not None
        return -node.config.dealer_indices[node.dealer_position - 1]

    live = {key(n): n for n in nodes}

    def end_phase(kind: BundleKind) -> None:
        if on_phase_end is not None:
            on_phase_end(kind, board)

    for node in nodes:
        deal = node.deals()
        if deal is not None:
            board.post(session, BundleKind.DEAL, deal.to_bytes())
    end_phase(BundleKind.DEAL)

    def step(
        read: BundleKind, post: BundleKind, call: Callable[[ReshareNode, list[bytes]], Any]
    ) -> None:
        bundles = board.read(session, read)
        for k, node in list(live.items()):
            try:
                answer = call(node, bundles)
            except DKGError as exc:
                run.failures[k] = exc
                del live[k]
                continue
            if answer is not None:
                board.post(session, post, answer.to_bytes())

    step(BundleKind.DEAL, BundleKind.RESPONSE, ReshareNode.process_deals)
    end_phase(BundleKind.RESPONSE)
    step(BundleKind.RESPONSE, BundleKind.JUSTIFICATION, ReshareNode.process_responses)
    if any(n.phase is ResharePhase.AWAITING_JUSTIFICATIONS for n in live.values()):
        run.needed_justifications = True
        end_phase(BundleKind.JUSTIFICATION)
        justifications = board.read(session, BundleKind.JUSTIFICATION)
        for k, node in list(live.items()):
            if node.phase is not ResharePhase.AWAITING_JUSTIFICATIONS:
                continue
            try:
                node.process_justifications(justifications)
            except DKGError as exc:
                run.failures[k] = exc
                del live[k]
    for k, node in live.items():
        if node.index is not None:
            run.results[k] = node.result()
    _log.info(
        "reshare session %s: %d new shares, %d failed",
        session.hex()[:16],
        len(run.results),
        len(run.failures),
    )
    return run
