"""Simulation core on simpy: network model, per-node CPU model, request pool, safety checking.

Every protocol (PBFT, RC-DBFT, Raft) runs on this one core so that the comparison is fair: the
same latency matrix, bandwidth, loss, signature costs, batching and commit rule for all. The
event loop is simpy's; this module only schedules deliveries and timers on it. It must not
contain protocol logic, and it must never hide a safety violation: `SafetyChecker` records
each one and the run fails loudly unless the scenario is declared beyond the assumptions.

Model (stated simplifications, see docs/consensus.md):
- A multicast is serialised on the sender's NIC one copy after the other (per-node bandwidth);
  receivers' NICs are not modelled. Per-link one-way latency comes from a matrix, with
  exponential jitter; loss drops a copy independently; a partition drops copies across groups.
- Each node is a single FIFO CPU: a message that arrives while it is busy waits. Receiving costs
  the dispatch overhead plus the verifications the message needs; sending a signed message
  costs one signature (a multicast is signed once).
- A handler runs at the arrival event with the node's clock set to the end of its processing,
  so state changes become visible at arrival order, which equals processing order (FIFO).
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from .calibrate import CostModel

__all__ = [
    "Block",
    "Msg",
    "NetworkModel",
    "Node",
    "RequestPool",
    "SafetyChecker",
    "SafetyViolation",
    "Sim",
    "SimParams",
    "latency_matrix",
]

log = logging.getLogger(__name__)

HEADER_BYTES = 64  # type, view, seq, digest, sender
SIG_BYTES = 72  # DER ECDSA P-256 signature
_TIME_EPS = 1e-9  # seconds; below any modelled delay, above float rounding of virtual time


class SafetyViolation(RuntimeError):
    """Two honest nodes committed different blocks at one height (or one node changed its mind)."""


@dataclass(slots=True)
class Msg:
    """One protocol message. `size` is the number of bytes on the wire; `verifies` the number
    of signatures a receiver must check before acting on it."""

    kind: str
    src: int
    view: int = 0
    seq: int = 0
    digest: int = 0
    size: int = HEADER_BYTES + SIG_BYTES
    verifies: int = 1
    hash_bytes: int = 0
    data: Any = None
    epoch: int = 0


@dataclass(slots=True)
class Block:
    """A batch of requests; the simulator keeps the contents, messages carry the digest."""

    digest: int
    seq: int
    proposer: int
    view: int
    txs: tuple[int, ...]
    size: int
    meta: dict[str, Any] = field(default_factory=dict)


# One-way latencies (ms) between five cloud regions (Frankfurt, London, N. Virginia, Oregon,
# Singapore): half of typical public inter-region RTTs; intra-region 0.5 ms.
_WAN_REGIONS_MS = np.array(
    [
        [0.5, 8.0, 45.0, 80.0, 80.0],
        [8.0, 0.5, 38.0, 70.0, 85.0],
        [45.0, 38.0, 0.5, 35.0, 110.0],
        [80.0, 70.0, 35.0, 0.5, 85.0],
        [80.0, 85.0, 110.0, 85.0, 0.5],
    ]
)


@dataclass(frozen=True, slots=True)
class NetworkModel:
    """Where the nodes are and how the links behave. When to use: one per experiment round."""

    kind: str = "lan"  # lan | wan | measured
    bandwidth_mbps: float = 1000.0
    jitter: float = 0.1  # mean extra delay as a fraction of the link latency
    loss: float = 0.0
    matrix_ms: tuple[tuple[float, ...], ...] | None = None  # for kind == "measured"

    def __post_init__(self) -> None:
        if self.kind not in ("lan", "wan", "measured"):
            raise ValueError(f"network kind must be lan, wan or measured, got {self.kind!r}")
        if self.bandwidth_mbps <= 0:
            raise ValueError(f"bandwidth_mbps must be positive, got {self.bandwidth_mbps}")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), got {self.loss}")
        if self.jitter < 0:
            raise ValueError(f"jitter must be >= 0, got {self.jitter}")
        if self.kind == "measured" and self.matrix_ms is None:
            raise ValueError("a measured network needs matrix_ms")


def latency_matrix(model: NetworkModel, n: int, rng: np.random.Generator) -> np.ndarray:
    """One-way latency in seconds between every pair of n nodes (symmetric, zero diagonal)."""
    if model.kind == "lan":
        base = rng.uniform(0.1, 0.3, size=(n, n))
        mat = (base + base.T) / 2.0
    elif model.kind == "wan":
        regions = np.arange(n) % len(_WAN_REGIONS_MS)
        mat = _WAN_REGIONS_MS[regions][:, regions].copy()
        noise = rng.uniform(0.9, 1.1, size=(n, n))
        mat = mat * (noise + noise.T) / 2.0
    else:
        assert model.matrix_ms is not None
        given = np.asarray(model.matrix_ms, dtype=float)
        if given.ndim != 2 or given.shape[0] != given.shape[1]:
            raise ValueError(f"measured matrix must be square, got shape {given.shape}")
        if given.shape[0] < n:
            raise ValueError(f"measured matrix has {given.shape[0]} nodes, the run needs {n}")
        if (given < 0).any():
            raise ValueError("measured matrix has negative latencies")
        mat = given[:n, :n].copy()
    np.fill_diagonal(mat, 0.0)
    return mat / 1000.0


@dataclass(frozen=True, slots=True)
class SimParams:
    """Parameters shared by all protocols in one run (same batching for everyone)."""

    n: int
    batch_size: int = 100
    tx_bytes: int = 512
    batch_timeout_s: float = 0.05
    rate: str = "backlog"  # backlog (closed loop, Caliper fixed-load) | poisson
    outstanding: int | None = None  # backlog size; default = batch_size
    tps: float = 1000.0  # for poisson
    # Closed loop only: how long a client takes, after learning that its request committed,
    # to put the next one in the pool. 0 = at once (Caliper fixed-backlog). A live calibration
    # sets it to the client-side stages the simulator does not model (endorsement, the peer's
    # validation and commit), so the closed loop turns over as slowly as the real one.
    client_delay_s: float = 0.0
    max_blocks: int = 100
    max_time_s: float = 60.0
    warmup_blocks: int = 2
    view_timeout_s: float = 0.5
    checkpoint_every: int = 10
    seed: int = 1
    extra_nodes: int = 0  # nodes present but not members at the start (joiners)


class Network:
    """Delivers messages between nodes with latency, jitter, bandwidth, loss and partitions."""

    def __init__(
        self,
        env: simpy.Environment,
        model: NetworkModel,
        latency_s: np.ndarray,
        rng_seed: int,
    ) -> None:
        self.env = env
        self.model = model
        self.lat = latency_s
        self.lat_list = latency_s.tolist()
        self.byte_s = 8.0 / (model.bandwidth_mbps * 1e6)
        self.loss = model.loss
        self.jitter = model.jitter
        self.rng = random.Random(rng_seed)  # noqa: S311 - simulation, not crypto
        self.nprng = np.random.default_rng(rng_seed)
        n = latency_s.shape[0]
        self.nic_free = [0.0] * n
        self.group: list[int] | None = None
        self.nodes: list[Node] = []
        self.messages = 0
        self.bytes = 0
        self.by_kind: dict[str, int] = {}

    def set_partition(self, groups: Sequence[Iterable[int]] | None) -> None:
        """Cut the network into groups (None heals it)."""
        if groups is None:
            self.group = None
            return
        g = [-1] * len(self.nic_free)
        for i, members in enumerate(groups):
            for m in members:
                g[m] = i
        self.group = g

    def send(self, src: int, dsts: Sequence[int], msg: Msg, t_send: float) -> None:
        """Send msg from src to every node in dsts, starting at node-time t_send."""
        k = len(dsts)
        if k == 0:
            return
        self.messages += k
        self.bytes += k * msg.size
        self.by_kind[msg.kind] = self.by_kind.get(msg.kind, 0) + k
        tx = msg.size * self.byte_s
        start = max(t_send, self.nic_free[src])
        self.nic_free[src] = start + tx * k
        now = self.env.now
        group = self.group
        nodes = self.nodes
        env = self.env
        row = self.lat_list[src]
        if k <= 4:
            rng = self.rng
            for i, dst in enumerate(dsts):
                if self.loss and rng.random() < self.loss:
                    continue
                if group is not None and group[src] != group[dst]:
                    continue
                lat = row[dst]
                if self.jitter:
                    lat += lat * self.jitter * rng.expovariate(1.0)
                ev = env.timeout(start + tx * (i + 1) + lat - now, msg)
                ev.callbacks.append(nodes[dst].on_event)
            return
        idx = np.fromiter(dsts, dtype=np.int64, count=k)
        lat_v = self.lat[src, idx]
        if self.jitter:
            lat_v = lat_v * (1.0 + self.jitter * self.nprng.exponential(1.0, size=k))
        arrive = (start - now) + tx * np.arange(1, k + 1) + lat_v
        keep: np.ndarray | None = None
        if self.loss:
            keep = self.nprng.random(k) >= self.loss
        if group is not None:
            gs = group[src]
            same = np.fromiter((group[d] == gs for d in dsts), dtype=bool, count=k)
            keep = same if keep is None else keep & same
        delays = arrive.tolist()
        if keep is None:
            for dst, d in zip(dsts, delays, strict=True):
                env.timeout(d, msg).callbacks.append(nodes[dst].on_event)
        else:
            for dst, d, ok in zip(dsts, delays, keep.tolist(), strict=True):
                if ok:
                    env.timeout(d, msg).callbacks.append(nodes[dst].on_event)


class SafetyChecker:
    """Records every honest commit and flags two different blocks at one height."""

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self.committed: dict[int, tuple[int, int]] = {}
        self.violations: list[str] = []

    def record(self, node: int, height: int, digest: int) -> None:
        """Record an honest node's commit; a conflict is a violation (raised when strict)."""
        prev = self.committed.get(height)
        if prev is None:
            self.committed[height] = (digest, node)
            return
        if prev[0] != digest:
            text = (
                f"fork at height {height}: node {prev[1]} committed block {prev[0]:x}, "
                f"node {node} committed block {digest:x}"
            )
            self.violations.append(text)
            # Expected (and counted) in runs beyond the assumptions; an error everywhere else.
            log.log(logging.ERROR if self.strict else logging.DEBUG, "safety violation: %s", text)
            if self.strict:
                raise SafetyViolation(text)


