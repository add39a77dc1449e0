"""Declarative experiments (Caliper-like YAML rounds), their execution, targets and plots.

A config has `defaults` and `rounds`; each round names protocols, node counts, seeds, blocks,
a fault scenario and a rate control. Running it yields result rows (medians over seeds), the
recovery and reputation series, the target ratios from docs/consensus.md with `met: true/false`,
and PNG plots. This module must not invent numbers: every figure in the output comes from a
run made in this invocation, and a target that was not measured is reported as not measured.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .calibrate import CostModel
from .core import NetworkModel, SafetyViolation
from .faults import SCENARIOS
from .runner import PROTOCOLS, LivenessViolation, RunSpec, SimulatedDriver, run_once

__all__ = [
    "SWEEP_SIZES",
    "ConfigError",
    "Experiment",
    "Round",
    "aggregate",
    "compute_targets",
    "load_experiment",
    "make_plots",
    "read_experiment_file",
    "run_experiment",
    "safety_sweep",
]

log = logging.getLogger(__name__)

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
METRICS = (
    "messages_per_block",
    "bytes_per_block",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "throughput_tps",
    "blocks_per_s",
    "wall_time_s",
    "recovery_ms",
    "view_changes",
)
_ROUND_KEYS = {
    "label",
    "protocols",
    "n",
    "seeds",
    "blocks",
    "scenario",
    "batch_size",
    "tx_bytes",
    "network",
    "rate",
    "view_timeout_s",
    "epoch_blocks",
    "recluster_every",
    "k",
    "batch_timeout_s",
    "max_time_s",
    "purpose",
    "warmup_blocks",
}
# What a round is for: selects the plots and targets its rows feed.
PURPOSES = ("scale", "recovery", "reputation", "scale_target", "load", "load_curve")
# Small networks for the safety sweep (many seeded runs per scenario).
SWEEP_SIZES = {"pbft": 7, "rcdbft": 16, "raft": 5}


class ConfigError(ValueError):
    """An experiment file is malformed; the message names the file, round and key."""


@dataclass(frozen=True)
class Round:
    """One declared round: the cross product of protocols × n × seeds."""

    label: str
    protocols: tuple[str, ...]
    ns: tuple[int, ...]
    seeds: tuple[int, ...]
    blocks: Mapping[str, int]
    base: RunSpec
    purpose: str = "scale"
    # Offered loads (tx/s) of an open-loop round: one run per load; empty = the base's rate.
    loads: tuple[float, ...] = ()

    def specs(self) -> list[RunSpec]:
        out = []
        for proto in self.protocols:
            for n in self.ns:
                for tps in self.loads or (self.base.tps,):
                    for seed in self.seeds:
                        out.append(
                            replace(
                                self.base,
                                protocol=proto,
                                n=n,
                                seed=seed,
                                tps=tps,
                                blocks=self.blocks.get(proto, self.blocks.get("*", 50)),
                            )
                        )
        return out


@dataclass(frozen=True)
class Experiment:
    """A parsed experiment file."""

    name: str
    source: str
    rounds: tuple[Round, ...] = field(default_factory=tuple)


def _fail(where: str, text: str) -> ConfigError:
    return ConfigError(f"{where}: {text}")


def _int_list(val: Any, where: str, key: str) -> tuple[int, ...]:
    items = val if isinstance(val, list) else [val]
    if not items or not all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        raise _fail(where, f"{key} must be an integer or a list of integers, got {val!r}")
    return tuple(items)


def _network(val: Any, where: str) -> NetworkModel:
    if isinstance(val, str):
        val = {"kind": val}
    if not isinstance(val, dict):
        raise _fail(where, f"network must be a mapping or lan/wan, got {val!r}")
    unknown = set(val) - {"kind", "bandwidth_mbps", "jitter", "loss", "matrix_ms"}
    if unknown:
        raise _fail(where, f"unknown network keys {sorted(unknown)}")
    matrix = val.get("matrix_ms")
    try:
        return NetworkModel(
            kind=str(val.get("kind", "lan")),
            bandwidth_mbps=float(val.get("bandwidth_mbps", 1000.0)),
            jitter=float(val.get("jitter", 0.1)),
            loss=float(val.get("loss", 0.0)),
            matrix_ms=tuple(tuple(float(x) for x in row) for row in matrix) if matrix else None,
        )
    except (TypeError, ValueError) as exc:
        raise _fail(where, f"bad network: {exc}") from exc


def _round(raw: Any, defaults: dict[str, Any], where: str) -> Round:
    if not isinstance(raw, dict):
        raise _fail(where, f"a round must be a mapping, got {type(raw).__name__}")
    merged = {**defaults, **raw}
    unknown = set(merged) - _ROUND_KEYS
    if unknown:
        raise _fail(where, f"unknown keys {sorted(unknown)}")
    label = str(merged.get("label") or where)
    protos = merged.get("protocols", list(PROTOCOLS))
    protos = [protos] if isinstance(protos, str) else protos
    if not isinstance(protos, list) or not protos or any(p not in PROTOCOLS for p in protos):
        raise _fail(where, f"protocols must be a list from {list(PROTOCOLS)}, got {protos!r}")
    if "n" not in merged:
        raise _fail(where, "missing key 'n'")
    ns = _int_list(merged["n"], where, "n")
    seeds = _int_list(merged.get("seeds", [1]), where, "seeds")
    blocks_raw = merged.get("blocks", 50)
    if isinstance(blocks_raw, int) and not isinstance(blocks_raw, bool):
        blocks: dict[str, int] = {"*": blocks_raw}
    elif isinstance(blocks_raw, dict) and all(
        isinstance(v, int) and v > 0 for v in blocks_raw.values()
    ):
        blocks = {str(k): int(v) for k, v in blocks_raw.items()}
    else:
        raise _fail(
            where, f"blocks must be a positive integer or protocol→integer, got {blocks_raw!r}"
        )
    rate = merged.get("rate", {"type": "backlog"})
    if not isinstance(rate, dict) or rate.get("type") not in ("backlog", "poisson"):
        raise _fail(where, f"rate must be {{type: backlog|poisson, ...}}, got {rate!r}")
    loads = _loads(rate, where)
    scenario = str(merged.get("scenario", "none"))
    if scenario not in SCENARIOS:
        raise _fail(where, f"unknown scenario {scenario!r}; known: {sorted(SCENARIOS)}")
    for p in protos:
        if p not in SCENARIOS[scenario].protocols:
            raise _fail(where, f"scenario {scenario!r} does not apply to {p}")
    try:
        base = RunSpec(
            protocol=protos[0],
            n=max(ns),
            batch_size=int(merged.get("batch_size", 100)),
            tx_bytes=int(merged.get("tx_bytes", 512)),
            batch_timeout_s=float(merged.get("batch_timeout_s", 0.05)),
            rate=str(rate["type"]),
            tps=loads[0] if loads else 1000.0,
            outstanding=rate.get("outstanding"),
            network=_network(merged.get("network", "lan"), where),
            scenario=scenario,
            k=merged.get("k"),
            epoch_blocks=int(merged.get("epoch_blocks", 10)),
            recluster_every=int(merged.get("recluster_every", 10)),
            view_timeout_s=float(merged.get("view_timeout_s", 1.0)),
            max_time_s=float(merged.get("max_time_s", 120.0)),
            warmup_blocks=int(merged.get("warmup_blocks", 2)),
        )
    except (TypeError, ValueError) as exc:
        raise _fail(where, str(exc)) from exc
    purpose = str(merged.get("purpose", "scale"))
    if purpose not in PURPOSES:
        raise _fail(where, f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}")
    if purpose == "load_curve" and (base.rate != "poisson" or len(loads) < 2):
        raise _fail(
            where, "a load_curve round needs rate {type: poisson, tps: [two or more loads]}"
        )
    return Round(label, tuple(protos), ns, seeds, blocks, base, purpose, loads)


def _loads(rate: dict[str, Any], where: str) -> tuple[float, ...]:
    """The offered loads of a rate: ``tps`` as one number or a list (tx/s, each > 0)."""
    raw = rate.get("tps")
    if raw is None:
        return ()
    vals = raw if isinstance(raw, list) else [raw]
    if not vals or any(
        isinstance(v, bool) or not isinstance(v, int | float) or v <= 0 for v in vals
    ):
        raise _fail(where, f"rate tps must be a positive number or a list of them, got {raw!r}")
    if len(vals) > 1 and rate.get("type") != "poisson":
        raise _fail(where, "a list of offered loads needs rate type poisson")
    return tuple(float(v) for v in vals)


def read_experiment_file(
    path: Path, error: type[ConfigError] = ConfigError
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The YAML mapping of an experiment file (simulated or live) with its non-empty
    ``rounds`` list, and its ``defaults`` mapping; ``error`` naming the file if it cannot be
    read or has another shape. The caller checks each round."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("rounds"), list) or not raw["rounds"]:
        raise error(f"{path}: expected a mapping with a non-empty 'rounds' list")
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict):
        raise error(f"{path}: 'defaults' must be a mapping")
    return raw, defaults


def load_experiment(path: Path) -> Experiment:
    """Parse and validate an experiment YAML file."""
    raw, defaults = read_experiment_file(path)
    rounds = tuple(
        _round(r, defaults, f"{path.name} round {i + 1}") for i, r in enumerate(raw["rounds"])
    )
    return Experiment(str(raw.get("name", path.stem)), str(path), rounds)


def _slim(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("events", "messages_by_kind")}


def run_experiment(
    exp: Experiment,
    cost: CostModel,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run every spec of every round; returns (per-run rows, failures within assumptions)."""
    driver = SimulatedDriver(cost)
    specs = [(rnd, spec) for rnd in exp.rounds for spec in rnd.specs()]
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    for i, (rnd, spec) in enumerate(specs):
        if on_progress:
            on_progress(f"{rnd.label}: {spec.protocol} n={spec.n} seed={spec.seed}", i, len(specs))
        try:
            row = driver.run(spec)
        except (SafetyViolation, LivenessViolation) as exc:
            failures.append(f"{rnd.label}: {exc}")
            log.error("run failed: %s", exc)
            continue
        row["round"] = rnd.label
        row["purpose"] = rnd.purpose
        rows.append(row)
    if on_progress:
        on_progress("done", len(specs), len(specs))
    return rows, failures


