"""`ehrshare bench ledger` runs with tiny parameters and reports the documented JSON keys."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ehrshare.cli import app


def test_bench_ledger_json_keys() -> None:
    result = CliRunner().invoke(
        app, ["bench", "ledger", "--json", "--quick", "--populations", "1,30", "--samples", "3"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {
        "benchmark",
        "backend",
        "quick",
        "populations",
        "results",
        "target",
        "machine",
        "sqlite",
        "ledger_verified",
    } <= set(data)
    assert data["quick"] is True and data["populations"] == [1, 30]
    assert [r["existing_records"] for r in data["results"]] == [1, 30]
    for r in data["results"]:
        assert set(r["operations"]) == {"RegisterRecord", "GrantAccess", "RequestAccess"}
        for op in r["operations"].values():
            assert {"tx_per_s", "p50_ms", "p95_ms", "p99_ms", "samples"} <= set(op)
            assert op["samples"] == 3
    target = data["target"]
    assert target["operation"] == "RequestAccess" and target["measured_at_records"] == 30
    assert isinstance(target["met"], bool) and target["note"]
    # 30 seeded records + 3 timed + warm-up RegisterRecords, all committed and verified.
    assert data["ledger_verified"]["blocks"] > 30
    assert data["ledger_verified"]["seconds"] > 0  # the full replay is timed


def test_bench_ledger_rejects_bad_populations() -> None:
    result = CliRunner().invoke(app, ["bench", "ledger", "--populations", "ten"])
    assert result.exit_code == 2
