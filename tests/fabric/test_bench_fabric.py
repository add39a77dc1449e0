"""``ehrshare bench fabric`` on a real Fabric network (2.3 in CI): one short run of every round
(trivial write, RegisterRecord, RequestAccess; many patients and one hot patient; a fixed rate
and saturation) emits its keys and counts what the network committed. No timing threshold: the
target (ours ≥ 0.7 × trivial) is reported in the JSON, never asserted (docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ehrshare.errors import EXIT_UNAVAILABLE, EXIT_USAGE
from ehrshare.network.fabric import fabric_version


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), COLUMNS="200")
    cmd = [sys.executable, "-m", "ehrshare", "bench", "fabric", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.fabric
@pytest.mark.slow
def test_one_short_run_measures_every_round_against_the_trivial_chaincode() -> None:
    # Two processes serve the trivial chaincode behind its port (one in test_caliper.py).
    done = _run(
        "--json", "--rates", "10", "--duration", "1", "--clients", "2", "--ccaas-processes", "2"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "bench fabric: trivial write, many patients, saturation" in done.stderr
    result = json.loads(done.stdout)
    assert result["benchmark"] == "fabric"
    assert result["network"]["chaincodes"] == {"contract": "ehrshare", "trivial": "ehrshare-kv"}
    assert result["network"]["endorsers_per_tx"] == 2
    assert {"cpu", "cpu_count"} <= set(result["machine"])
    rounds = {(r["operation"], r["population"], r["offered_tps"]): r for r in result["rounds"]}
    ops = ("trivial write", "RegisterRecord", "RequestAccess")
    assert set(rounds) == {(o, p, t) for o in ops for p in ("many", "hot") for t in (10.0, None)}
    for key, r in rounds.items():
        assert sum(r["outcomes"].values()) == r["submitted"] > 0, key
        assert r["valid"] == r["outcomes"].get("VALID", 0), key
        assert r["valid"] > 0, (key, r["outcomes"])
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"], key
        assert r["cpu_ms_per_valid_tx"]["client"] > 0, key
    # Blind writes of the kv chaincode never conflict, even on one key.
    for population in ("many", "hot"):
        for rate in (10.0, None):
            r = rounds[("trivial write", population, rate)]
            assert r["outcomes"] == {"VALID": r["submitted"]}
    # Only the kv server works for trivial writes, only the contract's for the others.
    assert rounds[("trivial write", "many", None)]["cpu_ms_per_valid_tx"]["ccaas-kv"] > 0
    assert rounds[("RegisterRecord", "many", None)]["cpu_ms_per_valid_tx"]["ccaas"] > 0
    assert result["network"]["chaincode_server_processes"] == 2
    by_process = rounds[("trivial write", "many", None)]["cpu_ms_per_valid_tx_by_process"]
    assert {"ccaas", "ccaas-kv-0", "ccaas-kv-1"} <= set(by_process)
    ratios = result["saturation_ratio_ours_over_trivial"]
    trivial = rounds[("trivial write", "many", None)]["throughput_tps"]
    for op in ("RegisterRecord", "RequestAccess"):
        ours = rounds[(op, "many", None)]["throughput_tps"]
        assert ratios[op] == pytest.approx(ours / trivial)
    assert result["target"]["measured_min"] == pytest.approx(min(ratios.values()))
    assert result["target"]["met"] is (min(ratios.values()) >= 0.7)


@pytest.mark.fabric
def test_bft_on_fabric_2_is_refused_with_the_reason() -> None:
    if fabric_version() >= (3, 0, 0):
        pytest.skip("the Fabric binaries are 3.x: SmartBFT runs there")
    done = _run("--json", "--orderer", "bft", timeout=120)
    assert done.returncode == EXIT_UNAVAILABLE, done.stderr[-2000:]
    assert "SmartBFT orderers need Fabric 3.x" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--orderer", "paxos"), "orderer 'paxos' is not one of raft, raft3, bft"),
        (("--rates", "0"), "rates must be between 0 and 1000 tx/s"),
        (("--clients", "0"), "clients must be between 1 and 64"),
        (("--only", "GrantAccess"), "operation 'GrantAccess' is not one of"),
        (
            ("--only", "RequestAccess hinted", "--caliper"),
            "Caliper does not run RequestAccess hinted",
        ),
    ],
)
def test_bad_options_are_usage_errors_before_any_network(args: tuple[str, ...], error: str) -> None:
    done = _run(*args, timeout=120)
    assert done.returncode == EXIT_USAGE
    assert error in done.stderr
    assert "Traceback" not in done.stderr