def _median(vals: Iterable[Any]) -> float | None:
    nums = [float(v) for v in vals if isinstance(v, int | float) and not math.isnan(float(v))]
    return statistics.median(nums) if nums else None


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median of each metric over seeds, per (round, protocol, n, scenario, network, load)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        key = (
            r["round"],
            r["protocol"],
            r["n"],
            r["scenario"],
            r["network"],
            r.get("offered_tps"),
        )
        groups.setdefault(key, []).append(r)
    out = []
    for (rnd, proto, n, scen, net, offered), rs in groups.items():
        row: dict[str, Any] = {
            "round": rnd,
            "purpose": rs[0]["purpose"],
            "protocol": proto,
            "n": n,
            "scenario": scen,
            "network": net,
            "offered_tps": offered,
            "seeds": len(rs),
            "blocks": rs[0]["blocks_committed"],
            "batch_size": rs[0]["batch_size"],
        }
        for m in METRICS:
            row[m] = _median(r.get(m) for r in rs)
        if "k" in rs[0]:
            row["k"] = rs[0]["k"]
        out.append(row)
    return out


def _find(rows: list[dict[str, Any]], proto: str, n: int) -> dict[str, Any] | None:
    for r in rows:
        if (r["protocol"], r["n"], r["scenario"], r["network"], r["purpose"]) == (
            proto,
            n,
            "none",
            "lan",
            "scale",
        ):
            return r
    return None


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return float(a) / float(b)


