"""Live measurement: drive a real ordering service with a bounded load and compare it with the
simulator configured like it (calibration).

The harness half of the live-Fabric comparison. It owns the load generator (closed loop, or
bounded open-loop Poisson arrivals, from several client threads), the summary of what the
clients saw (per-transaction submit→commit latency percentiles, throughput over the steady
window, blocks and average block size from the commit block numbers, the client-side stage
times), the simulator's prediction for the same round (the protocol :data:`SIMULATED_AS` names —
Raft for Raft, PBFT for SmartBFT — with N = orderers and the same BatchTimeout /
MaxMessageCount), the predicted / measured ratios, and for SmartBFT also RC-DBFT simulated at
the same N and load (:data:`COMPARED`).

This module must not import the SDK or any Fabric client, and must not start processes: a
backend supplies a :class:`LiveTarget` (the SDK's ``ehrshare.bench.live_fabric.FabricTarget``
starts a real Fabric network) and this module only calls the per-client ``submit`` functions
it hands back. It must not invent a number: every measured figure comes from the samples of
this run, every predicted one from a simulation run made here, and whatever the simulator
does not model is either a fixed cost measured in this run (and named as such in the row) or
left out of the prediction and said so.
"""

from __future__ import annotations

import logging
import math
import queue
import random
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from .calibrate import CostModel
from .core import NetworkModel
from .experiments import ConfigError, read_experiment_file
from .runner import LivenessViolation, RunSpec, run_once

__all__ = [
    "COMPARED",
    "LIVE_PROTOCOLS",
    "SIMULATED_AS",
    "UNAVAILABLE",
    "LiveConfigError",
    "LiveDriver",
    "LiveRound",
    "LiveSession",
    "LiveTarget",
    "LiveUnavailable",
    "LoadSpec",
    "Submit",
    "TxOutcome",
    "TxSample",
    "calibration",
    "generate_load",
    "load_live_experiment",
    "loopback_one_way_ms",
    "predict",
    "run_live",
    "summarise",
]

log = logging.getLogger(__name__)

VALID = "VALID"
LIVE_PROTOCOLS = ("fabric-raft", "fabric-smartbft")
# Protocols a round may name that no target here can run, with the reason (kept in the output).
UNAVAILABLE = {
    "fabric-smartbft": (
        "SmartBFT ordering exists only from Fabric 3.0; the Go module proxy reachable here "
        "serves github.com/hyperledger/fabric only up to the release-2.3 branch (3.1 answers "
        "403), and the Fabric that builds (2.3.2) has Raft only: point EHRSHARE_FABRIC_BIN and "
        "EHRSHARE_FABRIC_SAMPLECONFIG at Fabric 3.x release binaries for this row"
    ),
}
SIMULATED_AS = {"fabric-raft": "raft", "fabric-smartbft": "pbft"}
"""The simulator protocol that predicts a live one. SmartBFT (BFT-SMaRt's design) is of PBFT's
family: a leader proposes, two all-to-all phases of 2f+1 votes commit, a view change replaces a
silent leader; the simulator's PBFT has the same message pattern, not SmartBFT's code."""
COMPARED = {"fabric-smartbft": ("rcdbft",)}
"""Other simulated protocols a live row is set beside, at the same N, load and fixed costs."""
# Bandwidth of the simulator's loopback "LAN": a stated assumption (blocks here are a few tens
# of KB, so any figure above ~1 Gbit/s makes no visible difference).
LOOPBACK_MBPS = 10_000.0


class LiveConfigError(ConfigError):
    """A live experiment file is malformed; the message names the file, round and key."""


