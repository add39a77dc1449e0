"""The live harness without Fabric: load generator, summary, prediction and calibration.

The load runs against the embedded ledger (a real backend with the same contract and the same
fine-grained endorse → submit → status flow as the Fabric client) through the SDK's
``record_submitter``, or against in-test fakes where a property needs a controlled submit.
No timing is asserted: only counts, orderings and arithmetic that follow from the inputs.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from typer.testing import CliRunner

from ehrshare.bench.live_fabric import check_fabric_tools, record_args, record_submitter
from ehrshare.cli import app
from ehrshare.commands.bench_consensus import _show_live, run_live_bench
from ehrshare.ledger.sandbox import Sandbox
from ehrshare_consensus.calibrate import CostModel
from ehrshare_consensus.experiments import EXPERIMENTS_DIR
from ehrshare_consensus.live import (
    UNAVAILABLE,
    LiveConfigError,
    LiveDriver,
    LiveUnavailable,
    LoadSpec,
    Submit,
    TxOutcome,
    TxSample,
    calibration,
    generate_load,
    load_live_experiment,
    predict,
    run_live,
    summarise,
)
from ehrshare_consensus.runner import RunSpec, run_once

COST = CostModel(sign_s=16e-6, verify_s=43e-6, hash_s_per_byte=0.5e-9, source="fixed")


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    sb = Sandbox.open(tmp_path / "sb", organizations=("Org1MSP",))
    yield sb
    sb.close()


def _patients(sb: Sandbox, count: int) -> list[Submit]:
    out = []
    for c in range(count):
        m = sb.member("Org1MSP", f"patient-{c}", role="patient")
        out.append(record_submitter(m.contract, m.ibe_id, "t1", c))
    return out


def test_closed_loop_on_the_embedded_ledger_commits_every_record(sandbox: Sandbox) -> None:
    clients = _patients(sandbox, 3)
    seen: list[int] = []
    samples = generate_load(
        clients, LoadSpec(txs=24, clients=3, warmup_txs=3), on_progress=lambda d, _t: seen.append(d)
    )
    assert len(samples) == 24
    assert sorted(s.seq for s in samples) == list(range(24))
    assert all(s.valid for s in samples), [s.error for s in samples if not s.valid]
    assert sorted(seen) == list(range(1, 25))
    # One transaction in flight per client: a client's transactions never overlap.
    for c in range(3):
        mine = sorted((s.start, s.end) for s in samples if s.client == c)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(mine))
    summary = summarise(samples, warmup_txs=3)
    assert summary["submitted"] == summary["valid"] == 24
    assert summary["invalid"] == summary["errors"] == 0
    # The embedded ledger cuts one block per submit: 24 distinct blocks of one tx each.
    assert summary["blocks"] == 24
    assert summary["avg_block_size"] == 1.0
    assert sum(summary["txs_per_block"].values()) == 24
    assert summary["steady_txs"] == 21
    assert summary["latency_p50_ms"] <= summary["latency_p95_ms"] <= summary["latency_p99_ms"]
    assert summary["throughput_tps"] > 0
    # Every record is on the ledger under the id the workload gave it.
    reader = sandbox.member("Org1MSP", "patient-0", register=False)
    # Client 0 owns record bench-t1-0-<seq> only for the seqs it ran: find one.
    seq0 = min(s.seq for s in samples if s.client == 0)
    rec = json.loads(reader.contract.evaluate_transaction("GetRecord", f"bench-t1-0-{seq0}"))
    assert rec["owner"] == "Org1MSP/patient-0"
    assert rec["record_id"] == f"bench-t1-0-{seq0}"


def test_a_rejected_transaction_is_an_error_sample_and_the_run_goes_on(sandbox: Sandbox) -> None:
    (good,) = _patients(sandbox, 1)

    def flaky(seq: int) -> TxOutcome:
        if seq == 2:
            good(0)  # a record id that already exists: the chaincode refuses it
        return good(seq)

    samples = generate_load([flaky], LoadSpec(txs=5, clients=1, warmup_txs=0))
    errors = [s for s in samples if s.error]
    assert [s.seq for s in errors] == [2]
    assert "already exists" in (errors[0].error or "")
    summary = summarise(samples)
    assert (summary["valid"], summary["errors"]) == (4, 1)
    assert summary["first_error"] == errors[0].error


class _FakeClock:
    """Advances one second per reading, so a deadline is reached after a known number of calls."""

    def __init__(self) -> None:
        self.t = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            self.t += 1.0
            return self.t


def _fake(block_of: dict[int, int]) -> Submit:
    def submit(seq: int) -> TxOutcome:
        return TxOutcome(block_of.get(seq, seq), "VALID", 0.001, 0.001, 0.01)

    return submit


def test_the_load_stops_by_itself_at_max_time() -> None:
    clock = _FakeClock()
    samples = generate_load(
        [_fake({})], LoadSpec(txs=1000, clients=1, warmup_txs=0, max_time_s=20.0), clock=clock
    )
    assert 0 < len(samples) < 1000


def test_poisson_arrivals_are_seeded_and_in_flight_is_bounded() -> None:
    active = 0
    peak = 0
    lock = threading.Lock()
    gate = threading.Event()

    def slow(seq: int) -> TxOutcome:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        gate.wait(0.002)
        with lock:
            active -= 1
        return TxOutcome(seq // 3, "VALID", 0.0, 0.0, 0.0)

    spec = LoadSpec(txs=40, clients=2, rate="poisson", tps=2000.0, warmup_txs=0, seed=7)
    first = generate_load([slow, slow], spec)
    second = generate_load([slow, slow], spec)
    assert len(first) == len(second) == 40
    assert peak <= 2

    # Arrival gaps come from the seed: the same in both runs.
    def gaps(s: Sequence[TxSample]) -> list[float]:
        a = sorted(x.arrival for x in s)
        return [round(b - c, 9) for c, b in itertools.pairwise(a)]

    assert gaps(first) == gaps(second)
    assert all(s.start >= s.arrival for s in first)


def test_summary_counts_blocks_and_sizes_from_commit_block_numbers() -> None:
    blocks = {0: 5, 1: 5, 2: 5, 3: 6, 4: 6, 5: 7}
    samples = [
        TxSample(0, seq, float(seq), float(seq), float(seq) + 0.5, _fake(blocks)(seq))
        for seq in range(6)
    ]
    samples.append(TxSample(1, 6, 6.0, 6.0, 6.5, TxOutcome(7, "MVCC_READ_CONFLICT", 0.0, 0.0, 0.0)))
    s = summarise(samples, warmup_txs=2)
    assert s["blocks"] == len(set(blocks.values()))
    assert s["txs_per_block"] == {"5": 3, "6": 2, "7": 1}
    assert s["avg_block_size"] == 6 / 3
    assert s["invalid"] == 1 and s["codes"] == {"MVCC_READ_CONFLICT": 1, "VALID": 6}
    assert s["steady_txs"] == 4  # seqs 2..5 are valid after the warm-up; seq 6 is not
    assert s["window_s"] == pytest.approx(5.5 - 2.0)
    assert s["throughput_tps"] == pytest.approx(4 / 3.5)
    assert s["latency_p50_ms"] == pytest.approx(500.0)


def test_calibration_is_predicted_over_measured() -> None:
    cal = calibration(
        {"throughput_tps": 30.0, "latency_p50_ms": 120.0, "latency_p95_ms": None},
        {"throughput_tps": 40.0, "latency_p50_ms": 0.0, "latency_p95_ms": 150.0},
    )
    assert cal["throughput_tps"] == {"predicted": 30.0, "measured": 40.0, "ratio": 30.0 / 40.0}
    assert cal["latency_p50_ms"]["ratio"] is None  # measured 0
    assert cal["latency_p95_ms"]["ratio"] is None  # nothing predicted


def test_prediction_adds_the_measured_fixed_costs_and_uses_the_round_block_cutting() -> None:
    spec = RunSpec(protocol="raft", n=3, batch_size=10, batch_timeout_s=0.1, tx_bytes=3000)
    load = LoadSpec(txs=100, clients=4, warmup_txs=8)
    measured = {"endorse_p50_ms": 20.0, "submit_p50_ms": 5.0, "blocks": 25, "avg_block_size": 4}
    p = predict(spec, load, measured, COST, one_way_ms=0.05, commit_path_ms=30.0)
    assert p["spec"]["n"] == 3
    assert (p["spec"]["batch_size"], p["spec"]["batch_timeout_s"]) == (10, 0.1)
    assert p["spec"]["client_delay_ms"] == pytest.approx(55.0)
    assert p["latency_p50_ms"] == pytest.approx(p["ordering_p50_ms"] + 55.0)
    # Four clients never fill a block of ten: blocks are cut at the timeout.
    assert p["ordering_p50_ms"] >= 100.0
    assert p["avg_block_size"] == pytest.approx(4.0)
    slower = predict(spec, load, measured | {"endorse_p50_ms": 200.0}, COST, 0.05, 30.0)
    assert slower["throughput_tps"] < p["throughput_tps"]
    unknown = predict(spec, load, measured, COST, 0.05, None)
    assert unknown["fixed_per_tx_ms"]["commit_path"] is None
    assert "not modelled" in unknown["commit_path"]


def test_a_prediction_that_cannot_finish_keeps_the_measurement() -> None:
    # One request every 10 s of client delay and a 1 s virtual-time budget: the simulator
    # commits too few blocks and says so instead of raising away the live row.
    spec = RunSpec(protocol="raft", n=1, batch_size=10, batch_timeout_s=0.05, max_time_s=0.5)
    load = LoadSpec(txs=20, clients=1, warmup_txs=0)
    measured = {"endorse_p50_ms": 600_000.0, "submit_p50_ms": 1.0, "blocks": 20}
    p = predict(spec, load, measured, COST, 0.01, None)
    assert p["error"] is not None and "blocks committed" in p["error"]
    assert p["throughput_tps"] is None and p["latency_p50_ms"] is None
    assert calibration(p, {"throughput_tps": 3.0})["throughput_tps"]["ratio"] is None


def test_single_node_raft_commits_and_client_delay_slows_the_closed_loop() -> None:
    base = RunSpec(protocol="raft", n=1, batch_size=10, batch_timeout_s=0.05, outstanding=4)
    fast = run_once(replace(base, blocks=10), COST)
    slow = run_once(replace(base, blocks=10, client_delay_s=0.05), COST)
    assert fast["blocks_committed"] == slow["blocks_committed"] == 10
    assert slow["throughput_tps"] < fast["throughput_tps"]
    full = run_once(replace(base, blocks=30, outstanding=50), COST)  # full blocks, no recursion
    assert full["blocks_committed"] == 30


def test_the_shipped_live_config_aligns_network_and_simulator() -> None:
    rounds = load_live_experiment(EXPERIMENTS_DIR / "live-fabric.yaml")
    raft = [r for r in rounds if r.protocol == "fabric-raft"]
    assert raft and {o for r in raft for o in r.orderers} >= {1, 3}
    for r in raft:
        for n in r.orderers:
            spec = r.spec(n)
            assert (spec.n, spec.batch_size, spec.batch_timeout_s) == (
                n,
                r.max_message_count,
                r.batch_timeout_s,
            )
    assert any(r.protocol == "fabric-smartbft" and 4 in r.orderers for r in rounds)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("rounds: [{protocol: fabric-pbft}]", "protocol must be one of"),
        ("rounds: [{protocol: fabric-raft, orderers: 0}]", "orderers must be"),
        ("rounds: [{protocol: fabric-raft, colour: red}]", "unknown keys ['colour']"),
        ("rounds: [{protocol: fabric-raft, rate: {type: burst}}]", "rate must be"),
        ("rounds: [{protocol: fabric-raft, txs: 5, warmup_txs: 5}]", "warmup_txs"),
        ("rounds: []", "non-empty 'rounds'"),
    ],
)
def test_bad_live_configs_name_the_problem(tmp_path: Path, body: str, needle: str) -> None:
    path = tmp_path / "live.yaml"
    path.write_text(body)
    with pytest.raises(LiveConfigError) as err:
        load_live_experiment(path)
    assert needle in str(err.value)


class _EmbeddedSession:
    def __init__(self, sb: Sandbox, clients: int, target: _EmbeddedTarget) -> None:
        self._clients = _patients(sb, clients)
        self._target = target

    @property
    def clients(self) -> Sequence[Submit]:
        return self._clients

    def commit_path_ms(self, blocks: Sequence[int]) -> float | None:
        self._target.asked_blocks = sorted(blocks)
        return None

    def describe(self) -> dict[str, Any]:
        return {"backend": "embedded"}

    def close(self) -> None:
        pass

    def __enter__(self) -> _EmbeddedSession:
        return self

    def __exit__(
        self, a: type[BaseException] | None, b: BaseException | None, c: TracebackType | None
    ) -> None:
        self.close()


class _EmbeddedTarget:
    """A live target on the embedded ledger: exercises the pipeline, not Fabric."""

    name = "fabric-raft"

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.opened: list[RunSpec] = []
        self.asked_blocks: list[int] = []

    def open(self, spec: RunSpec, clients: int) -> _EmbeddedSession:
        self.opened.append(spec)
        return _EmbeddedSession(self.sb, clients, self)


def test_run_live_row_carries_measured_predicted_and_ratios(sandbox: Sandbox) -> None:
    target = _EmbeddedTarget(sandbox)
    spec = RunSpec(protocol="raft", n=1, batch_size=10, batch_timeout_s=0.05, outstanding=2)
    row = run_live(target, spec, LoadSpec(txs=12, clients=2, warmup_txs=2), COST)
    assert target.opened == [spec]
    assert row["measured"]["valid"] == 12
    for metric in ("throughput_tps", "latency_p50_ms", "latency_p95_ms"):
        cal = row["calibration"][metric]
        assert cal["ratio"] == pytest.approx(cal["predicted"] / cal["measured"])
        assert cal["measured"] == row["measured"][metric]
        assert cal["predicted"] == row["predicted"][metric]
    assert row["ordering_calibration"]["ordering_p50_ms"]["predicted"] is not None
    assert target.asked_blocks == sorted(int(b) for b in row["measured"]["txs_per_block"])


def test_live_driver_is_a_harness_driver(sandbox: Sandbox) -> None:
    target = _EmbeddedTarget(sandbox)
    driver = LiveDriver(target, LoadSpec(txs=6, clients=2, warmup_txs=1), COST)
    assert driver.name == "fabric-raft"
    spec = RunSpec(protocol="raft", n=3, batch_size=5, batch_timeout_s=0.05, outstanding=2)
    row = driver.run(spec)
    assert target.opened == [spec]
    assert (row["orderers"], row["max_message_count"]) == (3, 5)
    assert row["predicted"]["spec"]["n"] == 3


def test_live_bench_json_reports_smartbft_unavailable(tmp_path: Path, sandbox: Sandbox) -> None:
    cfg = tmp_path / "live.yaml"
    cfg.write_text(
        "defaults: {batch_timeout_s: 0.05, max_message_count: 10, clients: 2, warmup_txs: 2}\n"
        "rounds:\n"
        "  - {label: r, protocol: fabric-raft, orderers: [1, 3], txs: 10}\n"
        "  - {label: s, protocol: fabric-smartbft, orderers: 4}\n"
    )
    from rich.console import Console

    target = _EmbeddedTarget(sandbox)
    result = run_live_bench(cfg, (1,), None, tmp_path / "out", Console(quiet=True), target)
    assert [s.n for s in target.opened] == [1]  # --orderers 1 left x3 out
    assert [r["orderers"] for r in result["rows"]] == [1]
    (bft,) = result["unavailable"]
    assert (bft["protocol"], bft["orderers"], bft["available"]) == ("fabric-smartbft", 4, False)
    assert bft["reason"] == UNAVAILABLE["fabric-smartbft"]
    assert {"machine", "cost_model", "rows", "unavailable"} <= set(result)
    saved = json.loads((tmp_path / "out" / "live-results.json").read_text())
    assert saved["rows"][0]["measured"]["valid"] == 10
    shown = Console(record=True, width=100)
    _show_live(result, shown)
    text = shown.export_text()
    assert "10/10" in text and "fabric-smartbft x4 (s): unavailable" in text


def test_live_fabric_without_binaries_says_make_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a path long enough to cross any terminal width: the message must stay one line
    monkeypatch.setenv("EHRSHARE_FABRIC_BIN", str(tmp_path / ("nothing-" * 20)))
    with pytest.raises(LiveUnavailable, match="make tools"):
        check_fabric_tools()
    result = CliRunner().invoke(
        app, ["bench", "consensus", "--live-fabric", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 3, result.output
    assert "make tools" in result.output
    assert "nothing-" * 20 in result.output


def test_live_options_are_checked(tmp_path: Path) -> None:
    bad = CliRunner().invoke(app, ["bench", "consensus", "--live-fabric", "--orderers", "one"])
    assert bad.exit_code == 2 and "--orderers" in bad.output
    stray = CliRunner().invoke(app, ["bench", "consensus", "--orderers", "1"])
    assert stray.exit_code == 2 and "--live-fabric" in stray.output


def test_record_args_are_fresh_per_transaction() -> None:
    a = record_args("Org1MSP/p", "tag", 0, 1)
    b = record_args("Org1MSP/p", "tag", 0, 2)
    c = record_args("Org1MSP/p", "tag", 1, 1)
    assert len({a[0], b[0], c[0]}) == 3 and len({a[4], b[4], c[4]}) == 3


def test_peer_commit_path_reads_the_peer_log_for_our_blocks_only() -> None:
    from ehrshare.bench.live_fabric import peer_commit_path_ms

    log = "\n".join(
        [
            "2026-11-24 INFO [ehr] Validated block [4] in 3ms",
            "2026-11-24 INFO [ehr] Committed block [4] with 4 transaction(s) in 9ms "
            "(state_validation=1ms block_and_pvtdata_commit=5ms state_commit=2ms)",
            # As the peer writes it: coloured level, then the channel in brackets.
            "\x1b[34m2026-11-24 20:44:49.245 UTC [txvalidator] Validate -> INFO 041\x1b[0m "
            "[ehr] Validated block [5] in 2ms",
            "INFO [ehr] Committed block [5] with 2 transaction(s) in 7ms (state_validation=0ms)",
            "INFO [other] Validated block [6] in 50ms",
            "INFO [other] Committed block [6] with 1 transaction(s) in 50ms (x)",
            "INFO [ehr] Validated block [7] in 1ms",
        ]
    )
    assert peer_commit_path_ms(log, "ehr", [4, 5]) == (12 + 9) / 2
    assert peer_commit_path_ms(log, "ehr", [4]) == 12.0
    assert peer_commit_path_ms(log, "ehr", [6, 7]) is None  # other channel; 7 never committed
    assert peer_commit_path_ms("", "ehr", [4]) is None


class _EmbeddedBftTarget(_EmbeddedTarget):
    """The same pipeline under SmartBFT's name (the embedded ledger stands in for the orderers)."""

    name = "fabric-smartbft"

    def __init__(self, sb: Sandbox, reason: str | None = None) -> None:
        super().__init__(sb)
        self.reason = reason

    def unavailable(self) -> str | None:
        return self.reason


