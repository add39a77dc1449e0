"""`ehrshare bench consensus`: the RC-DBFT vs PBFT vs Raft simulator benchmark.

Runs a declarative experiment file (YAML rounds) on the discrete-event simulator, prints JSON
with machine metadata, the calibrated CPU cost model, per-round rows, the docs/consensus.md target
ratios and the paths of the PNG plots; `--safety-sweep` adds many seeded runs per fault
scenario; `--live-fabric` instead runs the live rounds (a real Fabric network per round: Raft,
and SmartBFT x4 on Fabric 3.x binaries, driven through the SDK's Fabric targets, with the
simulator's prediction and the ratio, and RC-DBFT simulated beside SmartBFT).
This module only parses options and presents results; it must not compute protocol figures
itself.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ehrshare.benchutil import machine_metadata
from ehrshare.console import err_console, out_console
from ehrshare.errors import EXIT_CONFIG, EXIT_REFUSED

__all__ = ["register"]

_DEFAULT_OUT = Path("bench-results/consensus")
_LIVE_FABRIC = {
    "done": False,
    "reason": (
        "not part of this run: `ehrshare bench consensus --live-fabric` measures a real Fabric "
        "2.3 Raft network (x1, x3) and compares it with this simulator; SmartBFT needs "
        "Fabric >= 3.0, which the Go module proxy here refuses"
    ),
}


def _clean(value: Any) -> Any:
    """JSON has no NaN: turn NaN into null, recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def run_bench(
    config: Path | None,
    quick: bool,
    out: Path,
    safety_sweep_runs: int | None,
    console: Console,
) -> dict[str, Any]:
    """Run the experiment (and optionally the sweep); write JSON and plots; return the result."""
    from ehrshare_consensus.calibrate import measured_costs
    from ehrshare_consensus.experiments import (
        EXPERIMENTS_DIR,
        aggregate,
        compute_targets,
        load_experiment,
        make_plots,
        run_experiment,
        safety_sweep,
    )

    path = config or EXPERIMENTS_DIR / ("quick.yaml" if quick else "default.yaml")
    exp = load_experiment(path)
    cost = measured_costs()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("consensus rounds", total=1)

        def tick(label: str, done: int, total: int) -> None:
            progress.update(task, description=label, completed=done, total=total)

        runs, failures = run_experiment(exp, cost, tick)
        sweep = None
        if safety_sweep_runs is not None:
            task2 = progress.add_task("safety sweep", total=1)

            def tick2(label: str, done: int, total: int) -> None:
                progress.update(task2, description=label, completed=done, total=total)

            sweep = safety_sweep(safety_sweep_runs, cost, tick2)
    rows = aggregate(runs)
    targets = compute_targets(rows, runs, sweep)
    plots = make_plots(rows, runs, out)
    slim_runs = [
        {k: v for k, v in r.items() if k not in ("events", "messages_by_kind")}
        | {
            "events": r.get("events", {}),
            "messages_by_kind": r.get("messages_by_kind", {}),
        }
        for r in runs
    ]
    result: dict[str, Any] = {
        "benchmark": "consensus",
        "machine": machine_metadata(),
        "config": {"name": exp.name, "path": exp.source, "quick": quick},
        "driver": "simulated (simpy discrete-event, virtual time)",
        "cost_model": cost.as_dict(),
        "live_fabric": _LIVE_FABRIC,
        "rows": rows,
        "runs": slim_runs,
        "targets": targets,
        "failures": failures,
        "safety_sweep": sweep,
        "plots": plots,
    }
    result = _clean(result)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def parse_orderers(text: str | None) -> tuple[int, ...] | None:
    """``"1,3"`` → (1, 3); None stays None (every count the config names)."""
    if text is None:
        return None
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        vals = ()
    if not vals or any(v < 1 for v in vals):
        raise typer.BadParameter(
            f"expected a comma-separated list of orderer counts like 1,3, got {text!r}",
            param_hint="--orderers",
        )
    return vals