def compute_targets(
    rows: list[dict[str, Any]], runs: list[dict[str, Any]], sweep: dict[str, Any] | None
) -> dict[str, Any]:
    """The docs/consensus.md targets as measured ratios, met: true/false (null = not measured)."""
    rc, pb, rf = _find(rows, "rcdbft", 100), _find(rows, "pbft", 100), _find(rows, "raft", 100)
    t: dict[str, Any] = {}
    msg = _ratio(rc and rc["messages_per_block"], pb and pb["messages_per_block"])
    t["messages_ratio_rcdbft_vs_pbft_n100"] = {
        "value": msg,
        "target": "<= 0.05",
        "met": None if msg is None else msg <= 0.05,
        "rcdbft": rc and rc["messages_per_block"],
        "pbft": pb and pb["messages_per_block"],
    }
    lat = _ratio(rc and rc["latency_p50_ms"], pb and pb["latency_p50_ms"])
    t["p50_latency_ratio_rcdbft_vs_pbft_n100_lan"] = {
        "value": lat,
        "target": "<= 0.5",
        "met": None if lat is None else lat <= 0.5,
    }
    thr = _ratio(rc and rc["throughput_tps"], pb and pb["throughput_tps"])
    t["throughput_ratio_rcdbft_vs_pbft_n100_lan"] = {
        "value": thr,
        "target": ">= 2",
        "met": None if thr is None else thr >= 2.0,
    }
    t["raft_comparison_n100_lan"] = {
        "p50_latency_ratio_rcdbft_vs_raft": _ratio(
            rc and rc["latency_p50_ms"], rf and rf["latency_p50_ms"]
        ),
        "throughput_ratio_rcdbft_vs_raft": _ratio(
            rc and rc["throughput_tps"], rf and rf["throughput_tps"]
        ),
        "p50_latency_ratio_pbft_vs_raft": _ratio(
            pb and pb["latency_p50_ms"], rf and rf["latency_p50_ms"]
        ),
    }
    big = [
        r
        for r in runs
        if r["purpose"] == "scale_target" and r["n"] >= 256 and r["blocks_committed"] >= 1000
    ]
    wall = max((r["wall_time_s"] for r in big), default=None)
    t["scale_n256_1000_blocks_wall_s"] = {
        "value": wall,
        "target": "< 120",
        "met": None if wall is None else wall < 120.0,
        "protocols": sorted({r["protocol"] for r in big}),
    }
    if sweep is None:
        t["safety_sweep_zero_violations"] = {
            "value": None,
            "met": None,
            "note": "run with --safety-sweep",
        }
    else:
        within = [s for s in sweep["scenarios"] if not s["beyond_assumptions"]]
        enough = all(s["runs"] >= 200 for s in within)
        bad = sum(s["safety_violations"] + s["liveness_failures"] for s in within)
        t["safety_sweep_zero_violations"] = {
            "value": bad,
            "target": "0 over >= 200 runs per scenario",
            "met": bad == 0 and enough,
            "runs_per_scenario": sweep["runs"],
        }
    return t