class RequestPool:
    """Client requests waiting to be ordered (shared by all replicas; clients are not simulated
    as network nodes, so request dissemination is not counted in any protocol's messages)."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.pending: OrderedDict[int, float] = OrderedDict()
        # Submitted and not yet answered (client commit): what keeps replicas' timers armed,
        # like clients retransmitting to every replica in PBFT.
        self.open: set[int] = set()
        self.submitted: dict[int, float] = {}
        self.done: set[int] = set()
        self.ids = itertools.count(1)
        self.waiters: list[tuple[Node, Callable[[], None]]] = []

    def submit(self, count: int, t: float) -> None:
        """Add count new requests submitted at time t and wake waiting proposers."""
        for _ in range(count):
            tid = next(self.ids)
            self.pending[tid] = t
            self.open.add(tid)
            self.submitted[tid] = t
        if self.waiters:
            waiters, self.waiters = self.waiters, []
            delay = max(0.0, t - self.sim.env.now)
            for node, fn in waiters:
                node.at(delay, fn)

    def take(self, limit: int) -> tuple[int, ...]:
        """The oldest uncommitted requests (not removed: removal happens at commit)."""
        return tuple(itertools.islice(self.pending.keys(), limit))

    def executed(self, txs: Iterable[int]) -> None:
        """Requests in an executed block: no longer proposable; latency still ends at the
        client commit (`remove`)."""
        for tx in txs:
            self.pending.pop(tx, None)

    def oldest_age(self, now: float) -> float:
        """How long the oldest pending request has waited."""
        for t in self.pending.values():
            return now - t
        return 0.0

    def remove(self, txs: Iterable[int]) -> list[int]:
        """Mark requests committed; returns those that were new (duplicates are ignored)."""
        fresh = []
        for tx in txs:
            if tx not in self.done:
                self.done.add(tx)
                self.pending.pop(tx, None)
                self.open.discard(tx)
                fresh.append(tx)
        return fresh


class Node:
    """A replica: one FIFO CPU, timers, and send helpers. Protocols subclass it."""

    def __init__(self, sim: Sim, nid: int) -> None:
        self.sim = sim
        self.id = nid
        self.busy = 0.0
        self.t = 0.0
        self.crashed = False
        self.silent = False
        self.honest = True
        self.behaviour = "honest"
        self.extra_delay = 0.0
        self.cost = sim.cost
        self.log: dict[int, int] = {}
        self.last_exec = 0
        self.proposing = False

    # -- event plumbing -------------------------------------------------------------------
    def on_event(self, ev: simpy.Event) -> None:
        """simpy callback: a message arrived."""
        if self.crashed:
            return
        msg: Msg = ev.value  # type: ignore[assignment]
        now = self.sim.env.now
        start = now if now > self.busy else self.busy
        c = self.cost
        cost = c.msg_overhead_s + msg.verifies * c.verify_s
        if msg.hash_bytes:
            cost += msg.hash_bytes * c.hash_s_per_byte
        self.t = self.busy = start + cost
        self.on_message(msg)

    def on_message(self, msg: Msg) -> None:
        raise NotImplementedError

    def try_propose(self) -> None:
        """Cut and propose a block if this node may (protocols override)."""
        raise NotImplementedError

    def batch_due(self, force: bool = False) -> bool:
        """Whether a block should be cut now (same batching rule for every protocol).

        If not — fewer than ``batch_size`` requests and the oldest younger than
        ``batch_timeout_s`` — arrange to call :meth:`try_propose` again at the batch timeout or
        when the next request arrives, and return False.
        """
        p = self.sim.params
        pool = self.sim.pool
        if force or len(pool.pending) >= p.batch_size:
            return True
        # The tolerance matters: a timer set for the timeout can fire a rounding error early,
        # and re-arming it for a delay of 1e-17 s would not advance simpy's clock (endless loop).
        if pool.oldest_age(self.t) >= p.batch_timeout_s - _TIME_EPS:
            return True
        self.proposing = True

        def again() -> None:
            self.proposing = False
            self.try_propose()

        if pool.pending:
            self.timer(p.batch_timeout_s - pool.oldest_age(self.t), again)
        else:
            pool.waiters.append((self, again))
        return False

    def cpu(self, seconds: float) -> None:
        """Spend CPU time now (signing, verifying a certificate, hashing)."""
        self.t += seconds
        self.busy = self.t

    def timer(self, delay: float, fn: Callable[[], None]) -> None:
        """Call fn delay seconds after this node's current time (skipped if it crashed)."""
        self.at(max(0.0, self.t - self.sim.env.now) + delay, fn)

    def at(self, delay: float, fn: Callable[[], None]) -> None:
        """Call fn delay seconds after the simulation's now, when the CPU is free."""

        def fire(_ev: simpy.Event) -> None:
            if self.crashed:
                return
            now = self.sim.env.now
            self.t = now if now > self.busy else self.busy
            fn()

        self.sim.env.timeout(delay).callbacks.append(fire)

    def send(self, dsts: Sequence[int], msg: Msg, sign: bool = True) -> None:
        """Send (signed once) to dsts from this node's current time."""
        if self.crashed or self.silent or not dsts:
            return
        if sign:
            self.cpu(self.cost.sign_s)
        self.sim.net.send(self.id, dsts, msg, self.t + self.extra_delay)

    def commit(self, height: int, digest: int) -> None:
        """Execute the block at height: the one place a node commits."""
        if height != self.last_exec + 1:
            raise SafetyViolation(
                f"node {self.id} committed height {height} after {self.last_exec}"
            )
        self.log[height] = digest
        self.last_exec = height
        self.sim.on_commit(self, height, digest)