class LiveUnavailable(RuntimeError):
    """The live network cannot be run here; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class TxOutcome:
    """What one submit returned: its commit block and validation code, and the time each
    client-side stage took (endorse = proposal to endorsed; submit = handing the transaction to
    the orderer; commit = from then until the peer reported it committed)."""

    block: int
    code: str
    endorse_s: float
    submit_s: float
    commit_s: float
    tx_bytes: int | None = None


# One client's way to run transaction number `seq` (a fresh key each time) to commit.
Submit = Callable[[int], TxOutcome]


@dataclass(frozen=True, slots=True)
class TxSample:
    """One transaction as the load generator saw it (perf_counter seconds)."""

    client: int
    seq: int
    arrival: float  # when it was due (open loop) or started (closed loop)
    start: float
    end: float
    outcome: TxOutcome | None
    error: str | None = None

    @property
    def latency_s(self) -> float:
        """From arrival to the commit being reported (queueing included in the open loop)."""
        return self.end - self.arrival

    @property
    def valid(self) -> bool:
        """Committed with the VALID code."""
        return self.outcome is not None and self.outcome.code == VALID


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """A bounded load: ``txs`` transactions, at most ``clients`` in flight, stop at ``max_time_s``.

    ``rate`` ``closed``: each client submits its next transaction when the previous one
    committed. ``poisson``: arrivals at ``tps`` (seeded), served by the ``clients`` threads; an
    arrival that finds every client busy waits, and its latency counts the wait.
    """

    txs: int = 100
    clients: int = 4
    rate: str = "closed"
    tps: float = 20.0
    warmup_txs: int = 10
    max_time_s: float = 120.0
    seed: int = 1

    def __post_init__(self) -> None:
        if self.txs < 1:
            raise ValueError(f"txs must be at least 1, got {self.txs}")
        if not 1 <= self.clients <= 64:
            raise ValueError(f"clients must be between 1 and 64, got {self.clients}")
        if self.rate not in ("closed", "poisson"):
            raise ValueError(f"rate must be closed or poisson, got {self.rate!r}")
        if not self.tps > 0:
            raise ValueError(f"tps must be positive, got {self.tps}")
        if not 0 <= self.warmup_txs < self.txs:
            raise ValueError(f"warmup_txs must be in [0, txs), got {self.warmup_txs}")
        if not self.max_time_s > 0:
            raise ValueError(f"max_time_s must be positive, got {self.max_time_s}")


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


def generate_load(
    clients: Sequence[Submit],
    spec: LoadSpec,
    on_progress: Callable[[int, int], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[TxSample]:
    """Run the load with one thread per client; returns one sample per transaction started.

    Stops by itself after ``spec.txs`` transactions or ``spec.max_time_s`` (no new transaction
    starts after that; those in flight finish). A submit that raises is recorded as an error
    sample, it does not stop the run. Each client runs one transaction at a time, so a client
    (one identity) never has two in flight.
    """
    if len(clients) < spec.clients:
        raise ValueError(f"the load needs {spec.clients} clients, got {len(clients)}")
    samples: list[TxSample] = []
    lock = threading.Lock()
    t0 = clock()
    deadline = t0 + spec.max_time_s

    def record(sample: TxSample) -> None:
        with lock:
            samples.append(sample)
            done = len(samples)
        if on_progress:
            on_progress(done, spec.txs)

    def run_one(client: int, seq: int, arrival: float) -> None:
        start = clock()
        try:
            out = clients[client](seq)
        except Exception as exc:  # a failed transaction is a result, not a crash of the run
            log.warning("transaction %d of client %d failed: %s", seq, client, _describe(exc))
            record(TxSample(client, seq, arrival, start, clock(), None, _describe(exc)))
            return
        record(TxSample(client, seq, arrival, start, clock(), out))

    threads: list[threading.Thread] = []
    if spec.rate == "closed":
        counter = iter(range(spec.txs))

        def closed(client: int) -> None:
            while True:
                with lock:
                    seq = next(counter, None)
                if seq is None or clock() >= deadline:
                    return
                now = clock()
                run_one(client, seq, now)

        threads = [
            threading.Thread(target=closed, args=(c,), name=f"load-{c}", daemon=True)
            for c in range(spec.clients)
        ]
        for t in threads:
            t.start()
    else:
        work: queue.Queue[tuple[int, float] | None] = queue.Queue()

        def serve(client: int) -> None:
            while (item := work.get()) is not None:
                run_one(client, item[0], item[1])

        threads = [
            threading.Thread(target=serve, args=(c,), name=f"load-{c}", daemon=True)
            for c in range(spec.clients)
        ]
        for t in threads:
            t.start()
        rng = random.Random(spec.seed)  # noqa: S311 - arrival times, not crypto
        due = t0
        for seq in range(spec.txs):
            due += rng.expovariate(spec.tps)
            if due >= deadline:
                break
            wait = due - clock()
            if wait > 0:
                time.sleep(wait)
            work.put((seq, due))
        for _ in threads:
            work.put(None)
    for t in threads:
        t.join()
    return sorted(samples, key=lambda s: (s.arrival, s.client))


def _pct(values: Sequence[float], q: float) -> float | None:
    # numpy's default (linear) interpolation, as the simulator's figures in core.py use.
    return float(np.percentile(values, q)) if values else None


def _med(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000.0


def summarise(samples: Sequence[TxSample], warmup_txs: int = 0) -> dict[str, Any]:
    """What the clients measured.

    Counts cover every transaction; latencies, throughput and stage times cover the steady
    window: the transactions after the first ``warmup_txs`` (by arrival), throughput being
    their VALID commits over the time from the first one's arrival to the last one's commit.
    Blocks are the distinct commit block numbers of the VALID transactions; the average block
    size counts only this load's transactions.
    """
    ordered = sorted(samples, key=lambda s: (s.arrival, s.client))
    valid = [s for s in ordered if s.valid]
    per_block = Counter(s.outcome.block for s in valid if s.outcome is not None)
    codes = Counter(s.outcome.code for s in ordered if s.outcome is not None)
    steady = ordered[warmup_txs:]
    steady_valid = [s for s in steady if s.valid]
    lat = [s.latency_s for s in steady_valid]
    window = (
        max(s.end for s in steady_valid) - min(s.arrival for s in steady_valid)
        if steady_valid
        else 0.0
    )
    outs = [s.outcome for s in steady_valid if s.outcome is not None]
    sizes = [o.tx_bytes for o in outs if o.tx_bytes is not None]
    return {
        "submitted": len(ordered),
        "valid": len(valid),
        "invalid": sum(n for c, n in codes.items() if c != VALID),
        "errors": sum(1 for s in ordered if s.outcome is None),
        "codes": dict(sorted(codes.items())),
        "first_error": next((s.error for s in ordered if s.error), None),
        "blocks": len(per_block),
        "first_block": min(per_block) if per_block else None,
        "last_block": max(per_block) if per_block else None,
        "txs_per_block": {str(b): n for b, n in sorted(per_block.items())},
        "avg_block_size": (len(valid) / len(per_block)) if per_block else None,
        "steady_txs": len(steady_valid),
        "window_s": window,
        "throughput_tps": (len(steady_valid) / window) if window > 0 else None,
        "latency_p50_ms": _ms(_pct(lat, 50)),
        "latency_p95_ms": _ms(_pct(lat, 95)),
        "latency_p99_ms": _ms(_pct(lat, 99)),
        "endorse_p50_ms": _ms(_med([o.endorse_s for o in outs])),
        "submit_p50_ms": _ms(_med([o.submit_s for o in outs])),
        "commit_p50_ms": _ms(_med([o.commit_s for o in outs])),
        "tx_bytes": int(statistics.median(sizes)) if sizes else None,
    }


def calibration(
    predicted: dict[str, Any],
    measured: dict[str, Any],
    metrics: Sequence[str] = ("throughput_tps", "latency_p50_ms", "latency_p95_ms"),
) -> dict[str, dict[str, float | None]]:
    """Per metric: predicted, measured and ratio = predicted / measured (None if either is
    missing or measured is 0)."""
    out: dict[str, dict[str, float | None]] = {}
    for m in metrics:
        p, q = predicted.get(m), measured.get(m)
        ok = isinstance(p, int | float) and isinstance(q, int | float) and q != 0
        out[m] = {
            "predicted": p,
            "measured": q,
            "ratio": (float(p) / float(q)) if ok else None,  # type: ignore[arg-type]
        }
    return out


def loopback_one_way_ms(rounds: int = 200) -> float:
    """Half the median round trip of a 1-byte ping-pong over a loopback TCP connection."""
    srv = socket.socket()
    try:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        cli = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
    finally:
        srv.close()
    try:
        for s in (cli, conn):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def echo() -> None:
            for _ in range(rounds + 10):
                if not conn.recv(1):
                    return
                conn.sendall(b"y")

        th = threading.Thread(target=echo, daemon=True)
        th.start()
        rtts = []
        for i in range(rounds + 10):
            t0 = time.perf_counter()
            cli.sendall(b"x")
            cli.recv(1)
            if i >= 10:
                rtts.append(time.perf_counter() - t0)
        th.join(timeout=5)
    finally:
        cli.close()
        conn.close()
    return statistics.median(rtts) * 1000.0 / 2.0


def predict(
    spec: RunSpec,
    load: LoadSpec,
    measured: dict[str, Any],
    cost: CostModel,
    one_way_ms: float,
    commit_path_ms: float | None,
) -> dict[str, Any]:
    """The simulator's figures for a live round: ``spec.protocol`` (Raft, or PBFT for
    SmartBFT; see :data:`SIMULATED_AS`) with the round's N and batch cutting.

    The simulator models ordering only (batch cutting, Raft replication, the leader's CPU and
    the loopback links). The client-side stages it does not model enter as fixed per-tx costs
    measured in this run: the endorse and submit medians, and the peer's per-block validation
    and commit time ``commit_path_ms`` when the target could measure it (else they are left
    out and ``commit_path`` says so). Closed loop: each simulated client waits for those costs
    before its next request, so throughput follows the same cycle as the real clients.
    """
    endorse = (measured.get("endorse_p50_ms") or 0.0) / 1000.0
    submit = (measured.get("submit_p50_ms") or 0.0) / 1000.0
    commit = (commit_path_ms or 0.0) / 1000.0
    fixed = endorse + submit + commit
    blocks = max(5, int(measured.get("blocks") or 0))
    avg = measured.get("avg_block_size") or float(spec.batch_size)
    warm = min(blocks - 1, max(1, math.ceil(load.warmup_txs / max(avg, 1.0))))
    n = spec.n
    matrix = tuple(tuple(0.0 if i == j else one_way_ms for j in range(n)) for i in range(n))
    sim_spec = replace(
        spec,
        rate="backlog" if load.rate == "closed" else "poisson",
        outstanding=load.clients,
        tps=load.tps,
        client_delay_s=fixed if load.rate == "closed" else 0.0,
        blocks=blocks + warm,
        warmup_blocks=warm,
        tx_bytes=measured.get("tx_bytes") or spec.tx_bytes,
        network=NetworkModel(kind="measured", bandwidth_mbps=LOOPBACK_MBPS, matrix_ms=matrix),
        max_time_s=max(spec.max_time_s, 600.0),
    )
    out: dict[str, Any] = {
        "spec": {
            "protocol": spec.protocol,
            "n": n,
            "batch_size": sim_spec.batch_size,
            "batch_timeout_s": sim_spec.batch_timeout_s,
            "rate": sim_spec.rate,
            "outstanding": sim_spec.outstanding,
            "tps": sim_spec.tps if sim_spec.rate == "poisson" else None,
            "client_delay_ms": sim_spec.client_delay_s * 1000.0,
            "tx_bytes": sim_spec.tx_bytes,
            "blocks": sim_spec.blocks,
            "warmup_blocks": warm,
            "one_way_ms": one_way_ms,
            "bandwidth_mbps": LOOPBACK_MBPS,
        },
        "fixed_per_tx_ms": {
            "endorse": endorse * 1000.0,
            "submit": submit * 1000.0,
            "commit_path": commit_path_ms,
        },
        "commit_path": "measured (the peer's own per-block validation + commit times)"
        if commit_path_ms is not None
        else "not modelled (the target did not measure it): predictions leave it out",
        "error": None,
    }
    try:
        row = run_once(sim_spec, cost)
    except LivenessViolation as exc:
        # The live figures are already measured: keep them, and say why nothing is predicted.
        log.error("the simulation of a live round did not finish: %s", exc)
        return out | {
            "error": f"the simulation did not finish: {exc}",
            "ordering_p50_ms": None,
            "throughput_tps": None,
            "latency_p50_ms": None,
            "latency_p95_ms": None,
            "latency_p99_ms": None,
            "avg_block_size": None,
        }
    add = fixed * 1000.0
    return out | {
        "ordering_p50_ms": row["latency_p50_ms"],
        "throughput_tps": row["throughput_tps"],
        "latency_p50_ms": row["latency_p50_ms"] + add,
        "latency_p95_ms": row["latency_p95_ms"] + add,
        "latency_p99_ms": row["latency_p99_ms"] + add,
        "avg_block_size": (
            row["throughput_tps"] / row["blocks_per_s"] if row.get("blocks_per_s") else None
        ),
    }


class LiveSession(Protocol):
    """A running network with ``clients`` ready to submit; closing it stops what ``open``
    started."""

    @property
    def clients(self) -> Sequence[Submit]:
        """One submit function per client (each with its own identity)."""
        ...

    def commit_path_ms(self, blocks: Sequence[int]) -> float | None:
        """The peer's median validation + commit time over these blocks, if it can tell."""
        ...

    def describe(self) -> dict[str, Any]:
        """What was started (versions, endpoints, block cutting) for the result JSON."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> LiveSession: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class LiveTarget(Protocol):
    """Something that can start a real network configured from a RunSpec (N = orderers,
    batch_size = MaxMessageCount, batch_timeout_s = BatchTimeout)."""

    name: str

    def open(self, spec: RunSpec, clients: int) -> LiveSession:
        """Start the network and prepare ``clients`` clients; raise LiveUnavailable if it
        cannot run here."""
        ...


def run_live(
    target: LiveTarget,
    spec: RunSpec,
    load: LoadSpec,
    cost: CostModel,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Measure one live round and predict it; the row carries measured, predicted and ratios."""
    t0 = time.perf_counter()
    with target.open(spec, load.clients) as session:
        started = time.perf_counter() - t0
        samples = generate_load(session.clients, load, on_progress)
        measured = summarise(samples, load.warmup_txs)
        commit_path = session.commit_path_ms([int(b) for b in measured["txs_per_block"]])
        described = session.describe()
    one_way = loopback_one_way_ms()
    predicted = predict(spec, load, measured, cost, one_way, commit_path)
    ordering_measured = measured.get("commit_p50_ms")
    if ordering_measured is not None and commit_path is not None:
        ordering_measured -= commit_path
    compared: dict[str, Any] = {}
    for other in COMPARED.get(target.name, ()):
        figures = predict(replace(spec, protocol=other), load, measured, cost, one_way, commit_path)
        compared[other] = {
            "predicted": figures,
            "calibration": calibration(figures, measured),
            "ordering_calibration": calibration(
                {"ordering_p50_ms": figures["ordering_p50_ms"]},
                {"ordering_p50_ms": ordering_measured},
                ("ordering_p50_ms",),
            ),
        }
    return {
        "driver": target.name,
        "protocol": target.name,
        "orderers": spec.n,
        "max_message_count": spec.batch_size,
        "batch_timeout_s": spec.batch_timeout_s,
        "load": asdict(load),
        "network": described,
        "startup_s": started,
        "measured": measured,
        "predicted": predicted,
        "calibration": calibration(predicted, measured),
        # Ordering alone: the simulator's submit→commit against the clients' commit stage
        # (Broadcast acknowledged → commit reported), less the peer's commit path if measured.
        "ordering_calibration": calibration(
            {"ordering_p50_ms": predicted["ordering_p50_ms"]},
            {"ordering_p50_ms": ordering_measured},
            ("ordering_p50_ms",),
        ),
        # Other simulated protocols at the same N and load (RC-DBFT beside live SmartBFT).
        "compared": compared,
        "wall_time_s": time.perf_counter() - t0,
    }


