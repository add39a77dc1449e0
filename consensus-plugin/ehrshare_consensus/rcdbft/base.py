"""The RC-DBFT replica's common ground: its state by role, its roles in the current epoch, and
the steps each part of the protocol needs from the others.

`RcNode` is one class written across modules, as fabric-samples splits one contract: the
normal case (`normal.NormalCase`), view changes (`viewchange.ViewChange`) and dispatch,
execution and state transfer (`node.RcNode`) all extend this base. This module must not hold
protocol steps beyond role lookups and the declarations below.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..core import Msg, Node, Sim
from ..policy import EpochConfig, cluster_quorum
from .ledger import RcLedger
from .state import LeaderState, MemberState, ViewChangeState
from .wire import QC_WINDOW

__all__ = ["RcBase"]


class RcBase(Node):
    """One RC-DBFT replica. Roles (leader, member, observer) come from the epoch config."""

    def __init__(self, sim: Sim, nid: int, ledger: RcLedger) -> None:
        super().__init__(sim, nid)
        self.ledger = ledger
        self.cfg: EpochConfig | None = None
        self.view = 0
        self.in_vc = False
        self.progress = 0
        self.vc_timeout = sim.params.view_timeout_s
        self.leader_idx: list[int] = []
        self.attack_from = float("inf")
        # every voter: what it prepared (as a member, or as a leader for its members)
        self.prepared: dict[int, tuple[int, int]] = {}
        self.prep_sigs: dict[int, int] = {}
        self.evidence: set[int] = set()
        self.future: defaultdict[int, list[Msg]] = defaultdict(list)
        self.proposing = False
        self.fetching = False
        self.wd_gen = 0
        self.as_member = MemberState()
        self.as_leader = LeaderState()
        self.vc = ViewChangeState()

    # -- roles ----------------------------------------------------------------------------------
    def set_config(self, cfg: EpochConfig) -> None:
        self.cfg = cfg
        self.leader_idx = [0] * len(cfg.clusters)
        self.cluster_of = {i: c for c, members in enumerate(cfg.clusters) for i in members}
        self.myc = self.cluster_of.get(self.id, -1)
        self.obs_cluster = {o: o % len(cfg.clusters) for o in cfg.observers}
        self.as_member.lcs.clear()

    @property
    def k(self) -> int:
        assert self.cfg is not None
        return len(self.cfg.clusters)

    def leader(self, c: int) -> int:
        assert self.cfg is not None
        rank = self.cfg.ranking[c]
        return rank[min(self.leader_idx[c], len(rank) - 1)]

    def is_leader(self) -> bool:
        return self.myc >= 0 and self.leader(self.myc) == self.id

    def primary(self, view: int) -> int:
        return self.leader(view % self.k)

    def leaders_except_me(self) -> list[int]:
        return [self.leader(c) for c in range(self.k) if self.leader(c) != self.id]

    def my_members(self) -> list[int]:
        assert self.cfg is not None
        return [i for i in self.cfg.clusters[self.myc] if i != self.id]

    def my_observers(self) -> list[int]:
        return [o for o, c in self.obs_cluster.items() if c == self.myc]

    def q_top(self) -> int:
        return cluster_quorum(self.k)[1]

    def q_c(self, c: int) -> int:
        assert self.cfg is not None
        return cluster_quorum(len(self.cfg.clusters[c]))[1]

    def attacking(self) -> bool:
        return not self.honest and self.t >= self.attack_from

    def block_meta(self, s: int) -> dict[str, Any]:
        cert: dict[int, dict[int, tuple[int, tuple[int, ...]]]] = {}
        for h in range(s - 1, s - 1 - QC_WINDOW, -1):
            for c, parts in self.as_leader.qc_book.get(h, {}).items():
                if (h, c) not in self.ledger.included:
                    cert.setdefault(h, {})[c] = parts
        return {
            "cert": cert,
            "evidence": sorted(self.evidence - self.ledger.seen_evidence),
            "deposed": dict(self.as_leader.deposed_pending),
            "receipts": sorted(
                r for r in self.as_leader.rcpts if (r[0], r[1]) not in self.ledger.receipts_in
            ),
            "joins": sorted(self.ledger.join_requests),
            "leaves": sorted(self.ledger.leave_requests),
        }

    def fork_plan(self, v: int, s: int) -> dict[str, Any] | None:
        """The colluding leaders' plan if this node is one of them and (v, s) is its target."""
        plan = self.ledger.fork_attack
        if self.behaviour != "fork_attack" or plan is None or s != plan["height"]:
            return None
        return plan if v in (plan["view"], plan["view"] + 1) else None

    def cfg_epoch(self) -> int:
        return self.cfg.epoch if self.cfg is not None else -1

    # -- steps defined in the other parts (normal.py, viewchange.py, node.py) -----------------
    def lead(self, v: int, s: int, d: int) -> None:
        """Lead our cluster through (v, s, d) (normal.py)."""
        raise NotImplementedError

    def on_pp(self, msg: Msg) -> None:
        """A PRE-PREPARE from the primary (normal.py)."""
        raise NotImplementedError

    def on_fwd(self, msg: Msg) -> None:
        """A proposal forwarded by our leader (normal.py)."""
        raise NotImplementedError

    def found_evidence(self, culprit: int) -> None:
        """Record proof of misbehaviour (viewchange.py)."""
        raise NotImplementedError

    def arm_watchdog(self) -> None:
        """(Re)start the progress timer (viewchange.py)."""
        raise NotImplementedError

    def complain(self) -> None:
        """Complain about our cluster leader (viewchange.py)."""
        raise NotImplementedError

    def execute(self, s: int, d: int) -> None:
        """Execute the certified block d at height s (node.py)."""
        raise NotImplementedError

    def request_fetch(self, src: int) -> None:
        """Ask src for the blocks we miss (node.py)."""
        raise NotImplementedError