def _sweep_one(args: tuple[str, str, int, CostModel]) -> dict[str, Any]:
    scenario, proto, seed, cost = args
    n = 4 if scenario == "collusion_beyond_f" else SWEEP_SIZES[proto]
    spec = RunSpec(
        protocol=proto,
        n=n,
        seed=seed,
        blocks=40,
        batch_size=10,
        view_timeout_s=0.2,
        epoch_blocks=5,
        scenario=scenario,
    )
    try:
        row = run_once(spec, cost)
        return {
            "safety": len(row["safety_violations"]),
            "live": bool(row["liveness_violation"]),
            "first": (row["safety_violations"] or [row["liveness_violation"]])[0],
            "recovery_ms": row["recovery_ms"],
        }
    except SafetyViolation as exc:
        return {"safety": 1, "live": False, "first": str(exc), "recovery_ms": None}
    except LivenessViolation as exc:
        return {"safety": 0, "live": True, "first": str(exc), "recovery_ms": None}


def safety_sweep(
    runs: int,
    cost: CostModel,
    on_progress: Callable[[str, int, int], None] | None = None,
    scenarios: Iterable[str] | None = None,
    processes: int = 2,
) -> dict[str, Any]:
    """Run every (scenario, protocol) `runs` times with seeds 1..runs; count violations."""
    names = list(scenarios) if scenarios is not None else list(SCENARIOS)
    jobs = [(s, p) for s in names for p in SCENARIOS[s].protocols]
    out = []
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes) as pool:
        for i, (scen, proto) in enumerate(jobs):
            if on_progress:
                on_progress(f"sweep {scen} / {proto}", i, len(jobs))
            res = pool.map(_sweep_one, [(scen, proto, seed, cost) for seed in range(1, runs + 1)])
            bad = [r for r in res if r["safety"] or r["live"]]
            recs = [r["recovery_ms"] for r in res if r["recovery_ms"] is not None]
            out.append(
                {
                    "scenario": scen,
                    "protocol": proto,
                    "n": 4 if scen == "collusion_beyond_f" else SWEEP_SIZES[proto],
                    "runs": runs,
                    "beyond_assumptions": SCENARIOS[scen].beyond_assumptions,
                    "safety_violations": sum(1 for r in res if r["safety"]),
                    "liveness_failures": sum(1 for r in res if r["live"]),
                    "example": bad[0]["first"] if bad else None,
                    "recovery_ms_median": statistics.median(recs) if recs else None,
                }
            )
    if on_progress:
        on_progress("sweep done", len(jobs), len(jobs))
    return {"runs": runs, "blocks_per_run": 40, "scenarios": out}


