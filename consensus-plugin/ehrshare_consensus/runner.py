"""Run one simulated experiment: build the protocol, install the faults, run, check, summarise.

This is the simulated driver behind the harness (`SimulatedDriver`); the live driver
(`live.LiveDriver`, a real Fabric Raft network) implements the same `Driver` protocol. It must
fail loudly: a safety or liveness violation in a scenario within the assumptions raises, it is
never averaged away into a result row.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from .calibrate import CostModel, measured_costs
from .core import NetworkModel, Node, SafetyViolation, Sim, SimParams
from .faults import SCENARIOS, FaultContext
from .pbft import build_pbft
from .raft import build_raft
from .rcdbft import RcLedger, build_rcdbft

__all__ = [
    "PROTOCOLS",
    "Driver",
    "LivenessViolation",
    "RunSpec",
    "SimulatedDriver",
    "run_once",
]

log = logging.getLogger(__name__)

PROTOCOLS = ("pbft", "rcdbft", "raft")


class LivenessViolation(RuntimeError):
    """Progress did not resume within the liveness bound."""


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines one run; two equal specs give identical results."""

    protocol: str
    n: int
    seed: int = 1
    blocks: int = 100
    batch_size: int = 100
    tx_bytes: int = 512
    batch_timeout_s: float = 0.05
    rate: str = "backlog"
    tps: float = 1000.0
    outstanding: int | None = None
    client_delay_s: float = 0.0
    network: NetworkModel = field(default_factory=NetworkModel)
    scenario: str = "none"
    k: int | None = None
    epoch_blocks: int = 10
    recluster_every: int = 10
    view_timeout_s: float = 1.0
    max_time_s: float = 120.0
    warmup_blocks: int = 2
    extra_nodes: int = 0
    liveness_bound_s: float | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.scenario not in SCENARIOS:
            raise ValueError(
                f"unknown fault scenario {self.scenario!r}; known: {sorted(SCENARIOS)}"
            )
        if self.protocol not in SCENARIOS[self.scenario].protocols:
            raise ValueError(f"scenario {self.scenario!r} does not apply to {self.protocol}")
        if self.n < (1 if self.protocol == "raft" else 4):
            raise ValueError(f"n must be at least 4 for BFT protocols, got {self.n}")
        if self.blocks < 1 or self.batch_size < 1:
            raise ValueError("blocks and batch_size must be positive")
        if self.client_delay_s < 0:
            raise ValueError(f"client_delay_s must be >= 0, got {self.client_delay_s}")


class Driver(Protocol):
    """Runs one spec and returns a result row (`SimulatedDriver`, or `live.LiveDriver`)."""

    name: str

    def run(self, spec: RunSpec) -> dict[str, Any]: ...


