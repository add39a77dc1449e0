"""``ehrshare bench fhir`` runs and reports three paths per operation — the SDK, the server over
HTTP, the gateway without HTTP — with the ratios the issue's target is judged by."""

from __future__ import annotations

from pathlib import Path

from ehrshare.bench.fhir import TARGET_P50_RATIO, run_fhir_bench


def test_the_bench_reports_sdk_http_and_gateway_paths(tmp_path: Path) -> None:
    result = run_fhir_bench(repeat=3, warmup=0, directory=tmp_path)
    assert set(result["results"]) == {"create", "read_owner", "read_grantee"}
    for op in result["results"].values():
        for path in ("sdk", "fhir", "gateway", "http_roundtrip"):
            assert op[path]["n"] == 3 and op[path]["p50_ms"] > 0
        assert op["p50_ratio"] == round(op["fhir"]["p50_ms"] / op["sdk"]["p50_ms"], 3)
        assert op["gateway_p50_ratio"] > 0
        assert op["met"] == (op["p50_ratio"] <= TARGET_P50_RATIO)
    assert result["params"]["order"] == "rotating"
    assert len(result["params"]["loadavg_1min"]) == 2
    assert list(tmp_path.iterdir()) == []  # the consortium was temporary