@dataclass(frozen=True)
class LiveRound:
    """One declared live round: a protocol at one or more orderer counts, one load."""

    label: str
    protocol: str
    orderers: tuple[int, ...]
    batch_timeout_s: float
    max_message_count: int
    load: LoadSpec
    tx_bytes: int = 3000

    def spec(self, orderers: int) -> RunSpec:
        """The RunSpec both the network and the simulator are configured from."""
        return RunSpec(
            protocol=SIMULATED_AS[self.protocol],
            n=orderers,
            batch_size=self.max_message_count,
            batch_timeout_s=self.batch_timeout_s,
            tx_bytes=self.tx_bytes,
            rate="backlog" if self.load.rate == "closed" else "poisson",
            tps=self.load.tps,
            outstanding=self.load.clients,
        )


_LIVE_KEYS = {
    "label",
    "protocol",
    "orderers",
    "batch_timeout_s",
    "max_message_count",
    "txs",
    "clients",
    "rate",
    "warmup_txs",
    "max_time_s",
    "seed",
    "tx_bytes",
}


def _live_round(raw: Any, defaults: dict[str, Any], where: str) -> LiveRound:
    if not isinstance(raw, dict):
        raise LiveConfigError(f"{where}: a round must be a mapping, got {type(raw).__name__}")
    merged = {**defaults, **raw}
    unknown = set(merged) - _LIVE_KEYS
    if unknown:
        raise LiveConfigError(f"{where}: unknown keys {sorted(unknown)}")
    proto = merged.get("protocol")
    if proto not in LIVE_PROTOCOLS:
        raise LiveConfigError(
            f"{where}: protocol must be one of {list(LIVE_PROTOCOLS)}, got {proto!r}"
        )
    orderers = merged.get("orderers", [1])
    orderers = orderers if isinstance(orderers, list) else [orderers]
    if not orderers or not all(
        isinstance(o, int) and not isinstance(o, bool) and o >= 1 for o in orderers
    ):
        raise LiveConfigError(f"{where}: orderers must be a positive integer or a list of them")
    rate = merged.get("rate", {"type": "closed"})
    if not isinstance(rate, dict) or rate.get("type") not in ("closed", "poisson"):
        raise LiveConfigError(f"{where}: rate must be {{type: closed|poisson, tps: ...}}")
    try:
        load = LoadSpec(
            txs=int(merged.get("txs", 100)),
            clients=int(merged.get("clients", 4)),
            rate=str(rate["type"]),
            tps=float(rate.get("tps", 20.0)),
            warmup_txs=int(merged.get("warmup_txs", 10)),
            max_time_s=float(merged.get("max_time_s", 120.0)),
            seed=int(merged.get("seed", 1)),
        )
        rnd = LiveRound(
            label=str(merged.get("label") or where),
            protocol=str(proto),
            orderers=tuple(orderers),
            batch_timeout_s=float(merged.get("batch_timeout_s", 0.1)),
            max_message_count=int(merged.get("max_message_count", 10)),
            load=load,
            tx_bytes=int(merged.get("tx_bytes", 3000)),
        )
        if rnd.batch_timeout_s <= 0 or rnd.max_message_count < 1:
            raise ValueError("batch_timeout_s and max_message_count must be positive")
        for o in rnd.orderers:
            rnd.spec(o)  # the RunSpec's own checks
    except (TypeError, ValueError) as exc:
        raise LiveConfigError(f"{where}: {exc}") from exc
    return rnd


def load_live_experiment(path: Path) -> list[LiveRound]:
    """Parse a live experiment YAML (``defaults`` + ``rounds`` of ``protocol: fabric-*``)."""
    raw, defaults = read_experiment_file(path, LiveConfigError)
    return [
        _live_round(r, defaults, f"{path.name} round {i + 1}") for i, r in enumerate(raw["rounds"])
    ]


@dataclass
class LiveDriver:
    """The harness's `Driver` for a real network: ``run(spec)`` measures and predicts one
    round (spec.n orderers, spec.batch_size / batch_timeout_s as the network's block cutting)."""

    target: LiveTarget
    load: LoadSpec
    cost: CostModel
    on_progress: Callable[[int, int], None] | None = field(default=None, repr=False)
    name: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.name = self.target.name

    def run(self, spec: RunSpec) -> dict[str, Any]:
        """Run the live round for spec and return its row."""
        return run_live(self.target, spec, self.load, self.cost, self.on_progress)
