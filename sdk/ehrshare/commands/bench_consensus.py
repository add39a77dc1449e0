"""`ehrshare bench consensus`: the RC-DBFT vs PBFT vs Raft simulator benchmark.

Runs a declarative experiment file (YAML rounds) on the discrete-event simulator, prints JSON
with machine metadata, the calibrated CPU cost model, per-round rows, the DESIGN.md §6 target
ratios and the paths of the PNG plots; `--safety-sweep` adds many seeded runs per fault
scenario. This module only parses options and presents results; it must not compute protocol
figures itself, and it must not report a live-Fabric number (no live driver exists yet).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ehrshare.benchutil import machine_metadata

__all__ = ["register"]

_DEFAULT_OUT = Path("bench-results/consensus")
_LIVE_FABRIC = {
    "done": False,
    "reason": (
        "the pinned Fabric (3.1, with the Gateway and SmartBFT) cannot be built on this machine "
        "(the Go module proxy refuses github.com/hyperledger/fabric from v2.2.1 on), so no live "
        "Raft/SmartBFT network was measured; Fabric v2.1.1 (Raft, no Gateway, no SmartBFT) does "
        "build and runs in the test suite, but no live driver for it exists yet (the harness "
        "has a Driver interface for one)"
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
    tt = Table(title="Targets (DESIGN.md §6)")
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
    ) -> None:
        """Simulate PBFT, RC-DBFT and Raft (messages, bytes, latency, throughput, recovery,
        reputation) and check safety and liveness in every run."""
        from ehrshare_consensus.experiments import ConfigError

        err = Console(stderr=True)
        if config is not None and not config.is_file():
            raise typer.BadParameter(
                f"experiment file {config} does not exist", param_hint="CONFIG"
            )
        try:
            result = run_bench(config, quick, out, runs if sweep else None, err)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc), param_hint="CONFIG") from exc
        if as_json:
            typer.echo(json.dumps(result, indent=2))
        else:
            _show(result, Console())
            Console().print(f"results: {out / 'results.json'}")
        if result["failures"] or _sweep_failed(result):
            err.print("[bold red]safety or liveness violated within the stated assumptions[/]")
            raise typer.Exit(code=1)