class Sim:
    """One simulation run: environment, network, nodes, pool, checker, metrics."""

    def __init__(
        self,
        params: SimParams,
        net_model: NetworkModel,
        cost: CostModel,
        strict: bool = True,
    ) -> None:
        self.params = params
        self.env = simpy.Environment()
        self.rng = random.Random(params.seed)  # noqa: S311 - simulation, not crypto
        self.nprng = np.random.default_rng(params.seed)
        total = params.n + params.extra_nodes
        self.latency = latency_matrix(net_model, total, self.nprng)
        self.net = Network(self.env, net_model, self.latency, params.seed + 7919)
        self.cost = cost
        self.checker = SafetyChecker(strict=strict)
        self.pool = RequestPool(self)
        self.nodes: list[Node] = []
        self.blocks: dict[int, Block] = {}
        self._digests = itertools.count(0x1000)
        self.commit_threshold = 1
        self.commit_count: dict[int, int] = {}
        self.block_commit_time: dict[int, float] = {}
        self.latencies: list[float] = []
        self.committed_txs = 0
        self.measure_start: tuple[float, int, int] | None = None
        self.measure_end: tuple[float, int, int] | None = None
        self.done = self.env.event()
        self._measure_first = 0
        self._measure_last = -1
        if params.warmup_blocks == 0:
            self.measure_start = (0.0, 0, 0)
            self._measure_first = 1
        self.events: list[dict[str, Any]] = []
        self.certified: set[tuple[int, int]] = set()
        self.hooks: list[Callable[[Node, int, int], None]] = []
        self.height_triggers: dict[int, list[Callable[[], None]]] = {}
        self.min_end = 0.0

    @property
    def n(self) -> int:
        return self.params.n

    def new_block(self, seq: int, proposer: int, view: int, txs: tuple[int, ...]) -> Block:
        """Create a block with a fresh digest (equivocation = two blocks for one slot)."""
        d = next(self._digests)
        size = HEADER_BYTES + SIG_BYTES + len(txs) * self.params.tx_bytes
        blk = Block(d, seq, proposer, view, txs, size)
        self.blocks[d] = blk
        return blk

    def note(self, kind: str, **data: Any) -> None:
        """Record a protocol event (view change, expulsion …) with its time."""
        self.events.append({"t": round(self.env.now, 6), "event": kind, **data})

    def on_commit(self, node: Node, height: int, digest: int) -> None:
        if node.honest:
            self.checker.record(node.id, height, digest)
            c = self.commit_count.get(height, 0) + 1
            self.commit_count[height] = c
            if c == 1:
                # A replica that executed a block does not propose its requests again: they are
                # ordered; only the clients' replies are outstanding. (Before this, a primary
                # that executed before f+1 replicas had re-proposed them in the next block.)
                self.pool.executed(self.blocks[digest].txs)
            if c == self.commit_threshold:
                self._client_commit(height, digest, node.t)
        for hook in self.hooks:
            hook(node, height, digest)

    def _client_commit(self, height: int, digest: int, t: float) -> None:
        p = self.params
        self.block_commit_time[height] = t
        blk = self.blocks[digest]
        fresh = self.pool.remove(blk.txs)
        if height == p.warmup_blocks:
            # The window starts at the commit of the last warm-up block, so it spans exactly
            # the measured blocks' intervals.
            self.measure_start = (t, self.net.messages, self.net.bytes)
            self._measure_first = height + 1
        if height > p.warmup_blocks and self.measure_start is not None:
            sub = self.pool.submitted
            self.latencies.extend(t - sub[tx] for tx in fresh)
            self.committed_txs += len(fresh)
            self.measure_end = (t, self.net.messages, self.net.bytes)
            self._measure_last = height
        if p.rate == "backlog" and fresh:
            if p.client_delay_s > 0.0:
                count = len(fresh)
                later = self.env.timeout(max(0.0, t - self.env.now) + p.client_delay_s)
                later.callbacks.append(lambda _ev: self.pool.submit(count, self.env.now))
            else:
                self.pool.submit(len(fresh), t)
        for fn in self.height_triggers.pop(height, []):
            fn()
        if height >= p.max_blocks and not self.done.triggered:
            self.done.succeed()

    def start_load(self) -> None:
        """Start the clients: a closed-loop backlog or open-loop Poisson arrivals."""
        p = self.params
        if p.rate == "backlog":
            self.pool.submit(p.outstanding or p.batch_size, 0.0)
            return
        if p.rate != "poisson":
            raise ValueError(f"rate must be backlog or poisson, got {p.rate!r}")

        def arrivals() -> Any:
            tick = 0.005
            while True:
                yield self.env.timeout(tick)
                k = int(self.nprng.poisson(p.tps * tick))
                if k:
                    self.pool.submit(k, self.env.now)

        self.env.process(arrivals())

    def run(self) -> None:
        """Run until max_blocks are committed or max_time_s of virtual time passed."""
        self.start_load()
        for node in self.nodes:
            start = getattr(node, "start", None)
            if start is not None:
                start()
        self.env.run(
            until=simpy.AnyOf(self.env, [self.done, self.env.timeout(self.params.max_time_s)])
        )
        if self.min_end > self.env.now:  # a scenario still has something to show (a heal)
            self.env.run(until=self.min_end)

    # -- results ------------------------------------------------------------------------------
    def blocks_measured(self) -> int:
        if self.measure_start is None or self.measure_end is None:
            return 0
        return self._measure_last - self._measure_first + 1

    def summary(self) -> dict[str, Any]:
        """Per-run metrics (messages and bytes per block counted in the measured window)."""
        blocks = self.blocks_measured()
        live = [n.last_exec for n in self.nodes if n.honest and not n.crashed]
        out: dict[str, Any] = {
            "height_spread": (max(live) - min(live)) if live else 0,
            "blocks_committed": len(self.block_commit_time),
            "blocks_measured": blocks,
            "virtual_time_s": round(self.env.now, 6),
            "messages_total": self.net.messages,
            "messages_by_kind": dict(sorted(self.net.by_kind.items())),
        }
        if blocks and self.measure_start and self.measure_end:
            t0, m0, b0 = self.measure_start
            t1, m1, b1 = self.measure_end
            dur = max(t1 - t0, 1e-12)
            lat = np.asarray(self.latencies) * 1000.0
            out.update(
                messages_per_block=(m1 - m0) / blocks,
                bytes_per_block=(b1 - b0) / blocks,
                latency_p50_ms=float(np.percentile(lat, 50)) if lat.size else math.nan,
                latency_p95_ms=float(np.percentile(lat, 95)) if lat.size else math.nan,
                latency_p99_ms=float(np.percentile(lat, 99)) if lat.size else math.nan,
                throughput_tps=self.committed_txs / dur,
                blocks_per_s=blocks / dur,
            )
        else:
            out.update(
                messages_per_block=math.nan,
                bytes_per_block=math.nan,
                latency_p50_ms=math.nan,
                latency_p95_ms=math.nan,
                latency_p99_ms=math.nan,
                throughput_tps=0.0,
                blocks_per_s=0.0,
            )
        return out
