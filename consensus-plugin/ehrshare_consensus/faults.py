"""The fault catalogue: table-driven scenarios applied to a freshly built simulation.

Each scenario names the protocols it applies to, says whether it lies beyond the protocol's
stated assumptions (then a safety or liveness failure is an expected, documented outcome, not
a bug), and installs its faults at a block height or at the start. Scenarios must not reach
into a protocol's decisions beyond choosing node behaviours and network conditions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .core import Node, Sim
from .pbft import ColludingPbftNode, PbftNode
from .policy import cluster_quorum
from .rcdbft import RcLedger, RcNode

__all__ = ["SCENARIOS", "FaultContext", "Scenario"]


@dataclass
class FaultContext:
    """What a scenario may touch: the run, its nodes, the protocol and (RC-DBFT) the ledger."""

    sim: Sim
    nodes: list[Node]
    protocol: str
    ledger: RcLedger | None
    fault_height: int
    fault_time: float | None = None
    targets: list[int] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def primary(self) -> int:
        if self.protocol == "rcdbft":
            assert self.ledger is not None
            live = [
                n
                for n in self.nodes
                if isinstance(n, RcNode) and n.cfg is not None and not n.crashed
            ]
            best = max(live, key=lambda n: (n.last_exec, n.view, -n.id))
            return best.primary(best.view)
        if self.protocol == "pbft":
            node0 = self.nodes[0]
            assert isinstance(node0, PbftNode)
            views = [n.view for n in self.nodes if isinstance(n, PbftNode) and not n.crashed]
            return max(views) % node0.n
        leaders = [n.id for n in self.nodes if getattr(n, "role", "") == "leader" and not n.crashed]
        return leaders[0] if leaders else 0

    def at_height(self, fn: Callable[[], None]) -> None:
        def fire() -> None:
            self.fault_time = self.sim.env.now
            fn()

        self.sim.height_triggers.setdefault(self.fault_height, []).append(fire)

    def f(self) -> int:
        return (self.sim.n - 1) // 3 if self.protocol != "raft" else (self.sim.n - 1) // 2

    def spread_members(self, count: int, clusters: int | None = None) -> list[int]:
        """Non-leader nodes, f_c per cluster in the first `clusters` clusters (RC-DBFT), or the
        highest ids except the primary (flat protocols)."""
        if self.protocol == "rcdbft":
            assert self.ledger is not None
            cfg = self.ledger.configs[0]
            picks: list[int] = []
            for c, members in enumerate(cfg.clusters[:clusters]):
                fc = cluster_quorum(len(members))[0]
                others = [i for i in members if i != cfg.ranking[c][0]][::-1]
                picks.extend(others[:fc])
            return picks[:count]
        prim = self.primary()
        return [i for i in range(self.sim.n - 1, -1, -1) if i != prim][:count]


@dataclass(frozen=True)
class Scenario:
    """One row of the fault table."""

    name: str
    protocols: tuple[str, ...]
    description: str
    install: Callable[[FaultContext], None]
    beyond_assumptions: bool = False
    loss: float = 0.0


def _none(ctx: FaultContext) -> None:
    return None


def _crash(ctx: FaultContext) -> None:
    if ctx.protocol == "rcdbft":
        # f_c crashes in each of f_top clusters: however a later re-clustering places them, at
        # most f_top clusters can exceed their bound (see _crash_per_cluster for the rest).
        assert ctx.ledger is not None
        f_top = cluster_quorum(len(ctx.ledger.configs[0].clusters))[0]
        victims = ctx.spread_members(ctx.f(), clusters=max(f_top, 1))
    else:
        victims = ctx.spread_members(ctx.f())
    ctx.targets = victims

    def go() -> None:
        for i in victims:
            ctx.nodes[i].crashed = True
        ctx.sim.note("crash", nodes=victims)

    ctx.at_height(go)


def _crash_per_cluster(ctx: FaultContext) -> None:
    # f_c crashes in *every* cluster: within each cluster's bound at the start, but the policy
    # cannot tell a crashed node from an honest member of a cluster whose leader crashed (both
    # signed nothing), so a re-clustering may put two crashed nodes in one 4-node cluster.
    victims = ctx.spread_members(ctx.sim.n)
    ctx.targets = victims

    def go() -> None:
        for i in victims:
            ctx.nodes[i].crashed = True
        ctx.sim.note("crash", nodes=victims)

    ctx.at_height(go)


def _crash_primary(ctx: FaultContext) -> None:
    def go() -> None:
        p = ctx.primary()
        ctx.targets = [p]
        ctx.nodes[p].crashed = True
        ctx.sim.note("crash", nodes=[p])

    ctx.at_height(go)


def _silent(ctx: FaultContext) -> None:
    victims = ctx.spread_members(ctx.f())
    ctx.targets = victims
    for i in victims:
        ctx.nodes[i].silent = True
        ctx.nodes[i].honest = False
        ctx.nodes[i].behaviour = "silent"


def _slow_leader(ctx: FaultContext) -> None:
    def go() -> None:
        p = ctx.primary()
        ctx.targets = [p]
        ctx.nodes[p].extra_delay = 0.4 * ctx.sim.params.view_timeout_s
        ctx.sim.note("slow", node=p)

    ctx.at_height(go)


def _equivocating_primary(ctx: FaultContext) -> None:
    def go() -> None:
        p = ctx.primary()
        ctx.targets = [p]
        node = ctx.nodes[p]
        node.honest = False
        node.behaviour = "equivocate"
        if isinstance(node, PbftNode):
            node.equivocate_from = 0.0
        if isinstance(node, RcNode):
            node.attack_from = 0.0

    ctx.at_height(go)


def _byzantine_leader(ctx: FaultContext) -> None:
    def go() -> None:
        live = [n for n in ctx.nodes if isinstance(n, RcNode) and n.cfg is not None]
        ref = max(live, key=lambda n: (n.last_exec, -n.id))
        victim = ref.leader((ref.view + 1) % ref.k)  # a leader that is not the primary
        ctx.targets = [victim]
        node = ctx.nodes[victim]
        assert isinstance(node, RcNode)
        node.honest = False
        node.behaviour = "byz_leader"
        node.attack_from = 0.0
        ctx.sim.note("byzantine", node=victim)

    ctx.at_height(go)


def _farming(ctx: FaultContext) -> None:
    assert ctx.ledger is not None
    cfg = ctx.ledger.configs[0]
    victim = cfg.leaders[1] if len(cfg.leaders) > 1 else cfg.leaders[0]
    ctx.targets = [victim]
    node = ctx.nodes[victim]
    assert isinstance(node, RcNode)
    node.honest = False  # Byzantine from the start, but well-behaved until the attack
    node.behaviour = "farming"

    def go() -> None:
        node.attack_from = 0.0

    ctx.at_height(go)


def _partition(ctx: FaultContext) -> None:
    def go() -> None:
        p = ctx.primary()
        if ctx.protocol == "rcdbft":
            assert ctx.ledger is not None
            node = ctx.nodes[p]
            assert isinstance(node, RcNode) and node.cfg is not None
            side = list(node.cfg.clusters[node.myc])
        else:
            side = [p, *[i for i in range(ctx.sim.n) if i != p][: ctx.f() - 1]]
        rest = [i for i in range(len(ctx.nodes)) if i not in side]
        ctx.targets = side
        ctx.sim.net.set_partition([side, rest])
        ctx.sim.note("partition", minority=side)

        def heal() -> None:
            ctx.sim.net.set_partition(None)
            ctx.sim.note("heal")

        vt = ctx.sim.params.view_timeout_s
        ctx.sim.env.timeout(5 * vt).callbacks.append(lambda _ev: heal())
        ctx.sim.min_end = ctx.sim.env.now + 10 * vt  # run on after the heal: catch-up shows

    ctx.at_height(go)


def _join_leave(ctx: FaultContext) -> None:
    assert ctx.ledger is not None
    ledger = ctx.ledger
    leaving = ctx.spread_members(2)
    joining = list(range(ctx.sim.n, ctx.sim.n + ctx.sim.params.extra_nodes))
    ctx.targets = leaving + joining

    def go() -> None:
        ledger.leave_requests.update(leaving)
        ledger.join_requests.update(joining)
        ctx.sim.note("membership_requests", leave=leaving, join=joining)

    ctx.at_height(go)


def _collusion_beyond_f(ctx: FaultContext) -> None:
    # f+1 Byzantine replicas: the primary equivocates and a colluder votes for both blocks.
    prim = ctx.primary()
    colluder = next(i for i in range(ctx.sim.n) if i != prim)
    node = ctx.nodes[prim]
    assert isinstance(node, PbftNode)
    node.honest = False
    node.behaviour = "equivocate"
    node.colluders = [colluder]
    old = ctx.nodes[colluder]
    bad = ColludingPbftNode(ctx.sim, colluder)
    bad.honest = False
    bad.behaviour = "collude"
    assert isinstance(old, PbftNode)
    ctx.nodes[colluder] = bad
    ctx.sim.nodes[colluder] = bad
    ctx.sim.net.nodes[colluder] = bad
    ctx.targets = [prim, colluder]

    def go() -> None:
        node.equivocate_from = 0.0

    ctx.at_height(go)


def _two_byzantine_leaders(ctx: FaultContext) -> None:
    # f_top + 1 = 2 colluding cluster leaders (K = 4), i.e. 2 of 16 nodes whose clusters' members
    # are honest. The primary sends block X only to its accomplice and to the honest leaders
    # that commit it; both colluders then deny having prepared X (their own reports, and they
    # forward the fewest members' reports showing X), and the accomplice, primary of the next
    # view, builds its new-view quorum from the leaders that never saw X and proposes Y at the
    # same height. Until the view change carried members' signed reports this forked RC-DBFT;
    # now the members' reports force X and the lie is caught (a stall, not a fork).
    def go() -> None:
        live = [n for n in ctx.nodes if isinstance(n, RcNode) and n.cfg is not None]
        ref = max(live, key=lambda n: (n.last_exec, -n.id))
        k = ref.k
        f_top, q_top = cluster_quorum(k)
        if f_top != 1:
            ctx.sim.note("fork_attack_not_applicable", k=k)
            return
        v0 = ref.view
        a, b = ref.primary(v0), ref.leader((v0 + 1) % k)
        honest = [ref.leader(c) for c in range(k) if ref.leader(c) not in (a, b)]
        committers, excluded = honest[: q_top - 2], honest[q_top - 2 :]
        assert ctx.ledger is not None
        ctx.ledger.fork_attack = {
            "view": v0,
            "height": ctx.fault_height + 2,
            "committers": committers,
            "excluded": excluded,
        }
        ctx.targets = [a, b]
        for i in (a, b):
            node = ctx.nodes[i]
            node.honest = False
            node.behaviour = "fork_attack"
        ctx.sim.note("colluding_leaders", nodes=[a, b], committers=committers, excluded=excluded)

    ctx.at_height(go)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("none", ("pbft", "rcdbft", "raft"), "no faults", _none),
        Scenario(
            "crash",
            ("pbft", "rcdbft", "raft"),
            "f non-primary nodes crash (RC-DBFT: f_c in each of f_top clusters)",
            _crash,
        ),
        Scenario(
            "crash_per_cluster",
            ("rcdbft",),
            "f_c crashes in every cluster (re-clustering may break the per-cluster bound)",
            _crash_per_cluster,
            beyond_assumptions=True,
        ),
        Scenario(
            "crash_primary",
            ("pbft", "rcdbft", "raft"),
            "the primary/leader crashes",
            _crash_primary,
        ),
        Scenario("silent", ("pbft", "rcdbft"), "f Byzantine nodes never send", _silent),
        Scenario(
            "slow_leader",
            ("pbft", "rcdbft", "raft"),
            "the primary delays every message by 0.4 view timeouts",
            _slow_leader,
        ),
        Scenario(
            "equivocating_primary",
            ("pbft", "rcdbft"),
            "the primary sends different blocks to two halves",
            _equivocating_primary,
        ),
        Scenario(
            "byzantine_leader",
            ("rcdbft",),
            "a cluster leader withholds proposals and forges a QC",
            _byzantine_leader,
        ),
        Scenario(
            "reputation_farming",
            ("rcdbft",),
            "a leader behaves well, then forges QCs and equivocates",
            _farming,
        ),
        Scenario(
            "message_loss", ("pbft", "rcdbft", "raft"), "2% of copies dropped", _none, loss=0.02
        ),
        Scenario(
            "partition_heal",
            ("pbft", "rcdbft", "raft"),
            "the primary's side (≤ f nodes / its cluster) is cut off, then healed",
            _partition,
        ),
        Scenario("join_leave", ("rcdbft",), "two members leave, the extra nodes join", _join_leave),
        Scenario(
            "two_byzantine_leaders",
            ("rcdbft",),
            "f_top+1 colluding cluster leaders (2 of 16 nodes, honest members) try to fork",
            _two_byzantine_leaders,
        ),
        Scenario(
            "collusion_beyond_f",
            ("pbft",),
            "f+1 Byzantine replicas (equivocating primary + double-voting colluder), n=4",
            _collusion_beyond_f,
            beyond_assumptions=True,
        ),
    )
}