def run_once(spec: RunSpec, cost: CostModel | None = None) -> dict[str, Any]:
    """Simulate spec; raise SafetyViolation / LivenessViolation within the assumptions."""
    scen = SCENARIOS[spec.scenario]
    net = spec.network
    if scen.loss and net.loss < scen.loss:
        net = replace(net, loss=scen.loss)
    extra = spec.extra_nodes or (3 if spec.scenario == "join_leave" else 0)
    params = SimParams(
        n=spec.n,
        batch_size=spec.batch_size,
        tx_bytes=spec.tx_bytes,
        batch_timeout_s=spec.batch_timeout_s,
        rate=spec.rate,
        outstanding=spec.outstanding,
        client_delay_s=spec.client_delay_s,
        tps=spec.tps,
        max_blocks=spec.blocks,
        max_time_s=spec.max_time_s,
        warmup_blocks=spec.warmup_blocks,
        view_timeout_s=spec.view_timeout_s,
        seed=spec.seed,
        extra_nodes=extra,
    )
    cost = cost or measured_costs()
    sim = Sim(params, net, cost, strict=not scen.beyond_assumptions)
    ledger: RcLedger | None = None
    nodes: list[Node]
    if spec.protocol == "pbft":
        nodes = list(build_pbft(sim))
    elif spec.protocol == "raft":
        nodes = list(build_raft(sim))
    else:
        rc, ledger = build_rcdbft(sim, spec.epoch_blocks, spec.recluster_every, spec.k)
        nodes = list(rc)
    sim.nodes = nodes
    sim.net.nodes = nodes
    fault_height = max(spec.warmup_blocks + 1, spec.blocks // 4)
    ctx = FaultContext(sim, nodes, spec.protocol, ledger, fault_height)
    scen.install(ctx)
    t0 = time.perf_counter()
    try:
        sim.run()
    except SafetyViolation:
        if not scen.beyond_assumptions:
            raise
    wall = time.perf_counter() - t0
    row: dict[str, Any] = {
        "protocol": spec.protocol,
        "n": spec.n,
        "seed": spec.seed,
        "scenario": spec.scenario,
        "network": net.kind,
        "batch_size": spec.batch_size,
        "rate": spec.rate,
        "offered_tps": spec.tps if spec.rate == "poisson" else None,
        "beyond_assumptions": scen.beyond_assumptions,
        "wall_time_s": round(wall, 3),
    }
    row.update(sim.summary())
    row["safety_violations"] = list(sim.checker.violations)
    live = check_liveness(sim, spec)
    row["liveness_violation"] = live
    row["recovery_ms"] = recovery_ms(sim, ctx.fault_time)
    row["fault_targets"] = ctx.targets
    row["view_changes"] = sum(1 for e in sim.events if e["event"] in ("new_view", "leader"))
    if ledger is not None:
        final = ledger.configs[max(ledger.configs)]
        row["k"] = len(ledger.configs[0].clusters)
        row["epochs"] = len(ledger.rep_history) - 1
        row["expelled"] = sorted(final.expelled)
        row["observers"] = list(final.observers)
        row["final_clusters"] = [len(c) for c in final.clusters]
        row["reputation_series"] = {
            str(i): [h.get(i, math.nan) for h in ledger.rep_history] for i in ctx.targets
        }
        # A docs/consensus.md metric: how long until a misbehaving node stops counting (R < 0.3).
        epoch_t = {0: 0.0} | {e["epoch"]: e["t"] for e in sim.events if e["event"] == "epoch"}
        below: dict[str, dict[str, float | int | None]] = {}
        for i in ctx.targets:
            # From its first provable misbehaviour if any, else from the fault (or the start).
            acts = [
                e["t"]
                for e in sim.events
                if e["event"] in ("forged_qc", "equivocation") and e.get("node") == i
            ]
            start = min(acts) if acts else (ctx.fault_time or 0.0)
            hist = [h.get(i, math.nan) for h in ledger.rep_history]
            first = next((e for e, r in enumerate(hist) if r < 0.3), None)
            below[str(i)] = {
                "epoch": first,
                "virtual_s_after_misbehaviour": None
                if first is None
                else round(max(0.0, epoch_t.get(first, math.nan) - start), 6),
            }
        row["below_observer_threshold"] = below
    row["events"] = _event_counts(sim)
    if live and not scen.beyond_assumptions:
        raise LivenessViolation(
            f"{spec.protocol} n={spec.n} seed={spec.seed} scenario={spec.scenario}: {live}"
        )
    return row


def _event_counts(sim: Sim) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in sim.events:
        out[e["event"]] = out.get(e["event"], 0) + 1
    return dict(sorted(out.items()))


def check_liveness(sim: Sim, spec: RunSpec) -> str | None:
    """None if progress never stalled longer than the bound and all blocks committed."""
    bound = spec.liveness_bound_s or 30.0 * spec.view_timeout_s
    times = sorted(sim.block_commit_time.values())
    if len(sim.block_commit_time) < spec.blocks:
        return (
            f"only {len(sim.block_commit_time)} of {spec.blocks} blocks committed "
            f"in {sim.env.now:.3f} s of virtual time"
        )
    prev = 0.0
    for t in times:
        if t - prev > bound:
            return f"no commit for {t - prev:.3f} s (bound {bound:.3f} s) before t={t:.3f}"
        prev = t
    return None


def recovery_ms(sim: Sim, fault_time: float | None) -> float | None:
    """The longest interval without a commit after the fault (the stall a primary failure
    causes, view change included); None without a fault or without a later commit."""
    if fault_time is None:
        return None
    times = sorted(t for t in sim.block_commit_time.values())
    before = [t for t in times if t <= fault_time]
    after = [t for t in times if t > fault_time]
    if not after:
        return None
    prev = before[-1] if before else fault_time
    gap = 0.0
    for t in after:
        gap = max(gap, t - prev)
        prev = t
    return round(gap * 1000.0, 3)


class SimulatedDriver:
    """The discrete-event driver: calibrated CPU costs, simulated network."""

    name = "simulated"

    def __init__(self, cost: CostModel | None = None) -> None:
        self.cost = cost or measured_costs()

    def run(self, spec: RunSpec) -> dict[str, Any]:
        return run_once(spec, self.cost)


def spec_dict(spec: RunSpec) -> dict[str, Any]:
    """A RunSpec as JSON-ready data."""
    return asdict(spec)
