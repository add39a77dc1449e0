"""What every honest RC-DBFT replica derives from the committed chain, held once per run.

It must hold only committed or signed data (never one node's private view).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..policy import EpochConfig, EpochStats, RepRecord
from .wire import Report

__all__ = ["RcLedger"]


@dataclass
class RcLedger:
    """Committed data shared by construction: what every honest node derives from the chain
    (computed once here because safety guarantees all honest nodes see the same blocks)."""

    epoch_blocks: int
    recluster_every: int
    configs: dict[int, EpochConfig] = field(default_factory=dict)
    recs: dict[int, RepRecord] = field(default_factory=dict)
    stats: dict[int, EpochStats] = field(default_factory=dict)
    accounted: int = 0
    rep_history: list[dict[int, float]] = field(default_factory=list)
    signed: set[tuple[str, int, int, int, int]] = field(default_factory=set)
    join_requests: set[int] = field(default_factory=set)
    leave_requests: set[int] = field(default_factory=set)
    seen_evidence: set[int] = field(default_factory=set)
    included: set[tuple[int, int]] = field(default_factory=set)
    # (height, node) already credited with participation; receipts included in blocks
    counted: set[tuple[int, int]] = field(default_factory=set)
    receipts_in: set[tuple[int, int]] = field(default_factory=set)
    fork_attack: dict[str, Any] | None = None
    # Signed view-change reports: (new view, report). A report is what one cluster member
    # signs about itself; a leader can choose which reports to forward but cannot make one up.
    vc_reports: set[tuple[int, Report]] = field(default_factory=set)
    fetch_delay_s: float = 0.01

    def epoch_of(self, height: int) -> int:
        return (height - 1) // self.epoch_blocks

    def config_for(self, height: int) -> EpochConfig:
        return self.configs[self.epoch_of(height)]