def make_plots(rows: list[dict[str, Any]], runs: list[dict[str, Any]], out: Path) -> list[str]:
    """Write the PNG plots; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths: list[str] = []
    scale = [r for r in rows if r["purpose"] == "scale" and r["scenario"] == "none"]
    colours = {"pbft": "tab:red", "rcdbft": "tab:blue", "raft": "tab:green"}

    def series(metric: str) -> dict[str, tuple[list[int], list[float]]]:
        data: dict[str, tuple[list[int], list[float]]] = {}
        for proto in PROTOCOLS:
            pts = sorted(
                (r["n"], r[metric])
                for r in scale
                if r["protocol"] == proto and r[metric] is not None
            )
            if pts:
                data[proto] = ([p[0] for p in pts], [p[1] for p in pts])
        return data

    def save(fig: Any, name: str) -> None:
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(str(path))

    for metric, title, logy in (
        ("messages_per_block", "Messages per committed block", True),
        ("bytes_per_block", "Bytes per committed block", True),
        ("throughput_tps", "Saturated throughput (tx/s)", True),
    ):
        data = series(metric)
        if not data:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for proto, (xs, ys) in data.items():
            ax.plot(xs, ys, marker="o", label=proto, color=colours[proto])
        ax.set_xlabel("nodes (N)")
        ax.set_title(title)
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
        save(fig, f"{metric}.png")
    p50, p99 = series("latency_p50_ms"), series("latency_p99_ms")
    if p50:
        fig, ax = plt.subplots(figsize=(6, 4))
        for proto, (xs, ys) in p50.items():
            ax.plot(xs, ys, marker="o", label=f"{proto} p50", color=colours[proto])
            if proto in p99:
                ax.plot(
                    p99[proto][0],
                    p99[proto][1],
                    marker="x",
                    linestyle="--",
                    label=f"{proto} p99",
                    color=colours[proto],
                )
        ax.set_xlabel("nodes (N)")
        ax.set_ylabel("commit latency (ms)")
        ax.set_title("Commit latency, LAN model")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        save(fig, "latency.png")
    curve = [r for r in rows if r["purpose"] == "load_curve" and r["latency_p50_ms"] is not None]
    if curve:
        fig, ax = plt.subplots(figsize=(6, 4))
        for proto in PROTOCOLS:
            pts = sorted(
                (r["offered_tps"], r["latency_p50_ms"], r["latency_p99_ms"])
                for r in curve
                if r["protocol"] == proto
            )
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ax.plot(xs, [p[1] for p in pts], marker="o", label=f"{proto} p50", color=colours[proto])
            ax.plot(
                xs,
                [p[2] for p in pts],
                marker="x",
                linestyle="--",
                label=f"{proto} p99",
                color=colours[proto],
            )
        ax.set_xlabel("offered load (tx/s, Poisson arrivals)")
        ax.set_ylabel("commit latency (ms)")
        ax.set_title(f"Latency vs offered load, N={curve[0]['n']}, {curve[0]['network']} model")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        save(fig, "latency_vs_load.png")
    rec = [r for r in rows if r["purpose"] == "recovery" and r["recovery_ms"] is not None]
    if rec:
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = [f"{r['protocol']}\nn={r['n']}" for r in rec]
        ax.bar(labels, [r["recovery_ms"] for r in rec], color=[colours[r["protocol"]] for r in rec])
        ax.set_ylabel("longest commit gap after the fault (ms)")
        ax.set_title(f"Recovery after a primary failure ({rec[0]['scenario']})")
        ax.grid(alpha=0.3, axis="y")
        save(fig, "recovery.png")
    rep = [r for r in runs if r["purpose"] == "reputation" and r.get("reputation_series")]
    if rep:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rep[:4]:
            for node, vals in list(r["reputation_series"].items())[:2]:  # alike: show two
                ax.plot(
                    range(len(vals)),
                    vals,
                    marker=".",
                    label=f"{r['scenario']} node {node} (seed {r['seed']})",
                )
        ax.axhline(0.3, color="grey", linestyle=":", label="observer threshold 0.3")
        ax.axhline(0.6, color="grey", linestyle="--", label="leader threshold 0.6")
        ax.set_xlabel("epoch")
        ax.set_ylabel("reputation R")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title("Reputation of misbehaving nodes (RC-DBFT)")
        ax.legend(fontsize=7, loc="center right")
        ax.grid(alpha=0.3)
        save(fig, "reputation.png")
    return paths