def run_live_bench(
    config: Path | None,
    orderers: tuple[int, ...] | None,
    txs: int | None,
    out: Path,
    console: Console,
    target: Any = None,
) -> dict[str, Any]:
    """Run the live rounds (each round × orderer count on a fresh network), write JSON.

    ``target`` is the live target (default: the SDK's Fabric targets, Raft and SmartBFT); rounds
    of a protocol no target here can run, or whose target says it cannot run with these
    binaries (SmartBFT before Fabric 3.x), are reported as unavailable with the reason.
    """
    from dataclasses import replace

    from ehrshare.bench.live_fabric import fabric_targets
    from ehrshare_consensus.calibrate import measured_costs
    from ehrshare_consensus.experiments import EXPERIMENTS_DIR
    from ehrshare_consensus.live import UNAVAILABLE, load_live_experiment, run_live

    path = config or EXPERIMENTS_DIR / "live-fabric.yaml"
    rounds = load_live_experiment(path)
    targets: dict[str, Any] = {target.name: target} if target is not None else fabric_targets()
    cost = measured_costs()
    rows: list[dict[str, Any]] = []
    unavailable: list[dict[str, Any]] = []
    jobs: list[tuple[Any, int, Any]] = []
    reasons: dict[str, str | None] = {}
    for rnd in rounds:
        if txs is not None:
            rnd = replace(
                rnd, load=replace(rnd.load, txs=txs, warmup_txs=min(rnd.load.warmup_txs, txs // 5))
            )
        chosen = targets.get(rnd.protocol)
        if chosen is not None and rnd.protocol not in reasons:
            check = getattr(chosen, "unavailable", None)
            reasons[rnd.protocol] = check() if check is not None else None
        for n in rnd.orderers:
            if orderers is not None and n not in orderers and chosen is not None:
                continue
            reason = (
                UNAVAILABLE.get(rnd.protocol, f"no live target for {rnd.protocol}")
                if chosen is None
                else reasons[rnd.protocol]
            )
            if reason is not None:
                unavailable.append(
                    {
                        "round": rnd.label,
                        "protocol": rnd.protocol,
                        "orderers": n,
                        "available": False,
                        "reason": reason,
                    }
                )
                continue
            assert chosen is not None
            jobs.append((rnd, n, chosen))
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        for rnd, n, chosen in jobs:
            task = progress.add_task(
                f"{rnd.label}: {rnd.protocol} x{n} (starting)", total=rnd.load.txs
            )

            def tick(
                done: int,
                total: int,
                task: Any = task,
                label: str = rnd.label,
                n: int = n,
                name: str = chosen.name,
            ) -> None:
                progress.update(task, description=f"{label}: {name} x{n}", completed=done)

            row = run_live(chosen, rnd.spec(n), rnd.load, cost, tick)
            row["round"] = rnd.label
            rows.append(row)
    result: dict[str, Any] = {
        "benchmark": "consensus-live",
        "machine": machine_metadata(),
        "config": {"path": str(path), "orderers": list(orderers) if orderers else None},
        "driver": f"live ({', '.join(sorted({c.name for _, _, c in jobs}))}) + simulated "
        "prediction",
        "cost_model": cost.as_dict(),
        "live_fabric": {"done": bool(rows), "rounds": len(rows)},
        "rows": rows,
        "unavailable": unavailable,
    }
    result = _clean(result)
    out.mkdir(parents=True, exist_ok=True)
    (out / "live-results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def _show_live(result: dict[str, Any], console: Console) -> None:
    meas = Table(title="Live Fabric, measured (latency: submit → commit reported, ms)")
    for col in ("round", "N", "VALID", "blocks", "tx/block", "tx/s", "p50", "p95", "p99"):
        meas.add_column(col, justify="left" if col == "round" else "right")
    pred = Table(title="Simulator prediction (ratio = predicted / measured)")
    for col in ("round", "N", "tx/s", "ratio", "p50", "ratio", "p95", "ratio", "ordering"):
        pred.add_column(col, justify="left" if col == "round" else "right")
    for r in result["rows"]:
        m, c = r["measured"], r["calibration"]
        meas.add_row(
            r["round"],
            str(r["orderers"]),
            f"{m['valid']}/{m['submitted']}",
            str(m["blocks"]),
            _fmt(m["avg_block_size"]),
            _fmt(m["throughput_tps"]),
            _fmt(m["latency_p50_ms"]),
            _fmt(m["latency_p95_ms"]),
            _fmt(m["latency_p99_ms"]),
        )
        pred.add_row(
            r["round"],
            str(r["orderers"]),
            _fmt(c["throughput_tps"]["predicted"]),
            _fmt(c["throughput_tps"]["ratio"], 2),
            _fmt(c["latency_p50_ms"]["predicted"]),
            _fmt(c["latency_p50_ms"]["ratio"], 2),
            _fmt(c["latency_p95_ms"]["predicted"]),
            _fmt(c["latency_p95_ms"]["ratio"], 2),
            _fmt(r["ordering_calibration"]["ordering_p50_ms"]["ratio"], 3),
        )
    console.print(meas)
    console.print(pred)
    beside = Table(title="Other protocols simulated at the same N and load (ratio = sim / live)")
    for col in ("round", "N", "simulated", "tx/s", "ratio", "p50", "ratio", "ordering"):
        beside.add_column(col, justify="left" if col in ("round", "simulated") else "right")
    for r in result["rows"]:
        for name, other in (r.get("compared") or {}).items():
            c = other["calibration"]
            beside.add_row(
                r["round"],
                str(r["orderers"]),
                name,
                _fmt(c["throughput_tps"]["predicted"]),
                _fmt(c["throughput_tps"]["ratio"], 2),
                _fmt(c["latency_p50_ms"]["predicted"]),
                _fmt(c["latency_p50_ms"]["ratio"], 2),
                _fmt(other["ordering_calibration"]["ordering_p50_ms"]["ratio"], 3),
            )
    if beside.row_count:
        console.print(beside)
    for r in result["rows"]:
        if r["predicted"].get("error"):
            console.print(
                f"{r['round']} x{r['orderers']}: no prediction: {r['predicted']['error']}"
            )
    for u in result["unavailable"]:
        console.print(
            f"{u['protocol']} x{u['orderers']} ({u['round']}): unavailable: {u['reason']}"
        )


def _show(result: dict[str, Any], console: Console) -> None:
    table = Table(title="Consensus simulation (medians over seeds)")
    for col in (
        "round",
        "protocol",
        "N",
        "msgs/block",
        "KB/block",
        "p50 ms",
        "p99 ms",
        "tx/s",
        "recovery ms",
    ):
        table.add_column(col, justify="right" if col not in ("round", "protocol") else "left")
    for r in result["rows"]:
        kb = r["bytes_per_block"] / 1024 if r["bytes_per_block"] is not None else None
        table.add_row(
            r["round"],
            r["protocol"],
            str(r["n"]),
            _fmt(r["messages_per_block"], 0),
            _fmt(kb, 0),
            _fmt(r["latency_p50_ms"]),
            _fmt(r["latency_p99_ms"]),
            _fmt(r["throughput_tps"], 0),
            _fmt(r["recovery_ms"]),
        )
    console.print(table)
    tt = Table(title="Targets (docs/consensus.md)")
    tt.add_column("target")
    tt.add_column("value", justify="right")
    tt.add_column("met")
    for name, t in result["targets"].items():
        if "met" in t:
            tt.add_row(name, _fmt(t.get("value"), 3), str(t["met"]))
    console.print(tt)
    if result.get("safety_sweep"):
        st = Table(title=f"Safety sweep ({result['safety_sweep']['runs']} seeded runs each)")
        for col in ("scenario", "protocol", "N", "beyond assumptions", "safety", "liveness"):
            st.add_column(col)
        for s in result["safety_sweep"]["scenarios"]:
            st.add_row(
                s["scenario"],
                s["protocol"],
                str(s["n"]),
                str(s["beyond_assumptions"]),
                str(s["safety_violations"]),
                str(s["liveness_failures"]),
            )
        console.print(st)
    for f in result["failures"]:
        console.print(f"[bold red]FAILED[/]: {f}")


def _sweep_failed(result: dict[str, Any]) -> bool:
    sweep = result.get("safety_sweep")
    if not sweep:
        return False
    return any(
        (s["safety_violations"] or s["liveness_failures"]) and not s["beyond_assumptions"]
        for s in sweep["scenarios"]
    )


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add `ehrshare bench consensus` to the command tree."""

    @bench_app.command("consensus")
    def bench_consensus(
        config: Annotated[
            Path | None,
            typer.Argument(help="Experiment YAML (default: the bundled default or quick config)."),
        ] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print only the JSON result.")
        ] = False,
        quick: Annotated[bool, typer.Option("--quick", help="Small rounds (< 1 min).")] = False,
        out: Annotated[
            Path, typer.Option("--out", help="Directory for results.json and the PNG plots.")
        ] = _DEFAULT_OUT,
        sweep: Annotated[
            bool, typer.Option("--safety-sweep", help="Also run seeded runs per fault scenario.")
        ] = False,
        runs: Annotated[
            int, typer.Option("--runs", min=1, help="Runs per scenario in the safety sweep.")
        ] = 200,
        live_fabric: Annotated[
            bool,
            typer.Option(
                "--live-fabric",
                help="Measure a real Fabric Raft network, and SmartBFT x4 with 3.x binaries "
                "(rounds of live-fabric.yaml, or CONFIG), and compare with the simulator's "
                "prediction.",
            ),
        ] = False,
        orderers: Annotated[
            str | None,
            typer.Option("--orderers", help="With --live-fabric: only these orderer counts (1,3)."),
        ] = None,
        txs: Annotated[
            int | None,
            typer.Option("--txs", min=5, help="With --live-fabric: transactions per round."),
        ] = None,
    ) -> None:
        """Simulate PBFT, RC-DBFT and Raft (messages, bytes, latency, throughput, recovery,
        reputation) and check safety and liveness in every run; or, with --live-fabric, measure
        a real Fabric Raft network against the simulator's prediction."""
        err = err_console()
        _require_bench_extra(err)
        from ehrshare_consensus.experiments import ConfigError

        if config is not None and not config.is_file():
            raise typer.BadParameter(
                f"experiment file {config} does not exist", param_hint="CONFIG"
            )
        if live_fabric:
            _live_command(config, parse_orderers(orderers), txs, out, as_json, err)
            return
        if orderers is not None or txs is not None:
            raise typer.BadParameter("--orderers and --txs go with --live-fabric")
        try:
            result = run_bench(config, quick, out, runs if sweep else None, err)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc), param_hint="CONFIG") from exc
        if as_json:
            typer.echo(json.dumps(result, indent=2))
        else:
            _show(result, out_console())
            out_console().print(f"results: {out / 'results.json'}")
        if result["failures"] or _sweep_failed(result):
            err.print("[bold red]safety or liveness violated within the stated assumptions[/]")
            raise typer.Exit(code=EXIT_REFUSED)


#: What the simulator imports that a plain `pip install ehrshare` does not bring.
BENCH_EXTRA = ("numpy", "simpy", "kmedoids", "matplotlib")


def _require_bench_extra(err: Console) -> None:
    missing = []
    for name in BENCH_EXTRA:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        err.print(
            f"[red]error:[/red] the consensus simulator needs {', '.join(missing)}, "
            "which the SDK alone does not install",
            highlight=False,
        )
        err.print("[dim]hint:[/dim] pip install 'ehrshare\\[bench]'", highlight=False)
        raise typer.Exit(code=EXIT_CONFIG)


def _live_command(
    config: Path | None,
    orderers: tuple[int, ...] | None,
    txs: int | None,
    out: Path,
    as_json: bool,
    err: Console,
) -> None:
    from ehrshare_consensus.live import LiveConfigError, LiveUnavailable

    try:
        result = run_live_bench(config, orderers, txs, out, err)
    except LiveConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="CONFIG") from exc
    except LiveUnavailable as exc:
        err.print(f"[bold red]live Fabric unavailable[/]: {exc}")
        raise typer.Exit(code=EXIT_CONFIG) from exc
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        _show_live(result, out_console())
        out_console().print(f"results: {out / 'live-results.json'}")
    bad = [r for r in result["rows"] if r["measured"]["valid"] != r["measured"]["submitted"]]
    if bad:
        err.print(
            "[bold red]some transactions did not commit VALID[/]: "
            + ", ".join(f"{r['round']} x{r['orderers']}: {r['measured']['codes']}" for r in bad)
        )
        raise typer.Exit(code=EXIT_REFUSED)
