"""The live harness drives a real Fabric 2.3 Raft network at a small load, in CI.

Each case starts a fresh network (``ehrshare.network.fabric``: orderers, one peer, the chaincode as
ccaas) with BatchTimeout / MaxMessageCount from the round, registers one patient per client
through the peer client, runs ``RegisterRecord`` transactions through the harness's load
generator and checks what must hold whatever the timing: every transaction committed VALID,
the commit block numbers account for every transaction with no block above MaxMessageCount,
and the row carries measured, predicted and predicted/measured figures. No timing threshold.
"""

from __future__ import annotations

import math

import pytest

from ehrshare.bench.live_fabric import FabricTarget, fabric_targets
from ehrshare_consensus.calibrate import measured_costs
from ehrshare_consensus.live import LoadSpec, run_live
from ehrshare_consensus.runner import RunSpec

pytestmark = [pytest.mark.fabric, pytest.mark.slow]

TXS = 30
MAX_MESSAGE_COUNT = 5


@pytest.mark.parametrize("orderers", [1, 3])
def test_live_raft_round_is_well_formed(orderers: int) -> None:
    spec = RunSpec(protocol="raft", n=orderers, batch_size=MAX_MESSAGE_COUNT, batch_timeout_s=0.1)
    load = LoadSpec(txs=TXS, clients=4, warmup_txs=4, max_time_s=90.0)
    row = run_live(FabricTarget(), spec, load, measured_costs())
    m = row["measured"]
    assert m["errors"] == 0, m["first_error"]
    assert (m["submitted"], m["valid"], m["invalid"]) == (TXS, TXS, 0)
    assert m["codes"] == {"VALID": TXS}
    per_block = {int(b): n for b, n in m["txs_per_block"].items()}
    assert sum(per_block.values()) == TXS
    assert max(per_block.values()) <= MAX_MESSAGE_COUNT
    assert m["blocks"] == len(per_block) >= math.ceil(TXS / MAX_MESSAGE_COUNT)
    assert m["last_block"] - m["first_block"] + 1 >= m["blocks"]
    assert m["avg_block_size"] == pytest.approx(TXS / m["blocks"])
    assert m["latency_p50_ms"] <= m["latency_p95_ms"] <= m["latency_p99_ms"]
    assert row["network"]["orderers"] == orderers
    assert row["network"]["max_message_count"] == MAX_MESSAGE_COUNT
    p = row["predicted"]
    assert p["spec"]["n"] == orderers
    assert (p["spec"]["batch_size"], p["spec"]["batch_timeout_s"]) == (MAX_MESSAGE_COUNT, 0.1)
    # The peer's own per-block validation + commit lines were found for our blocks.
    assert p["fixed_per_tx_ms"]["commit_path"] is not None
    assert p["commit_path"].startswith("measured")
    for metric in ("throughput_tps", "latency_p50_ms", "latency_p95_ms"):
        cal = row["calibration"][metric]
        assert cal["measured"] == m[metric] and cal["measured"] > 0
        assert cal["ratio"] == pytest.approx(cal["predicted"] / cal["measured"])


@pytest.mark.fabric3
def test_live_smartbft_round_is_well_formed_and_set_beside_rcdbft() -> None:
    target = fabric_targets()["fabric-smartbft"]
    reason = target.unavailable()
    if reason is not None:
        pytest.skip(reason)
    spec = RunSpec(protocol="pbft", n=4, batch_size=MAX_MESSAGE_COUNT, batch_timeout_s=0.1)
    load = LoadSpec(txs=TXS, clients=4, warmup_txs=4, max_time_s=120.0)
    row = run_live(target, spec, load, measured_costs())
    m = row["measured"]
    assert m["errors"] == 0, m["first_error"]
    assert (m["submitted"], m["valid"]) == (TXS, TXS)
    per_block = {int(b): n for b, n in m["txs_per_block"].items()}
    assert sum(per_block.values()) == TXS and max(per_block.values()) <= MAX_MESSAGE_COUNT
    assert (row["protocol"], row["orderers"]) == ("fabric-smartbft", 4)
    assert (row["network"]["consensus"], row["network"]["orderer_quorum"]) == ("BFT", 3)
    assert row["predicted"]["spec"]["protocol"] == "pbft"
    rc = row["compared"]["rcdbft"]
    assert rc["predicted"]["spec"]["protocol"] == "rcdbft" and rc["predicted"]["spec"]["n"] == 4
    for figures in (row["calibration"], rc["calibration"]):
        cal = figures["latency_p50_ms"]
        assert cal["measured"] == m["latency_p50_ms"] > 0
        assert cal["ratio"] == pytest.approx(cal["predicted"] / cal["measured"])
