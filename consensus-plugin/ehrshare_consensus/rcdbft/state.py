"""An RC-DBFT replica's private state, grouped by the role that reads and writes it.

A replica is a member of its cluster, possibly its leader, and takes part in view changes
in either role; each group below belongs to one of those roles. Nothing here is shared
between replicas (committed data lives in `RcLedger`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ..core import Msg
from .wire import Report

__all__ = ["LeaderState", "MemberState", "ViewChangeState"]

Key = tuple[int, int, int]  # (view, height, digest)


@dataclass
class MemberState:
    """What a cluster member keeps: its votes, its participation receipts, its complaints."""

    # (view, height) -> the digest we PREPARE-voted for (never two at one (view, height))
    voted: dict[tuple[int, int], int] = field(default_factory=dict)
    # Participation receipts: our own COMMIT votes, and heights whose committed participant
    # lists named us.
    my_cv: dict[int, tuple[int, int]] = field(default_factory=dict)
    listed: set[int] = field(default_factory=set)
    # Blocks decided in a row without our vote (a leader excluding us).
    skipped: int = 0
    # FWDs of a view whose new-view certificate we have not checked yet.
    await_nv: defaultdict[int, list[Msg]] = field(default_factory=lambda: defaultdict(list))
    # (cluster, next leader index) -> complaints (LC) by sender
    lcs: defaultdict[tuple[int, int], dict[int, Msg]] = field(
        default_factory=lambda: defaultdict(dict)
    )


@dataclass
class LeaderState:
    """What a cluster leader (and, among leaders, the primary) keeps for the normal case."""

    # (view, height) -> (digest, primary) of the proposal we lead there
    accepted: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    pv: defaultdict[Key, set[int]] = field(default_factory=lambda: defaultdict(set))
    cv: defaultdict[Key, set[int]] = field(default_factory=lambda: defaultdict(set))
    pqc: defaultdict[Key, dict[int, tuple[int, ...]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    cqc: defaultdict[Key, dict[int, tuple[int, ...]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    # (QC kind or PREP, view, height) already sent
    sent: set[tuple[str, int, int]] = field(default_factory=set)
    # height -> cluster -> (its leader, participants) of the commit QC: the next block's cert
    qc_book: defaultdict[int, dict[int, tuple[int, tuple[int, ...]]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    deposed_pending: dict[int, int] = field(default_factory=dict)
    # A new primary's own proposal, led once it has caught up to the height before it.
    pending_lead: tuple[int, int, int] | None = None
    # (As a proposer) members' receipts to put in the next block.
    rcpts: set[tuple[int, int, int]] = field(default_factory=set)


@dataclass
class ViewChangeState:
    """Top-level view changes, as a leader (intents, reports, certificates) and as a member
    (checked new-view certificates)."""

    # view -> (first height, digest the new-view certificate binds there), once verified
    nv_ok: dict[int, tuple[int, int]] = field(default_factory=dict)
    nv_proof: dict[int, Msg] = field(default_factory=dict)
    nv_told: defaultdict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    vcr: defaultdict[int, dict[int, Report]] = field(default_factory=lambda: defaultdict(dict))
    tvcs: defaultdict[int, dict[int, Msg]] = field(default_factory=lambda: defaultdict(dict))
    tvis: defaultdict[int, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    collecting: set[int] = field(default_factory=set)
    reported_view: int = 0
    nv_sent: set[int] = field(default_factory=set)
