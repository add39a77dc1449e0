"""`ehrshare bench dkg` prints JSON with machine metadata and the measured rows."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ehrshare.cli import app


def test_bench_dkg_json_has_rows_for_each_size() -> None:
    result = CliRunner().invoke(
        app, ["bench", "dkg", "--json", "--sizes", "2,3", "--repeat", "2", "--warmup", "0"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["benchmark"] == "dkg"
    assert data["machine"]["cpu_count"] >= 1
    assert [r["n"] for r in data["dkg"]] == [2, 3]
    assert [r["threshold"] for r in data["extraction"]] == [2, 2]
    for row in data["dkg"]:
        assert row["total_ms"]["n"] == 2.0
        assert row["total_ms"]["median_ms"] > 0
        assert row["slowest_node_ms"]["median_ms"] <= row["total_ms"]["median_ms"]
        # deal bundle: 40-byte header, τ commitments, n sealed shares, signature
        assert row["deal_bundle_bytes"] == 40 + 48 * row["threshold"] + 80 * row["n"] + 64
    assert data["ratio_total_16_over_4"] is None


def test_bench_dkg_rejects_bad_sizes() -> None:
    result = CliRunner().invoke(app, ["bench", "dkg", "--json", "--sizes", "4,x"])
    assert result.exit_code == 2
    assert "comma-separated integers" in result.output
