"""What ehrshare.bench.caliper gives Caliper and reads back, without Caliper or a network: the
network configuration names each organisation's generated connection profile with discovery on
and mutual TLS, and the summary tables Caliper prints parse to numbers (None for its '-')."""

from __future__ import annotations

from pathlib import Path

import pytest

from ehrshare.bench.caliper import (
    CaliperIdentity,
    _network_config,
    _rounds,
    _successful_tps,
    parse_summary,
)

_HEADER = (
    "| Name | Succ | Fail | Send Rate (TPS) | Max Latency (s) | Min Latency (s) "
    "| Avg Latency (s) | Throughput (TPS) |"
)
_LOG = "\n".join(
    [
        "2026.12.07-02:34:56.600 info  [caliper] [report-builder]",
        "+------+------+------+",
        _HEADER,
        "|------|------|------|------|------|------|------|------|",
        "| \x1b[32mtrivial-write_many_10tps\x1b[0m | 22 | 0 | 10.6 | 0.18 | 0.04 | 0.07 | 10.2 |",
        "|------|------|------|------|------|------|------|------|",
        "| RegisterRecord_hot_10tps | 0    | 20   | 10.5 | -    | -    | -    | 0.0  |",
        "+------+------+------+",
        "| not a table row | 1 |",
    ]
)


def test_summary_rows_parse_with_colours_and_missing_cells() -> None:
    rows = parse_summary(_LOG)
    assert set(rows) == {"trivial-write_many_10tps", "RegisterRecord_hot_10tps"}
    assert rows["trivial-write_many_10tps"] == {
        "succ": 22.0,
        "fail": 0.0,
        "send_rate_tps": 10.6,
        "max_latency_s": 0.18,
        "min_latency_s": 0.04,
        "avg_latency_s": 0.07,
        "throughput_tps": 10.2,
    }
    hot = rows["RegisterRecord_hot_10tps"]
    assert (hot["succ"], hot["fail"], hot["avg_latency_s"], hot["throughput_tps"]) == (
        0,
        20,
        None,
        0,
    )


def test_no_table_no_rows() -> None:
    assert parse_summary("| Name | Succ |\nBenchmark finished\n") == {}


def test_network_config_uses_the_generated_profiles_with_discovery_and_mutual_tls() -> None:
    ids = [
        CaliperIdentity("p-0", "Org1MSP", b"CERT-P", b"KEY-P", "ibe-p"),
        CaliperIdentity("c-0", "Org2MSP", b"CERT-C", b"KEY-C", "ibe-c"),
    ]
    profiles = {
        m: Path(f"/net/fabric/connection-{m}.json") for m in ("Org1MSP", "Org2MSP", "Org3MSP")
    }
    config = _network_config("ehrshare", ["ehrshare", "ehrshare-kv"], ids, profiles)
    assert config["caliper"] == {"blockchain": "fabric", "sutOptions": {"mutualTls": True}}
    assert config["channels"] == [
        {"channelName": "ehrshare", "contracts": [{"id": "ehrshare"}, {"id": "ehrshare-kv"}]}
    ]
    # Org3MSP has no identity Caliper submits as: it is left out.
    assert [o["mspid"] for o in config["organizations"]] == ["Org1MSP", "Org2MSP"]
    org1 = config["organizations"][0]
    assert org1["connectionProfile"] == {
        "path": "/net/fabric/connection-Org1MSP.json",
        "discover": True,
    }
    assert org1["identities"]["certificates"] == [
        {"name": "p-0", "clientPrivateKey": {"pem": "KEY-P"}, "clientSignedCert": {"pem": "CERT-P"}}
    ]


def test_rounds_mirror_bench_fabric_fixed_rates_then_saturation() -> None:
    rounds = _rounds(["RequestAccess"], ["many", "hot"], [10.0, 20.0], 5.0, 8, {"x": 1})
    assert [(r["label"], r["rateControl"]) for r in rounds] == [
        ("RequestAccess_many_10tps", {"type": "fixed-rate", "opts": {"tps": 10.0}}),
        ("RequestAccess_many_20tps", {"type": "fixed-rate", "opts": {"tps": 20.0}}),
        ("RequestAccess_many_saturation", {"type": "fixed-load", "opts": {"transactionLoad": 8}}),
        ("RequestAccess_hot_10tps", {"type": "fixed-rate", "opts": {"tps": 10.0}}),
        ("RequestAccess_hot_20tps", {"type": "fixed-rate", "opts": {"tps": 20.0}}),
        ("RequestAccess_hot_saturation", {"type": "fixed-load", "opts": {"transactionLoad": 8}}),
    ]
    assert all(r["workload"]["module"] == "workloads/request-access.js" for r in rounds)
    assert [r["workload"]["arguments"]["hot"] for r in rounds] == [False] * 3 + [True] * 3
    assert all(r["txDuration"] == 5.0 for r in rounds)


def test_successful_throughput_leaves_out_caliper_s_failures() -> None:
    row = {"succ": 54.0, "fail": 48.0, "throughput_tps": 19.1}
    assert _successful_tps(row) == pytest.approx(19.1 * 54 / 102)
    assert _successful_tps({"succ": 0.0, "fail": 0.0, "throughput_tps": 0.0}) == 0.0
    assert _successful_tps({"succ": 3.0, "fail": 0.0, "throughput_tps": None}) is None