def test_a_smartbft_round_is_predicted_by_pbft_and_set_beside_rcdbft_at_the_same_n(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cfg = tmp_path / "live.yaml"
    cfg.write_text(
        "defaults: {batch_timeout_s: 0.05, max_message_count: 10, clients: 2, warmup_txs: 2}\n"
        "rounds:\n"
        "  - {label: s, protocol: fabric-smartbft, orderers: 4, txs: 10}\n"
    )
    (rnd,) = load_live_experiment(cfg)
    assert (rnd.spec(4).protocol, rnd.spec(4).n) == ("pbft", 4)
    from rich.console import Console

    target = _EmbeddedBftTarget(sandbox)
    result = run_live_bench(cfg, None, None, tmp_path / "out", Console(quiet=True), target)
    assert [(s.protocol, s.n) for s in target.opened] == [("pbft", 4)]
    assert result["unavailable"] == []
    (row,) = result["rows"]
    assert (row["protocol"], row["orderers"]) == ("fabric-smartbft", 4)
    assert row["predicted"]["spec"]["protocol"] == "pbft"
    rc = row["compared"]["rcdbft"]
    assert rc["predicted"]["spec"] | {"protocol": "pbft"} == row["predicted"]["spec"]
    for metric in ("throughput_tps", "latency_p50_ms"):
        cal = rc["calibration"][metric]
        assert cal["measured"] == row["measured"][metric] and cal["predicted"] > 0
        assert cal["ratio"] == pytest.approx(cal["predicted"] / cal["measured"])
    shown = Console(record=True, width=120)
    _show_live(result, shown)
    text = shown.export_text()
    assert "rcdbft" in text and "same N and load" in text


def test_a_smartbft_target_that_cannot_run_here_is_a_row_with_its_reason(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cfg = tmp_path / "live.yaml"
    cfg.write_text(
        "rounds:\n  - {label: s, protocol: fabric-smartbft, orderers: 4, txs: 5, warmup_txs: 1}\n"
    )
    from rich.console import Console

    target = _EmbeddedBftTarget(sandbox, reason="Fabric 2.3.2 has no SmartBFT")
    result = run_live_bench(cfg, None, None, tmp_path / "out", Console(quiet=True), target)
    assert target.opened == [] and result["rows"] == []
    (bft,) = result["unavailable"]
    assert (bft["orderers"], bft["reason"]) == (4, "Fabric 2.3.2 has no SmartBFT")


def test_a_smartbft_round_needs_four_orderers(tmp_path: Path) -> None:
    cfg = tmp_path / "live.yaml"
    cfg.write_text("rounds:\n  - {label: s, protocol: fabric-smartbft, orderers: 1}\n")
    with pytest.raises(LiveConfigError, match="n must be at least 4"):
        load_live_experiment(cfg)


def _peer_saying(tmp_path: Path, version: str) -> Path:
    bin_dir = tmp_path / f"bin-{version}"
    bin_dir.mkdir()
    (bin_dir / "peer").write_text(f"#!/bin/sh\necho 'peer:'\necho ' Version: {version}'\n")
    for name in ("orderer", "configtxgen"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
    for name in ("peer", "orderer", "configtxgen"):
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.mark.parametrize(
    ("version", "runs"), [("2.3.2", False), ("2.5.16", False), ("3.1.5", True)]
)
def test_the_smartbft_target_runs_only_on_fabric_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, runs: bool
) -> None:
    from ehrshare.bench.live_fabric import fabric_targets

    monkeypatch.setenv("EHRSHARE_FABRIC_BIN", str(_peer_saying(tmp_path, version)))
    targets = fabric_targets()
    assert set(targets) == {"fabric-raft", "fabric-smartbft"}
    assert targets["fabric-raft"].unavailable() is None
    reason = targets["fabric-smartbft"].unavailable()
    assert (reason is None) == runs
    if reason is not None:
        assert f"has {version}" in reason and "3.x release binaries" in reason
