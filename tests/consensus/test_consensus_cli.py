"""`ehrshare bench consensus` on a tiny config: JSON shape, plots, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ehrshare.cli import app
from ehrshare_consensus.experiments import ConfigError, load_experiment

ROW_KEYS = {
    "protocol",
    "n",
    "messages_per_block",
    "bytes_per_block",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "throughput_tps",
}
TINY = """
name: cli-test
defaults: {batch_size: 10, view_timeout_s: 0.2, epoch_blocks: 5}
rounds:
  - label: scale
    protocols: [pbft, rcdbft, raft]
    n: [4, 16]
    blocks: 10
  - label: recovery
    purpose: recovery
    scenario: crash_primary
    protocols: [pbft]
    n: [4]
    blocks: 12
"""


def test_bench_consensus_json(tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", "consensus", str(cfg), "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"machine", "cost_model", "rows", "targets", "live_fabric", "plots"} <= set(data)
    assert data["live_fabric"]["done"] is False
    assert data["cost_model"]["source"] == "measured"
    assert len(data["rows"]) == 7
    for row in data["rows"]:
        assert set(row) >= ROW_KEYS
        assert row["messages_per_block"] > 0
    recovery = [r for r in data["rows"] if r["purpose"] == "recovery"]
    assert recovery and recovery[0]["recovery_ms"] > 0
    for target in data["targets"].values():
        if "met" in target:
            assert target["met"] in (True, False, None)
    assert (out / "results.json").is_file()
    assert all(Path(p).is_file() and p.endswith(".png") for p in data["plots"])
    assert {"messages_per_block.png", "latency.png", "recovery.png"} <= {
        Path(p).name for p in data["plots"]
    }


def test_bench_consensus_rejects_a_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("rounds:\n  - {protocols: [paxos], n: 4}\n")
    result = CliRunner().invoke(app, ["bench", "consensus", str(cfg), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "protocols" in " ".join(result.output.replace("│", " ").split())


def test_bench_consensus_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "consensus", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    flat = " ".join(result.output.replace("│", " ").split())  # rich wraps long paths
    assert "does not exist" in flat


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("rounds: []", "non-empty 'rounds'"),
        ("rounds:\n  - {n: 4, colour: red}", "unknown keys ['colour']"),
        ("rounds:\n  - {protocols: [raft], n: 4, scenario: silent}", "does not apply to raft"),
        ("rounds:\n  - {n: [4, x]}", "n must be an integer"),
        ("rounds:\n  - {n: 4, network: {kind: mars}}", "lan, wan or measured"),
        ("rounds: [", "not valid YAML"),
        ("rounds:\n  - {n: 4, rate: {type: poisson, tps: [100, -5]}}", "positive number"),
        ("rounds:\n  - {n: 4, rate: {type: backlog, tps: [100, 200]}}", "needs rate type poisson"),
        (
            "rounds:\n  - {n: 4, purpose: load_curve, rate: {type: poisson, tps: 100}}",
            "two or more loads",
        ),
    ],
)
def test_experiment_loader_names_what_is_wrong(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "x.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_experiment(cfg)
    assert needle in str(err.value)


LOAD_CURVE = """
name: load-curve-test
defaults: {batch_size: 20, batch_timeout_s: 0.02}
rounds:
  - label: curve
    purpose: load_curve
    rate: {type: poisson, tps: [200, 800, 20000]}
    protocols: [pbft, raft]
    n: [4]
    blocks: 12
"""


def test_load_curve_round_runs_one_row_per_offered_load(tmp_path: Path) -> None:
    cfg = tmp_path / "curve.yaml"
    cfg.write_text(LOAD_CURVE)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", "consensus", str(cfg), "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = [r for r in data["rows"] if r["purpose"] == "load_curve"]
    assert sorted((r["protocol"], r["offered_tps"]) for r in rows) == [
        (p, t) for p in ("pbft", "raft") for t in (200.0, 800.0, 20000.0)
    ]
    for proto in ("pbft", "raft"):
        by_load = {r["offered_tps"]: r for r in rows if r["protocol"] == proto}
        # Below saturation the system carries what is offered; far above it, it cannot, and
        # requests queue, so latency grows with the load.
        assert by_load[200.0]["throughput_tps"] < 400
        assert by_load[20000.0]["throughput_tps"] < 20000 * 0.9
        assert by_load[20000.0]["latency_p99_ms"] > by_load[200.0]["latency_p99_ms"]
    assert "latency_vs_load.png" in {Path(p).name for p in data["plots"]}


def test_bundled_configs_parse() -> None:
    root = Path(__file__).resolve().parents[2] / "consensus-plugin" / "experiments"
    for name in ("default.yaml", "quick.yaml", "tiny.yaml"):
        exp = load_experiment(root / name)
        assert exp.rounds
    quick = load_experiment(root / "quick.yaml")
    scale = [r for r in quick.rounds if r.purpose == "scale"]
    assert any(100 in r.ns and {"pbft", "rcdbft"} <= set(r.protocols) for r in scale)
