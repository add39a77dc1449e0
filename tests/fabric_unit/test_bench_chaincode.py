"""`ehrshare bench chaincode` drives the real chaincode server over gRPC and reports its keys."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ehrshare.bench.chaincode import OPERATIONS, REQUEST_CALLS, process_cpu_seconds
from ehrshare.cli import app

REPO = Path(__file__).resolve().parents[2]


def test_bench_chaincode_json_reports_every_operation_with_server_and_client_cpu() -> None:
    result = CliRunner().invoke(
        app, ["bench", "chaincode", "--json", "--n", "4", "--repeat", "1", "--warmup", "1"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["benchmark"] == "chaincode" and "machine" in data
    ops = data["servers"]["current"]
    assert list(ops) == list(OPERATIONS)
    for s in ops.values():
        for key in (
            "endorsements_per_s",
            "server_cpu_ms_per_endorsement",
            "client_cpu_ms_per_call",
            "client_proposal_cpu_ms_per_call",
        ):
            assert {"median", "min", "max"} <= set(s[key])
        assert s["endorsements_per_s"]["median"] > 0
        assert s["p50_ms"] <= s["p99_ms"]
        assert s["calls_per_round"] == 4
    assert "target" not in data  # only a run with --baseline can compare


def test_a_baseline_is_measured_beside_the_current_chaincode_in_one_run(tmp_path: Path) -> None:
    # The same chaincode exported as a baseline: both servers run and the ratio is reported.
    base = tmp_path / "base"
    base.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "HEAD", "chaincode/ehrshare_chaincode"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.skip("not a git checkout")
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "chaincode",
            "--json",
            "--n",
            "3",
            "--repeat",
            "1",
            "--warmup",
            "0",
            "--baseline",
            str(base / "chaincode"),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["servers"]) == {"baseline", "current"}
    assert set(data["baseline_over_current_server_cpu"]) == set(OPERATIONS)
    assert data["target"]["operation"] == "RequestAccess"
    assert isinstance(data["target"]["met"], bool)
    assert set(data["target"]["measured_by_call"]) == set(REQUEST_CALLS)
    # The baseline is sent no hints (what its SDK sent): on a 2.x peer the same requests.
    base, now = data["servers"]["baseline"], data["servers"]["current"]
    for op in REQUEST_CALLS:
        assert base[op]["state_requests_per_call"] == now[op]["state_requests_per_call"]


@pytest.mark.parametrize(
    "args",
    [["--n", "0"], ["--repeat", "0"], ["--warmup", "-1"], ["--workers", "0"], ["--peer", "2.5"]],
)
def test_bad_counts_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(app, ["bench", "chaincode", "--json", *args])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


# State requests per call on the chaincode stream (docs/benchmarks.md): one message per key on a
# Fabric 2.x peer; on a 3.1 peer the keys a function declares (functions.reads) go with the
# caller's identity in one GET_STATE_MULTIPLE and the writes in one WRITE_BATCH_STATE.
ROUND_TRIPS = {
    "2.x": {
        "trivial write": {"PUT_STATE": 1},
        "RegisterRecord": {"GET_STATE": 7, "PUT_STATE": 6},
        "GrantAccess": {"GET_STATE": 9, "PUT_STATE": 6},
        "RequestAccess": {"GET_STATE": 4, "GET_STATE_BY_RANGE": 1, "PUT_STATE": 7},
        # Hints change nothing on a 2.x peer: every key is its own request anyway.
        "RequestAccess hinted": {"GET_STATE": 4, "GET_STATE_BY_RANGE": 1, "PUT_STATE": 7},
        "RequestAccess named": {"GET_STATE": 4, "PUT_STATE": 7},
        "RequestAccess named hinted": {"GET_STATE": 4, "PUT_STATE": 7},
        "CheckApproval": {"GET_STATE": 3, "GET_STATE_BY_RANGE": 1},
    },
    "3.1": {
        "trivial write": {"WRITE_BATCH_STATE": 1},
        "RegisterRecord": {"GET_STATE_MULTIPLE": 1, "WRITE_BATCH_STATE": 1},
        "GrantAccess": {"GET_STATE": 1, "GET_STATE_MULTIPLE": 2, "WRITE_BATCH_STATE": 1},
        # The first valid grant: (identity, record) -> grant-match scan -> (grant, log head).
        "RequestAccess": {"GET_STATE_BY_RANGE": 1, "GET_STATE_MULTIPLE": 2, "WRITE_BATCH_STATE": 1},
        # Owner and label hinted: the scan first, then (identity, record, log head, grant).
        "RequestAccess hinted": {
            "GET_STATE_BY_RANGE": 1,
            "GET_STATE_MULTIPLE": 1,
            "WRITE_BATCH_STATE": 1,
        },
        # Named: (identity, record, grant) -> log head; with the owner hinted, one request.
        "RequestAccess named": {
            "GET_STATE": 1,
            "GET_STATE_MULTIPLE": 1,
            "WRITE_BATCH_STATE": 1,
        },
        "RequestAccess named hinted": {"GET_STATE_MULTIPLE": 1, "WRITE_BATCH_STATE": 1},
        "CheckApproval": {"GET_STATE": 1, "GET_STATE_BY_RANGE": 1, "GET_STATE_MULTIPLE": 1},
    },
}


@pytest.mark.parametrize("peer", sorted(ROUND_TRIPS))
def test_state_requests_per_call_are_counted_and_batched_on_a_31_peer(peer: str) -> None:
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "chaincode",
            "--json",
            "--n",
            "3",
            "--repeat",
            "1",
            "--warmup",
            "1",
            "--peer",
            peer,
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["peer"] == peer
    counts = {op: s["state_requests_per_call"] for op, s in data["servers"]["current"].items()}
    assert counts == ROUND_TRIPS[peer]


def test_a_baseline_without_the_package_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "chaincode", "--baseline", str(tmp_path)])
    assert result.exit_code == 2
    assert "holds no ehrshare_chaincode package" in result.output


def test_process_cpu_counts_all_threads_of_a_process() -> None:
    before = process_cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert process_cpu_seconds(os.getpid()) > before
